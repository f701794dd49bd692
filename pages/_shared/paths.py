"""Where the app reads and writes on disk: the repository root and the app's own runs folder."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "APP_RUNS", "short_path", "table_roots"]

ROOT = Path(__file__).resolve().parents[2]
# Computed tables and finetune checkpoints (git-ignored); LAYERMERGE_APP_RUNS moves them (tests).
APP_RUNS = Path(os.environ.get("LAYERMERGE_APP_RUNS", ROOT / "runs" / "app"))


def table_roots() -> list[Path]:
    """Where the Tables page looks for table directories the CLI or the app wrote: ``runs/``,
    ``cached_tables/`` and the app's own runs folder (when moved elsewhere)."""
    roots = [ROOT / "runs", ROOT / "cached_tables"]
    if not APP_RUNS.resolve().is_relative_to((ROOT / "runs").resolve()):
        roots.append(APP_RUNS)
    return roots


def short_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (shorter in captions)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
