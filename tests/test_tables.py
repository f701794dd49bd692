"""Table files: corrupt, foreign or incomplete tables get a clear error; the manifest."""

from __future__ import annotations

import json
import math

import pytest

from core.errors import TableMismatchError
from core.tables import (
    MANIFEST_FIELDS,
    TableEntry,
    check_tables,
    file_digest,
    read_importance_csv,
    read_manifest,
    read_tables,
    tables_digest,
    write_importance_csv,
    write_latency_csv,
    write_manifest,
    write_meta,
)

ENTRIES = (
    TableEntry(0, 1, 3, False, 1, (1,), latency_ms=1.5, latency_spread_ms=0.1),
    TableEntry(1, 2, 3, False, 1, (2,), latency_ms=1.0, latency_spread_ms=0.1),
    TableEntry(0, 2, 5, False, 1, (1, 2), latency_ms=2.0, latency_spread_ms=0.2),
    TableEntry(0, 2, 3, False, 1, (2,), latency_ms=1.1, latency_spread_ms=0.1),
    TableEntry(1, 2, 0, False, 1, ()),
)
META = {
    "model": "toy",
    "width": 1.0,
    "input_size": 32,
    "batch": 8,
    "backend": "torch",
    "device": "cpu",
    "chain_digest": "feedfacefeedface",
}


def _write(directory, entries=ENTRIES, meta=META):
    scored = [
        TableEntry(
            *e.key,
            kept_convs=e.kept_convs,
            latency_ms=e.latency_ms,
            latency_spread_ms=e.latency_spread_ms,
            importance=math.exp(-i / 100),
            delta_acc=-float(i),
            delta_loss=0.01 * i,
        )
        for i, e in enumerate(entries)
    ]
    write_latency_csv(directory / "latency.csv", scored)
    write_importance_csv(directory / "importance.csv", scored)
    write_meta(directory, meta)
    return scored


def test_round_trip_joins_by_key_with_removals(tmp_path):
    scored = _write(tmp_path)
    tables = read_tables(tmp_path)
    by_key = {e.key: e for e in tables.entries}
    assert set(by_key) == {e.key for e in scored}
    for entry in scored:
        read = by_key[entry.key]
        assert read.kept_convs == entry.kept_convs
        assert read.importance == pytest.approx(entry.importance, rel=1e-8)
        assert read.delta_acc == pytest.approx(entry.delta_acc)
        if entry.is_removal:  # latency 0 by definition, and never written to latency.csv
            assert read.latency_ms == 0.0
        else:
            assert read.latency_ms == pytest.approx(entry.latency_ms)
    assert len((tmp_path / "latency.csv").read_text().splitlines()) == len(scored)  # + header - 1
    assert tables.digest == tables_digest(tmp_path)
    assert [e.key for e in read_importance_csv(tmp_path / "importance.csv")] == [
        e.key for e in scored
    ]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda t: t.replace("latency_ms", "ms", 1), "missing columns"),
        (lambda t: t.replace("1.5", "fast", 1), "not a number"),
        (lambda t: t.replace('"[1, 2]"', '"[1, x]"', 1), "bad key fields"),
        (lambda t: t.replace(",false,", ",perhaps,", 1), "depthwise"),
        (lambda t: t + t.splitlines()[1] + "\n", "duplicate key"),
        (lambda t: "\x00\xff garbage", "missing columns"),
    ],
)
def test_corrupt_latency_csv_gets_a_clear_error(tmp_path, damage, match):
    _write(tmp_path)
    path = tmp_path / "latency.csv"
    path.write_text(damage(path.read_text()))
    with pytest.raises(TableMismatchError, match=match):
        read_tables(tmp_path)


def test_missing_or_foreign_files_get_a_clear_error(tmp_path):
    with pytest.raises(TableMismatchError, match="does not exist"):
        read_tables(tmp_path / "nowhere")
    _write(tmp_path)
    (tmp_path / "meta.json").write_text("{half")
    with pytest.raises(TableMismatchError, match="corrupt"):
        read_tables(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(TableMismatchError, match="not a table directory"):
        read_tables(tmp_path)
    # importance rows of another chain: keys that the latency table lacks
    _write(tmp_path)
    other = [TableEntry(0, 3, 7, False, 1, (1, 2, 3), importance=1.0, delta_acc=0, delta_loss=0)]
    write_importance_csv(tmp_path / "importance.csv", [*other])
    with pytest.raises(TableMismatchError, match="different chains"):
        read_tables(tmp_path)


def test_foreign_meta_and_missing_entries_are_refused(tmp_path):
    _write(tmp_path)
    tables = read_tables(tmp_path)
    keys = [e.key for e in ENTRIES]
    assert check_tables(tables, chain_digest=META["chain_digest"], keys=keys) is tables
    with pytest.raises(TableMismatchError, match="another network"):
        check_tables(tables, chain_digest="0000000000000000")
    with pytest.raises(TableMismatchError, match="lack 1 entries"):
        check_tables(tables, chain_digest=META["chain_digest"], keys=[*keys, (2, 3, 3, False, 1)])
    with pytest.raises(TableMismatchError, match="does not have"):
        check_tables(tables, chain_digest=META["chain_digest"], keys=keys[:-1])


def test_manifest_lists_every_table_directory(tmp_path):
    for name, batch in (("b_tables", 64), ("a_tables", 32)):
        (tmp_path / name).mkdir()
        _write(tmp_path / name, meta={**META, "batch": batch})
    (tmp_path / "demo_weights").mkdir()  # not a table directory: skipped
    manifest = tmp_path / "manifest.json"
    entries = write_manifest(manifest)
    assert [e["dir"] for e in entries] == ["a_tables", "b_tables"]
    assert read_manifest(manifest) == entries
    assert json.loads(manifest.read_text())["tables"][1]["batch"] == 64
    for entry in entries:
        assert set(MANIFEST_FIELDS) <= set(entry) and entry["has_importance"]
    assert entries[0]["tables_digest"] == tables_digest(tmp_path / "a_tables")
    write_meta(tmp_path / "a_tables", {"chain_digest": "x"})  # lacks the manifest fields
    with pytest.raises(TableMismatchError, match="lacks"):
        write_manifest(manifest)


def test_file_digest_notices_edits(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("a\n")
    before = file_digest(path)
    path.write_text("b\n")
    assert file_digest(path) != before
