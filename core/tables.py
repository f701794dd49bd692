"""Table files: the latency and importance look-up tables, their keys, and the shipped manifest.

A table directory holds ``latency.csv``, ``importance.csv`` and ``meta.json`` (DESIGN.md,
"Contracts"). Rows are keyed by ``(start, end, kernel, depthwise, stride)``; the two tables are
joined by that key, never by row order (the original code zips two dicts and relies on order).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import TableMismatchError
from core.files import atomic_write_text as atomic_write_text_file

__all__ = [
    "EntryKey",
    "TableEntry",
    "Tables",
    "LATENCY_COLUMNS",
    "IMPORTANCE_COLUMNS",
    "read_tables",
    "write_latency_csv",
    "write_importance_csv",
    "write_meta",
    "read_meta",
    "tables_digest",
    "atomic_write_text",
    "read_manifest",
    "MANIFEST_PATH",
    "MANIFEST_FIELDS",
    "file_digest",
    "META_NUMBERS",
    "read_importance_csv",
    "read_latency_csv",
    "check_tables",
    "manifest_entry",
    "write_manifest",
]

EntryKey = tuple[int, int, int, bool, int]  # (start, end, kernel, depthwise, stride)

KEY_COLUMNS = ("start", "end", "kernel", "depthwise", "stride", "kept_convs")
LATENCY_COLUMNS = (*KEY_COLUMNS, "latency_ms", "latency_spread_ms")
IMPORTANCE_COLUMNS = (*KEY_COLUMNS, "importance", "delta_acc", "delta_loss")
MANIFEST_PATH = Path(__file__).resolve().parent.parent / "cached_tables" / "manifest.json"
# What the manifest says about each shipped table directory (DESIGN.md, "Contracts").
MANIFEST_FIELDS = ("model", "width", "input_size", "batch", "backend", "device")


# The figures meta.json records, and what each must be when present (null: not recorded).
# "positive" / "non-negative" are finite floats, "count" an integer >= 1, "index" an integer >= 0,
# "finite" any finite float, "percent" a float in [0, 100].
META_NUMBERS: dict[str, str] = {
    "original_table_latency_ms": "positive",
    "network_latency_ms": "positive",
    "network_latency_spread_ms": "non-negative",
    "width": "positive",
    "batch": "count",
    "threads": "count",
    "input_size": "count",
    "warmup_runs": "index",
    "min_run_time_s": "non-negative",
    "latency_entries": "index",
    "importance_entries": "index",
    "importance_threads_per_job": "count",
    "importance_base_accuracy": "percent",
    "importance_base_loss": "non-negative",
    "importance_reference_loss": "non-negative",
    "additivity_error": "finite",
}


@dataclass(frozen=True)
class TableEntry:
    """One (segment, kernel option) with its measured latency and importance.

    ``kernel == 0`` marks the removal of a single conv. A removal found in ``importance.csv`` only
    is a layer-only baseline move: it deletes the position's segment. A removal the latency table
    also lists (latency 0) is an *identity segment*, ``identity_segment=True``: the network runs it
    as a segment of its own (a DDPM upsample conv, LAYERMERGE.md §1.2), so LayerMerge may choose it.
    """

    start: int
    end: int
    kernel: int
    depthwise: bool
    stride: int
    kept_convs: tuple[int, ...]
    latency_ms: float = float("nan")
    latency_spread_ms: float = float("nan")
    importance: float = float("nan")
    delta_acc: float = float("nan")
    delta_loss: float = float("nan")
    identity_segment: bool = False

    @property
    def key(self) -> EntryKey:
        return (self.start, self.end, self.kernel, self.depthwise, self.stride)

    @property
    def is_removal(self) -> bool:
        return self.kernel == 0

    @property
    def keeps_all_convs(self) -> bool:
        """True when no conv of the segment is pruned (the only options Kim23 can express)."""
        return len(self.kept_convs) == self.end - self.start


@dataclass(frozen=True)
class Tables:
    """Latency and importance joined by key, with the directory's metadata."""

    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    digest: str = ""

    @property
    def last_position(self) -> int:
        return max(e.end for e in self.entries)

    @property
    def original_latency_ms(self) -> float:
        """Table latency of the keep-everything solution, the base of ``--budget FRACTION``.

        Summed from the entries in position order, as the DP sums a path, so that a budget of
        1.0 admits keeping everything; meta.json's figure (from unrounded latencies, 7th digit
        off) is used only when the entries do not cover every position.
        """
        singles = [
            e for e in self.entries if e.end - e.start == 1 and e.keeps_all_convs and e.kernel
        ]
        if len({e.end for e in singles}) < self.last_position and "original_table_latency_ms" in (
            self.meta
        ):
            return float(self.meta["original_table_latency_ms"])
        return float(sum(e.latency_ms for e in sorted(singles, key=lambda e: e.end)))


