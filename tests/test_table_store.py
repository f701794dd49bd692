"""The table store: one meta updater, published tables read back only when intact, foreign
directories refused, partial stores that survive a kill."""

from __future__ import annotations

import pytest

from core.errors import LayerMergeError, TableMismatchError
from core.table_store import (
    PartialStore,
    check_table_directory,
    open_table_directory,
    publish_table,
    read_finished_table,
    settings_digest,
    update_meta,
)
from core.tables import TableEntry, read_meta, read_tables

DIGEST = "feedfacefeedface"
LATENCY = (
    TableEntry(0, 1, 3, False, 1, (1,), latency_ms=1.5, latency_spread_ms=0.1),
    TableEntry(1, 2, 3, False, 1, (2,), latency_ms=1.0, latency_spread_ms=0.1),
    TableEntry(0, 2, 3, False, 1, (2,), latency_ms=1.1, latency_spread_ms=0.1),
    TableEntry(1, 2, 0, False, 1, (), latency_ms=0.0, latency_spread_ms=0.0, identity_segment=True),
)
IMPORTANCE = tuple(
    TableEntry(*e.key, e.kept_convs, importance=0.9, delta_acc=-1.0, delta_loss=0.1)
    for e in LATENCY
)


def test_both_steps_write_one_meta_and_keep_each_others_keys(tmp_path):
    publish_table(tmp_path, DIGEST, "latency", LATENCY, {"latency_key": "L", "weights_digest": "a"})
    publish_table(tmp_path, DIGEST, "importance", IMPORTANCE, {"importance_key": "I"})
    meta = read_meta(tmp_path)
    assert {meta["latency_key"], meta["importance_key"]} == {"L", "I"}
    assert meta["latency_csv_digest"] and meta["importance_csv_digest"]
    # latency does not depend on weights: once importance is recorded, it keeps its digest
    update_meta(tmp_path, DIGEST, {"latency_key": "L2", "weights_digest": "b"}, owner="latency")
    meta = read_meta(tmp_path)
    assert (meta["latency_key"], meta["weights_digest"], meta["importance_key"]) == ("L2", "a", "I")
    tables = read_tables(tmp_path)
    assert {e.key for e in tables.entries} == {e.key for e in LATENCY}
    assert [e for e in tables.entries if e.identity_segment][0].latency_ms == 0.0


def test_a_published_table_is_read_back_only_while_intact_and_complete(tmp_path):
    meta = publish_table(tmp_path, DIGEST, "latency", LATENCY, {"latency_key": "L"})
    keys = [e.key for e in LATENCY]
    back = read_finished_table(tmp_path, meta, "latency", keys)
    assert back is not None and [e.key for e in back] == keys
    assert back[-1].identity_segment and back[-1].latency_ms == 0.0
    assert read_finished_table(tmp_path, meta, "latency", keys[:-1]) is None  # another chain
    assert read_finished_table(tmp_path, meta, "importance", keys) is None  # never written
    path = tmp_path / "latency.csv"
    path.write_text(path.read_text().replace("1.5", "1.6"))
    assert read_finished_table(tmp_path, meta, "latency", keys) is None  # edited since


def test_foreign_or_mixed_directories_are_refused(tmp_path):
    publish_table(tmp_path, DIGEST, "latency", LATENCY, {})
    with pytest.raises(TableMismatchError, match="another network"):
        check_table_directory(tmp_path, "0123456789abcdef")
    with pytest.raises(TableMismatchError, match="another network"):
        update_meta(tmp_path, "0123456789abcdef", {"x": 1}, owner="importance")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "importance.csv").write_text("start,end\n")
    with pytest.raises(TableMismatchError, match="no meta.json"):
        open_table_directory(orphan, DIGEST)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(LayerMergeError, match="is a file"):
        open_table_directory(afile, DIGEST)
    created, meta = open_table_directory(tmp_path / "new" / "dir", DIGEST)
    assert created.is_dir() and meta == {}
    with pytest.raises(ValueError, match="owner"):
        update_meta(tmp_path, DIGEST, {}, owner="accuracy")


def test_partial_store_survives_a_restart_and_ignores_other_settings(tmp_path):
    store = PartialStore(tmp_path, "run", {"key": "a"})
    store.entries["job"] = {"value": 1.0}
    store.save()
    assert PartialStore(tmp_path, "run", {"key": "a"}).entries == {"job": {"value": 1.0}}
    assert PartialStore(tmp_path, "run", {"key": "b"}).entries == {}
    store.remove()
    assert not (tmp_path / ".partial").exists()
    memory = PartialStore(None, "run", {"key": "a"})
    memory.entries["job"] = {}
    memory.save()  # nowhere to write: nothing happens
    assert memory.path is None


def test_settings_digest_is_order_free_and_content_sensitive():
    assert settings_digest({"a": 1, "b": [1, 2]}) == settings_digest({"b": [1, 2], "a": 1})
    assert settings_digest({"a": 1}) != settings_digest({"a": 2})
    assert len(settings_digest({})) == 16
