"""Table directories anywhere on disk: find those made for a chain, and check one before using it.

``python -m core profile`` and ``importance --out DIR`` may write tables anywhere, and the app
writes its own under ``runs/app``. Whoever reads a directory someone names (the app's Tables page)
must use it only when it holds tables of the very chain in use: the chain digest meta.json records
(DESIGN.md, "Contracts") must equal the traced model's. :func:`check_tables_for` is that check, with
one line naming what is wrong and what is accepted; :func:`find_table_directories` lists the
directories under some roots that would pass it.

Example:
    >>> found = find_table_directories(["runs", "cached_tables"], chain.digest())  # doctest: +SKIP
    >>> tables = check_tables_for(found[0].path, chain.digest())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import TableMismatchError
from core.tables import Tables, read_tables

__all__ = [
    "TABLE_FILES",
    "ACCEPTED",
    "TableDirectory",
    "check_tables_for",
    "find_table_directories",
]

TABLE_FILES = ("latency.csv", "importance.csv", "meta.json")
ACCEPTED = (
    "a table directory holds latency.csv, importance.csv and meta.json, as `python -m core "
    "profile` and `importance --out DIR` write them, for this model's chain"
)
SEARCH_DEPTH = 4  # folder levels below each root: runs/<name>/<tables> and a little deeper
MAX_FOLDERS = 5000  # folders visited per root at most: a listing must stay instant


@dataclass(frozen=True)
class TableDirectory:
    """A table directory found on disk, with what its meta.json says about it."""

    path: Path
    model: str | None
    chain_digest: str
    weights_digest: str | None
    data: str | None
    importance_mode: str | None
    created: str | None


def check_tables_for(directory: str | Path, chain_digest: str) -> Tables:
    """The tables in ``directory``, when they were made for the chain of digest ``chain_digest``.

    Args:
        directory: a folder someone named (typed, listed, given on the command line).
        chain_digest: ``digest()`` of the traced model the tables are meant for.

    Returns:
        The tables, read and checked (:func:`core.tables.read_tables`).

    Raises:
        TableMismatchError: one line naming the problem and what is accepted: no path, a path
            that is missing or a file, a folder without the three table files, a meta.json with
            no or another chain digest (tables of another network), or a damaged table.
    """
    text = str(directory).strip()
    if not text:
        raise TableMismatchError(f"give the path of a table directory; {ACCEPTED}")
    path = Path(text).expanduser()
    try:
        if not path.exists():
            raise TableMismatchError(f"{path} does not exist; {ACCEPTED}")
        if not path.is_dir():
            raise TableMismatchError(f"{path} is a file, not a folder; {ACCEPTED}")
        missing = [name for name in TABLE_FILES if not (path / name).is_file()]
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = getattr(exc, "strerror", None) or exc
        raise TableMismatchError(f"{path!s} cannot be read: {reason}; {ACCEPTED}") from exc
    if missing:
        raise TableMismatchError(
            f"{path} is not a table directory: it has no {' or '.join(missing)}; {ACCEPTED}"
        )
    meta = _meta_of(path)
    if meta is None:
        raise TableMismatchError(
            f"{path / 'meta.json'} cannot be read as a JSON object; {ACCEPTED}"
        )
    recorded = meta.get("chain_digest")
    if recorded is None:
        raise TableMismatchError(
            f"{path / 'meta.json'} records no chain digest, so nothing says which network the "
            f"tables are for; {ACCEPTED}"
        )
    if recorded != chain_digest:
        made_for = f", made for {meta['model']}" if meta.get("model") else ""
        raise TableMismatchError(
            f"{path} holds tables of another network (chain digest {recorded}{made_for}; this "
            f"model's is {chain_digest}): only tables of this model's chain, at the same width "
            "and input size, are accepted"
        )
    return read_tables(path)


def find_table_directories(
    roots: Iterable[str | Path], chain_digest: str, *, depth: int = SEARCH_DEPTH
) -> list[TableDirectory]:
    """The table directories under ``roots`` whose meta.json records ``chain_digest``.

    Only the three files' presence and meta.json are read here: a listed directory can still be
    refused by :func:`check_tables_for` (a damaged CSV). Hidden folders (a run's ``.partial``)
    are skipped; a missing root is none; unreadable folders are passed over.

    Returns:
        The matching directories, sorted by path, each listed once.
    """
    found: dict[Path, TableDirectory] = {}
    for root in roots:
        base = Path(root).expanduser()
        if not base.is_dir():
            continue
        for path in _folders(base, depth):
            if path in found or not all((path / name).is_file() for name in TABLE_FILES):
                continue
            meta = _meta_of(path)
            if meta is None or meta.get("chain_digest") != chain_digest:
                continue
            found[path] = TableDirectory(
                path=path,
                model=_text(meta.get("model")),
                chain_digest=chain_digest,
                weights_digest=_text(meta.get("weights_digest")),
                data=_text(meta.get("data")),
                importance_mode=_text(meta.get("importance_mode")),
                created=_text(meta.get("importance_created") or meta.get("created")),
            )
    return [found[path] for path in sorted(found)]


def _folders(base: Path, depth: int) -> Iterable[Path]:
    """``base`` and its folders down to ``depth`` levels, hidden ones left out, at most
    :data:`MAX_FOLDERS` of them."""
    base = base.resolve()
    seen = 0
    for current, names, _ in os.walk(base, onerror=lambda _: None):
        here = Path(current)
        level = len(here.relative_to(base).parts)
        names[:] = sorted(n for n in names if not n.startswith(".")) if level < depth else []
        yield here
        seen += 1
        if seen >= MAX_FOLDERS:
            return


def _meta_of(path: Path) -> dict | None:
    """The folder's meta.json as a dict, or None when it is unreadable or not an object."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)
