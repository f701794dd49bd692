"""The table store: how the latency and importance tables of every model family reach the disk.

A table directory (DESIGN.md, "Contracts") is shared by two steps, latency and importance, that
may run at different times, on different machines, for any family. This module is the one place
that decides how they write it:

- a run keeps its finished entries in a :class:`PartialStore` (``.partial/<name>.json``), rewritten
  atomically after each, so a killed run resumes where it stopped;
- a finished table is published by :func:`publish_table`: its CSV, then its digest and settings in
  meta.json through :func:`update_meta`, the one updater, which merges and never drops the other
  step's keys;
- an identical rerun finds the published table with :func:`read_finished_table` (the CSV digest
  meta.json records must match, every entry must be there) and computes nothing;
- a directory made for another network is refused (:func:`check_table_directory`), never mixed.

Keys are digests of JSON (:func:`settings_digest`), so they are the same in every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import LayerMergeError, TableMismatchError
from core.tables import (
    EntryKey,
    TableEntry,
    atomic_write_text,
    file_digest,
    read_importance_csv,
    read_latency_csv,
    read_meta,
    write_importance_csv,
    write_latency_csv,
    write_meta,
)

__all__ = [
    "PARTIAL_DIR",
    "TABLES",
    "PartialStore",
    "settings_digest",
    "open_table_directory",
    "check_table_directory",
    "update_meta",
    "publish_table",
    "read_finished_table",
]

PARTIAL_DIR = ".partial"  # inside a table directory: one partial store per run in progress
TABLES = ("latency", "importance")


def settings_digest(fields: Any) -> str:
    """A short content digest of JSON-able ``fields`` (cache keys, settings digests)."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PartialStore:
    """Finished entries of one run, rewritten atomically after each (a kill loses nothing).

    It lives in ``<out>/.partial/<name>.json``; one whose header does not match is ignored (it
    belongs to other settings), and an unreadable one is treated as empty: it is only a cache.
    ``directory=None`` keeps everything in memory (a run without an output directory).
    """

    directory: Path | None
    name: str
    header: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(data, dict) or data.get("header") != self.header:
            return
        if isinstance(data.get("entries"), dict):
            self.entries.update(data["entries"])
        if isinstance(data.get("extra"), dict):
            self.extra.update(data["extra"])

    @property
    def path(self) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / PARTIAL_DIR / f"{self.name}.json"

    def save(self) -> None:
        if self.path is not None:
            text = json.dumps({"header": self.header, "entries": self.entries, "extra": self.extra})
            atomic_write_text(self.path, text)

    def remove(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when empty: another run may be in progress


def open_table_directory(out: str | Path, chain_digest: str) -> tuple[Path, dict[str, Any]]:
    """The table directory ``out``, created if needed, and its meta.json (empty when new).

    Raises:
        LayerMergeError: ``out`` is a file or cannot be created.
        TableMismatchError: it holds tables of another network (see :func:`check_table_directory`).
    """
    directory = Path(out)
    meta = check_table_directory(directory, chain_digest)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerMergeError(f"cannot create {directory}: {exc.strerror or exc}") from exc
    return directory, meta


def check_table_directory(directory: str | Path, chain_digest: str) -> dict[str, Any]:
    """The metadata of an existing table directory, refusing one made for another network.

    Args:
        directory: the table directory (it need not exist yet).
        chain_digest: ``digest()`` of the traced network the tables are for.

    Returns:
        The directory's meta.json, or an empty dict when the directory holds no tables yet.

    Raises:
        TableMismatchError: ``directory`` is a file, holds a table without meta.json, meta.json is
            corrupt, or it records another chain digest (the tables would be joined with entries
            of a different network).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TableMismatchError(f"table directory {directory} is a file")
    if not (directory / "meta.json").exists():
        for name in ("latency.csv", "importance.csv"):
            if (directory / name).exists():
                raise TableMismatchError(
                    f"{directory / name} has no meta.json beside it; refusing to mix it with new "
                    "tables: use an empty --out directory"
                )
        return {}
    meta = read_meta(directory)
    recorded = meta.get("chain_digest")
    if recorded != chain_digest:
        raise TableMismatchError(
            f"{directory} holds tables of another network (chain digest {recorded!r}, this one "
            f"is {chain_digest!r}); use another --out directory or delete it"
        )
    return meta


def update_meta(
    directory: str | Path, chain_digest: str, fields: dict[str, Any], *, owner: str
) -> dict[str, Any]:
    """Merge ``fields`` into the directory's meta.json: the one way either step changes it.

    The keys the other step wrote are kept. ``weights_digest`` belongs to the importance table
    (latency does not depend on weights): the latency step sets it only while no importance table
    is recorded.

    Raises:
        ValueError: ``owner`` is not one of :data:`TABLES` (a programming error).
        TableMismatchError: as :func:`check_table_directory`.
    """
    if owner not in TABLES:
        raise ValueError(f"owner must be one of {TABLES}, got {owner!r}")
    directory = Path(directory)
    # the step's own CSV may already be written: only an existing meta.json is checked
    exists = (directory / "meta.json").exists()
    meta = check_table_directory(directory, chain_digest) if exists else {}
    fields = {**fields, "chain_digest": chain_digest}  # what later steps check against
    if owner == "latency" and "importance_key" in meta:
        fields.pop("weights_digest", None)
    meta.update(fields)
    write_meta(directory, meta)
    return meta


def publish_table(
    directory: Path,
    chain_digest: str,
    table: str,
    entries: Sequence[TableEntry],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write a finished table's CSV and record it (its digest and ``meta``) in meta.json.

    Returns:
        The directory's whole metadata after the update.
    """
    path = directory / f"{table}.csv"
    writer = write_latency_csv if table == "latency" else write_importance_csv
    writer(path, entries)
    fields = {**meta, f"{table}_csv_digest": file_digest(path)}
    return update_meta(directory, chain_digest, fields, owner=table)


def read_finished_table(
    directory: Path, meta: dict[str, Any], table: str, expected: Sequence[EntryKey]
) -> tuple[TableEntry, ...] | None:
    """The published ``table`` when it is the one meta.json records, intact and complete.

    Returns:
        Its entries in the order of ``expected``; None when the CSV is missing, was edited since
        (its digest differs), is damaged, lacks or adds entries, or holds a value no run gives
        (a non-finite importance, a latency that is not positive): it is then computed again.
    """
    path = directory / f"{table}.csv"
    if not path.is_file() or meta.get(f"{table}_csv_digest") != file_digest(path):
        return None
    try:
        rows = read_latency_csv(path) if table == "latency" else read_importance_csv(path)
    except TableMismatchError:
        return None
    by_key = {e.key: e for e in rows}
    if set(by_key) != set(expected) or not all(_plausible(e, table) for e in rows):
        return None
    return tuple(by_key[key] for key in expected)  # the order a fresh run returns


def _plausible(entry: TableEntry, table: str) -> bool:
    if table == "importance":
        return math.isfinite(entry.importance)
    if entry.identity_segment:
        return entry.latency_ms == 0.0
    return math.isfinite(entry.latency_ms) and entry.latency_ms > 0