def _check_meta_numbers(meta: dict[str, Any], path: Path) -> None:
    """Refuse a figure of :data:`META_NUMBERS` that is not a number of its kind, in one line."""
    for name, kind in META_NUMBERS.items():
        value = meta.get(name)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        integer = isinstance(value, int) and not isinstance(value, bool)
        ok = {
            "positive": number and math.isfinite(value) and value > 0,
            "non-negative": number and math.isfinite(value) and value >= 0,
            "finite": number and math.isfinite(value),
            "percent": number and math.isfinite(value) and 0 <= value <= 100,
            "count": integer and value >= 1,
            "index": integer and value >= 0,
        }[kind]
        if not ok:
            wanted = {
                "positive": "a finite number > 0",
                "non-negative": "a finite number >= 0",
                "finite": "a finite number",
                "percent": "a number from 0 to 100",
                "count": "an integer >= 1",
                "index": "an integer >= 0",
            }[kind]
            raise TableMismatchError(
                f"{path}: {name} must be {wanted}, got {json.dumps(value)[:60]}; the file is "
                "damaged or was edited by hand: rebuild the tables"
            )
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise TableMismatchError(
            f"{path}: input_shape must be 3 positive integers (C, H, W), got "
            f"{json.dumps(shape)[:60]}; the file is damaged or was edited by hand"
        )


def _check_digest(directory: Path, meta: dict[str, Any], name: str) -> None:
    """Refuse a CSV whose content is not the one meta.json recorded (edited since, or a
    meta.json of another table). Tables written before digests were recorded are read as they
    are."""
    recorded = meta.get(f"{name.removesuffix('.csv')}_csv_digest")
    path = directory / name
    if recorded is None or not path.is_file():
        return
    actual = file_digest(path)
    if actual != recorded:
        raise TableMismatchError(
            f"{path} is not the table {directory / 'meta.json'} records (content digest "
            f"{actual}, recorded {recorded}): it was edited after it was made, or meta.json "
            "belongs to another table; rebuild the table, or restore both files"
        )


