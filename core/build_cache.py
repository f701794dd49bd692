"""Regenerate everything that ships in ``cached_tables/``: demo weights, demo tables, manifest.

One documented command (DESIGN.md, "cached_tables/"; ``make tables`` runs it)::

    python -m core.build_cache [--retrain] [--models digits_resnet digits_mobilenet] [--jobs 2]

For each digits demo model it

1. trains the shipped weights with :mod:`core.demo_models` when they are missing (or with
   ``--retrain``);
2. measures the latency table (torch, CPU, batch 64 at 32x32: every entry is well above the
   timer's noise; one thread by default, because on a shared 2-core machine a second OpenMP
   thread waits on other processes and timings scatter by an order of magnitude);
3. estimates the importance table (finetune mode on the digits data, ``--jobs`` processes);
4. rewrites ``cached_tables/manifest.json`` listing every table directory.

Steps 2 and 3 are cached by content (chain, weights, data and settings digests), so a rerun with
nothing changed costs seconds, and an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.chain import trace_chain
from core.commands.common import progress_printer
from core.errors import LayerMergeError
from core.importance import ImportanceConfig, estimate_importance
from core.latency import LatencyConfig, measure_latency
from core.models import build_model, demo_weights_path
from core.tables import MANIFEST_PATH, write_manifest

__all__ = ["DEMO_TABLES", "build_demo_tables", "main"]

CACHE_DIR = MANIFEST_PATH.parent
DEMO_BATCH = 64  # images per timed call: the smallest digits conv then takes ~0.1 ms
DEMO_THREADS = 1  # see the module docstring
DEMO_DATA = "digits"


# One shipped table each: its directory under cached_tables/ and its model.
DEMO_TABLES: tuple[dict[str, Any], ...] = (
    {"dir": "digits_resnet", "model": "digits_resnet", "width": 1.0},
    {"dir": "digits_mobilenet", "model": "digits_mobilenet", "width": 1.0},
)


def build_demo_tables(
    models: Sequence[str] | None = None,
    *,
    retrain: bool = False,
    jobs: int = 2,
    threads: int = DEMO_THREADS,
    root: Path = CACHE_DIR,
) -> dict[str, Any]:
    """Weights (if missing), latency and importance tables, and the manifest for the demo models.

    Args:
        models: demo model names; None: all of :data:`DEMO_TABLES`.
        retrain: retrain the demo weights even when the files exist.
        jobs: importance worker processes.
        threads: latency timing threads.
        root: the ``cached_tables`` folder.

    Returns:
        A JSON-able report: per model the seconds each step took, and the manifest.

    Raises:
        LayerMergeError: an unknown model name.
    """
    from core.demo_models import main as train_main

    chosen = [t for t in DEMO_TABLES if models is None or t["model"] in models]
    unknown = set(models or ()) - {t["model"] for t in DEMO_TABLES}
    if unknown:
        raise LayerMergeError(
            f"unknown demo models {sorted(unknown)}; choose from "
            f"{', '.join(t['model'] for t in DEMO_TABLES)}"
        )
    report: dict[str, Any] = {}
    for spec in chosen:
        name = spec["model"]
        out = root / spec["dir"]
        steps: dict[str, Any] = {}
        if retrain or not demo_weights_path(name).is_file():
            tic = time.perf_counter()
            code = train_main(["train", "--models", name])
            if code != 0:
                raise LayerMergeError(f"training the {name} demo weights failed (exit {code})")
            steps["train_s"] = round(time.perf_counter() - tic, 1)
        bundle = build_model(name, width=spec["width"])
        chain = trace_chain(bundle.model, bundle.input_size)
        latency = measure_latency(
            bundle,
            chain,
            LatencyConfig(batch=DEMO_BATCH, threads=threads),
            out=out,
            progress=progress_printer(f"{name} latency"),
        )
        steps["latency_s"] = round(latency.seconds, 1)
        steps["latency_computed"] = latency.computed
        importance = estimate_importance(
            bundle,
            chain,
            DEMO_DATA,
            ImportanceConfig(),
            out=out,
            jobs=jobs,
            progress=progress_printer(f"{name} importance"),
        )
        steps["importance_s"] = round(importance.seconds, 1)
        steps["importance_computed"] = importance.computed
        steps["additivity_error"] = latency.meta.get("additivity_error")
        steps["base_accuracy"] = importance.meta.get("importance_base_accuracy")
        report[name] = steps
    report["manifest"] = write_manifest(root / MANIFEST_PATH.name)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.build_cache``: regenerate ``cached_tables/``.

    Returns:
        The exit code: 0, or 2 with one line on stderr for bad input.
    """
    parser = argparse.ArgumentParser(
        prog="python -m core.build_cache",
        description="Regenerate cached_tables/: demo weights (when missing), their latency and "
        "importance tables, and manifest.json.",
    )
    parser.add_argument("--models", nargs="+", default=None, help="demo models (default: all)")
    parser.add_argument("--retrain", action="store_true", help="retrain the demo weights")
    parser.add_argument("--jobs", type=int, default=2, help="importance processes (default 2)")
    parser.add_argument(
        "--threads", type=int, default=DEMO_THREADS, help="latency timing threads (default 1)"
    )
    args = parser.parse_args(argv)
    try:
        report = build_demo_tables(
            args.models, retrain=args.retrain, jobs=args.jobs, threads=args.threads
        )
    except LayerMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
