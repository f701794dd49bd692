"""Regenerate everything that ships in ``cached_tables/``: demo weights, demo tables, manifest.

One documented command (DESIGN.md, "cached_tables/"; ``make tables`` runs it)::

    python -m core.build_cache [--retrain] [--models digits_resnet digits_mobilenet digits_unet]
                               [--jobs 2]

For each digits demo model it

1. trains the shipped weights when they are missing (or with ``--retrain``): the classifiers with
   :mod:`core.demo_models`, the diffusion UNet ``digits_unet`` with :mod:`core.families.unet.demo`
   (a diffusers folder in ``cached_tables/demo_weights/digits_unet/``);
2. measures the latency table (torch, CPU, batch 64: every entry is well above the timer's
   noise; one thread by default, because on a shared 2-core machine a second OpenMP thread waits
   on other processes and timings scatter by an order of magnitude);
3. estimates the importance table (classifiers: finetune mode on the digits data; the UNet: the
   ε-loss of briefly finetuned networks on the diffusion digits), ``--jobs`` processes;
4. rewrites ``cached_tables/manifest.json`` listing every table directory.

Steps 2 and 3 are cached by content (chain, weights, data and settings digests), so a rerun with
nothing changed costs seconds; the classifiers' interrupted runs resume (the UNet's tables are
small and are redone whole).
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
from core.tables import MANIFEST_PATH, file_digest, read_meta, write_manifest

__all__ = ["DEMO_TABLES", "build_demo_tables", "main"]

CACHE_DIR = MANIFEST_PATH.parent
DEMO_BATCH = 64  # images per timed call: the smallest digits conv then takes ~0.1 ms
DEMO_THREADS = 1  # see the module docstring
DEMO_DATA = "digits"


# One shipped table each: its directory under cached_tables/ and its model.
DEMO_TABLES: tuple[dict[str, Any], ...] = (
    {"dir": "digits_resnet", "model": "digits_resnet", "width": 1.0},
    {"dir": "digits_mobilenet", "model": "digits_mobilenet", "width": 1.0},
    {"dir": "digits_unet", "model": "digits_unet", "width": 1.0, "kind": "diffusion"},
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
        if spec.get("kind") == "diffusion":
            report[name] = build_unet_tables(out, retrain=retrain, jobs=jobs, threads=threads)
            continue
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


def build_unet_tables(
    out: Path,
    *,
    retrain: bool = False,
    jobs: int = 2,
    threads: int = DEMO_THREADS,
) -> dict[str, Any]:
    """Weights (if missing), latency and importance tables of the ``digits_unet`` demo in ``out``.

    Each table is recomputed only when what it depends on changed (see :func:`_unet_latency_is_current`
    and :func:`_unet_importance_is_current`); the UNet tables have no partial stores, so an
    interrupted run redoes the table it was in.
    """
    from dataclasses import asdict

    from core.families.unet import unet as unet_module
    from core.families.unet.chain import trace_unet
    from core.families.unet.data import load_diffusion_data
    from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
    from core.families.unet.latency import measure_unet_latency

    name = unet_module.DEMO_UNET_NAME
    steps: dict[str, Any] = {}
    weights_dir = unet_module.DEMO_UNET_DIR
    if retrain or not any((weights_dir / f).is_file() for f in unet_module.WEIGHT_FILES):
        from core.families.unet.demo import train_demo_unet

        tic = time.perf_counter()
        metrics = train_demo_unet(weights_dir, progress=_unet_training_printer(name))
        steps["train_s"] = round(time.perf_counter() - tic, 1)
        steps["holdout_eps_loss"] = metrics.get("holdout_eps_loss")
        steps["fd_samples_vs_test"] = metrics.get("fd_samples_vs_test")
    bundle = unet_module.build_unet(name)
    if bundle.weights_source != "shipped":
        raise LayerMergeError(f"{name}: no trained weights in {weights_dir} after training")
    uchain = trace_unet(bundle.model)
    config = LatencyConfig(batch=DEMO_BATCH, threads=threads).resolved()
    if _unet_latency_is_current(out, bundle, uchain, config):
        steps["latency_s"], steps["latency_computed"] = 0.0, 0
    else:
        tic = time.perf_counter()
        entries, _ = measure_unet_latency(
            bundle, uchain, config, out=out, progress=progress_printer(f"{name} latency")
        )
        steps["latency_s"] = round(time.perf_counter() - tic, 1)
        steps["latency_computed"] = len(entries)
    data = load_diffusion_data(DEMO_DATA, size=bundle.input_size)
    importance = UNetImportanceConfig()
    if _unet_importance_is_current(out, asdict(importance), data.digest):
        steps["importance_s"], steps["importance_computed"] = 0.0, 0
    else:
        tic = time.perf_counter()
        entries, _ = estimate_unet_importance(
            bundle,
            uchain,
            data,
            importance,
            out=out,
            jobs=jobs,
            progress=progress_printer(f"{name} importance"),
        )
        steps["importance_s"] = round(time.perf_counter() - tic, 1)
        steps["importance_computed"] = len(entries)
    meta = read_meta(out)
    steps["additivity_error"] = meta.get("additivity_error")
    steps["base_loss"] = meta.get("base_loss")
    return steps


def _unet_latency_is_current(out: Path, bundle: Any, uchain: Any, config: LatencyConfig) -> bool:
    """A finished latency table of this UNet (chain and weights), measured with ``config``."""
    from core.families.unet.latency import DIFFUSION_LATENCY_VERSION

    if not (out / "meta.json").is_file() or not (out / "latency.csv").is_file():
        return False
    try:
        meta = read_meta(out)
    except LayerMergeError:
        return False
    expected = {
        "chain_digest": uchain.digest(),
        "weights_digest": bundle.weights_digest,
        "latency_version": DIFFUSION_LATENCY_VERSION,
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "min_run_time_s": config.min_run_time,
        "latency_csv_digest": file_digest(out / "latency.csv"),
    }
    return all(meta.get(key) == value for key, value in expected.items())


def _unet_importance_is_current(out: Path, config: dict[str, Any], data_digest: str) -> bool:
    """A finished importance table made with these settings and data, after the latency table.

    The latency step rewrites meta.json whole, so importance keys in it mean the importance run
    came after the current latency table (for the same chain and weights).
    """
    if not (out / "importance.csv").is_file():
        return False
    meta = read_meta(out)
    return meta.get("importance_config") == config and meta.get("data_digest") == data_digest


def _unet_training_printer(name: str) -> Any:
    def report(update: Any) -> None:
        if update.holdout_loss is not None:
            print(
                f"{name} training: step {update.step}/{update.steps}  train "
                f"{update.train_loss:.4f}  holdout {update.holdout_loss:.2f}  "
                f"{update.elapsed_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )

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
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"demo models (default: all of {', '.join(t['model'] for t in DEMO_TABLES)})",
    )
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