def _key_from_row(row: dict[str, str], path: Path, line: int) -> tuple[EntryKey, tuple[int, ...]]:
    try:
        depthwise_text = row["depthwise"].strip().lower()
        if depthwise_text not in ("true", "false", "1", "0"):
            raise ValueError(f"depthwise must be true/false, got {row['depthwise']!r}")
        kept = json.loads(row["kept_convs"])
        if not isinstance(kept, list) or not all(isinstance(c, int) for c in kept):
            raise ValueError(f"kept_convs must be a JSON list of ints, got {row['kept_convs']!r}")
        key = (
            int(row["start"]),
            int(row["end"]),
            int(row["kernel"]),
            depthwise_text in ("true", "1"),
            int(row["stride"]),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise TableMismatchError(f"{path} line {line}: bad key fields ({exc})") from exc
    if not 0 <= key[0] < key[1]:
        raise TableMismatchError(f"{path} line {line}: segment ({key[0]}, {key[1]}] is empty")
    return key, tuple(kept)


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise TableMismatchError(f"table file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TableMismatchError(f"table file {path} cannot be read: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
        raise TableMismatchError(
            f"{path} is not a LayerMerge table: missing columns {sorted(missing)}"
        )
    return list(reader)


def _float(row: dict[str, str], name: str, path: Path, line: int) -> float:
    try:
        return float(row[name])
    except (TypeError, ValueError) as exc:
        raise TableMismatchError(
            f"{path} line {line}: {name}={row.get(name)!r} is not a number"
        ) from exc


def read_tables(directory: str | Path, *, require_importance: bool = True) -> Tables:
    """Read a table directory and join latency and importance by key.

    Raises:
        TableMismatchError: a file is missing or corrupt, a figure in meta.json is not a number
            of its kind, a CSV is not the one meta.json records (its content digest differs:
            edited since, or a meta.json of another table), or the two tables disagree on their
            keys.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise TableMismatchError(f"table directory {str(directory)!r} does not exist")
    meta = read_meta(directory)
    latency: dict[EntryKey, tuple[tuple[int, ...], float, float]] = {}
    lat_path = directory / "latency.csv"
    for line, row in enumerate(_read_csv(lat_path, LATENCY_COLUMNS), start=2):
        key, kept = _key_from_row(row, lat_path, line)
        if key in latency:
            raise TableMismatchError(f"{lat_path} line {line}: duplicate key {key}")
        latency[key] = (
            kept,
            _float(row, "latency_ms", lat_path, line),
            _float(row, "latency_spread_ms", lat_path, line),
        )
    importance: dict[EntryKey, tuple[tuple[int, ...], float, float, float]] = {}
    imp_path = directory / "importance.csv"
    if imp_path.exists() or require_importance:
        for line, row in enumerate(_read_csv(imp_path, IMPORTANCE_COLUMNS), start=2):
            key, kept = _key_from_row(row, imp_path, line)
            if key in importance:
                raise TableMismatchError(f"{imp_path} line {line}: duplicate key {key}")
            importance[key] = (
                kept,
                _float(row, "importance", imp_path, line),
                _float(row, "delta_acc", imp_path, line),
                _float(row, "delta_loss", imp_path, line),
            )
    # a damaged file is reported as such first; an intact one must be the one meta.json records
    _check_digest(directory, meta, "latency.csv")
    if imp_path.is_file():
        _check_digest(directory, meta, "importance.csv")
    entries: list[TableEntry] = []
    for key, (kept, lat, spread) in latency.items():
        entry = TableEntry(
            *key,
            kept_convs=kept,
            latency_ms=lat,
            latency_spread_ms=spread,
            identity_segment=key[2] == 0,
        )
        if importance:
            if key not in importance:
                raise TableMismatchError(
                    f"{directory}: latency entry {key} has no importance row; "
                    "the tables were made for different chains"
                )
            ikept, imp, dacc, dloss = importance[key]
            if ikept != kept:
                raise TableMismatchError(
                    f"{directory}: entry {key} keeps convs {list(kept)} in latency.csv but "
                    f"{list(ikept)} in importance.csv"
                )
            entry = replace(entry, importance=imp, delta_acc=dacc, delta_loss=dloss)
        entries.append(entry)
    for key, (kept, imp, dacc, dloss) in importance.items():
        if key in latency:
            continue
        if key[2] != 0:
            raise TableMismatchError(
                f"{directory}: importance entry {key} has no latency row; "
                "the tables were made for different chains"
            )
        entries.append(
            TableEntry(
                *key,
                kept_convs=kept,
                latency_ms=0.0,
                latency_spread_ms=0.0,
                importance=imp,
                delta_acc=dacc,
                delta_loss=dloss,
            )
        )
    if not entries:
        raise TableMismatchError(f"{directory}: the tables hold no entries")
    entries.sort(key=lambda e: (e.end, e.start, e.kernel, e.depthwise))
    return Tables(entries=tuple(entries), meta=meta, digest=tables_digest(directory))


def _key_cells(entry: TableEntry) -> list[Any]:
    return [
        entry.start,
        entry.end,
        entry.kernel,
        str(entry.depthwise).lower(),
        entry.stride,
        json.dumps(list(entry.kept_convs)),
    ]


def _csv_text(columns: tuple[str, ...], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def write_latency_csv(path: str | Path, entries: Iterable[TableEntry]) -> None:
    """Write the latency table: removals are left out, but for identity segments (latency 0)."""
    rows = [
        [*_key_cells(e), f"{e.latency_ms:.6g}", f"{e.latency_spread_ms:.6g}"]
        for e in entries
        if not e.is_removal or e.identity_segment
    ]
    atomic_write_text(path, _csv_text(LATENCY_COLUMNS, rows))


def write_importance_csv(path: str | Path, entries: Iterable[TableEntry]) -> None:
    """Write the importance table, removal entries included."""
    rows = [
        [*_key_cells(e), f"{e.importance:.9g}", f"{e.delta_acc:.6g}", f"{e.delta_loss:.6g}"]
        for e in entries
    ]
    atomic_write_text(path, _csv_text(IMPORTANCE_COLUMNS, rows))


def write_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_text(Path(directory) / "meta.json", json.dumps(meta, indent=2, sort_keys=True))


def read_meta(directory: str | Path) -> dict[str, Any]:
    """A table directory's meta.json, with every figure it records checked.

    Raises:
        TableMismatchError: meta.json is missing, not JSON, not an object, or a figure in it is
            not a number of its kind (see :data:`META_NUMBERS`), e.g. a latency that is text,
            negative, NaN or infinite.
    """
    path = Path(directory) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TableMismatchError(f"{path} does not exist: not a table directory") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise TableMismatchError(f"{path} is corrupt: {' '.join(str(exc).split())}") from exc
    if not isinstance(meta, dict):
        raise TableMismatchError(f"{path} must hold a JSON object")
    _check_meta_numbers(meta, path)
    return meta


def tables_digest(directory: str | Path) -> str:
    """Content digest of a table directory's two CSVs (the solution file records it)."""
    digest = hashlib.sha256()
    for name in ("latency.csv", "importance.csv"):
        path = Path(directory) / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a table file under the write policy of :mod:`core.files`: atomically, never over a
    directory or a device, no temporary file left behind; the folder is created when missing
    (a table directory is the job's own output folder).

    Raises:
        OutputWriteError: the file cannot be written (a full disk, a read-only folder...).
    """
    atomic_write_text_file(path, text, what="table data", create_folder=True)


def read_manifest(path: str | Path = MANIFEST_PATH) -> list[dict[str, Any]]:
    """The shipped tables listed in ``cached_tables/manifest.json`` (empty when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TableMismatchError(f"{path} is corrupt: {exc}") from exc
    tables = data.get("tables", []) if isinstance(data, dict) else data
    return list(tables)


def file_digest(path: str | Path) -> str:
    """Content digest of one file (meta.json records its tables' digests: edits are noticed)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_tables(
    tables: Tables, *, chain_digest: str, keys: Iterable[EntryKey] | None = None
) -> Tables:
    """Refuse tables made for another network, or missing entries of this one.

    Args:
        tables: as read by :func:`read_tables`.
        chain_digest: ``Chain.digest()`` of the network the tables will be used with.
        keys: every entry key the tables must hold (removals included where importance is
            required); None checks the digest only.

    Returns:
        ``tables``, unchanged, so the call can wrap :func:`read_tables`.

    Raises:
        TableMismatchError: the chain digest differs, or keys are missing or foreign.
    """
    recorded = tables.meta.get("chain_digest")
    if recorded != chain_digest:
        raise TableMismatchError(
            f"these tables were made for another network (chain digest {recorded!r}, expected "
            f"{chain_digest!r}); rebuild them for this model, width and input size"
        )
    if keys is not None:
        expected = set(keys)
        present = {e.key for e in tables.entries}
        missing = sorted(expected - present)
        foreign = sorted(present - expected)
        if missing:
            raise TableMismatchError(
                f"the tables lack {len(missing)} entries of this network, e.g. {missing[0]}"
            )
        if foreign:
            raise TableMismatchError(
                f"the tables hold {len(foreign)} entries this network does not have, e.g. "
                f"{foreign[0]}"
            )
    return tables


def manifest_entry(directory: str | Path, *, root: str | Path | None = None) -> dict[str, Any]:
    """The manifest line of one table directory, read from its meta.json.

    Args:
        directory: the table directory.
        root: the manifest's folder; ``dir`` is written relative to it.

    Raises:
        TableMismatchError: meta.json is missing or lacks a manifest field.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    missing = [name for name in MANIFEST_FIELDS if name not in meta]
    if missing:
        raise TableMismatchError(f"{directory}/meta.json lacks {', '.join(missing)}")
    where = directory.relative_to(root) if root is not None else directory
    entry: dict[str, Any] = {"dir": where.as_posix()}
    entry.update({name: meta[name] for name in MANIFEST_FIELDS})
    entry["has_importance"] = (directory / "importance.csv").is_file()
    entry["tables_digest"] = tables_digest(directory)
    return entry


def write_manifest(path: str | Path = MANIFEST_PATH) -> list[dict[str, Any]]:
    """(Re)write ``manifest.json`` listing every table directory beside it.

    A table directory is a subfolder holding ``meta.json`` and ``latency.csv``; folders without
    them (``demo_weights/``) are skipped.

    Returns:
        The manifest's entries, sorted by directory.
    """
    path = Path(path)
    root = path.parent
    entries = [
        manifest_entry(folder, root=root)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        if (folder / "meta.json").is_file() and (folder / "latency.csv").is_file()
    ]
    atomic_write_text(path, json.dumps({"tables": entries}, indent=2) + "\n")
    return entries


def read_importance_csv(path: str | Path) -> tuple[TableEntry, ...]:
    """Read ``importance.csv`` on its own (before any latency table exists).

    Raises:
        TableMismatchError: the file is missing or corrupt, or repeats a key.
    """
    path = Path(path)
    entries: dict[EntryKey, TableEntry] = {}
    for line, row in enumerate(_read_csv(path, IMPORTANCE_COLUMNS), start=2):
        key, kept = _key_from_row(row, path, line)
        if key in entries:
            raise TableMismatchError(f"{path} line {line}: duplicate key {key}")
        entries[key] = TableEntry(
            *key,
            kept_convs=kept,
            importance=_float(row, "importance", path, line),
            delta_acc=_float(row, "delta_acc", path, line),
            delta_loss=_float(row, "delta_loss", path, line),
        )
    return tuple(entries.values())


def read_latency_csv(path: str | Path) -> tuple[TableEntry, ...]:
    """Read ``latency.csv`` on its own; its removal rows are identity segments (latency 0).

    Raises:
        TableMismatchError: the file is missing or corrupt, or repeats a key.
    """
    path = Path(path)
    entries: dict[EntryKey, TableEntry] = {}
    for line, row in enumerate(_read_csv(path, LATENCY_COLUMNS), start=2):
        key, kept = _key_from_row(row, path, line)
        if key in entries:
            raise TableMismatchError(f"{path} line {line}: duplicate key {key}")
        entries[key] = TableEntry(
            *key,
            kept_convs=kept,
            latency_ms=_float(row, "latency_ms", path, line),
            latency_spread_ms=_float(row, "latency_spread_ms", path, line),
            identity_segment=key[2] == 0,
        )
    return tuple(entries.values())
