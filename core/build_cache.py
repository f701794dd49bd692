"""Regenerate everything that ships in ``cached_tables/``: demo weights, demo tables, manifest.

One documented command (DESIGN.md, "cached_tables/"; ``make tables`` runs it)::

    python -m core.build_cache [--retrain] [--models digits_resnet digits_mobilenet digits_unet]
                               [--jobs 2] [--frontier-points N] [--skip-frontier]

For each demo model it

1. trains the shipped weights when they are missing (or with ``--retrain``): the classifiers with
   :mod:`core.demo_models`, the diffusion UNet ``digits_unet`` with :mod:`core.families.unet.demo`
   (a diffusers folder in ``cached_tables/demo_weights/digits_unet/``);
2. measures the latency table under the profiling protocol (:mod:`core.latency`: torch, CPU,
   batch 64, so every entry is well above the timer's noise; one thread; glibc's heap allocator
   setting, applied to this process; interleaved rounds with a reference op that finds slow
   phases). The run says in one line when the table came out unreliable: rerun it then;
3. estimates the importance table with the family's default settings (classifiers: finetune
   mode on the digits data; the UNet: the ε-loss of briefly finetuned networks on the diffusion
   digits), ``--jobs`` processes;
4. measures the frontier (:mod:`core.workflows.frontier`): every point of every method's
   frontier, merged and timed against the original with the table's settings, into
   ``frontier_measured.json`` beside the tables (``--frontier-points N`` keeps N per method);
5. rewrites ``cached_tables/manifest.json`` listing every table directory.

Steps 2 to 4 are cached by content (chain, weights, data, settings and solution digests), so a
rerun with nothing changed costs seconds, and an interrupted run resumes where it stopped: the
latency samples, the importance entries and the measured points are saved as they finish.
``--root``, ``--min-run-time``, ``--rounds`` and ``--frontier-rounds`` exist to smoke-test the
command on a copy in seconds; the shipped tables use the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.benchmark import ALLOCATORS, TimingSettings
from core.commands.common import progress_printer
from core.errors import LayerMergeError
from core.families import family_for
from core.importance import estimate_importance
from core.latency import DEFAULT_MIN_RUN_TIME_S, DEFAULT_ROUNDS, LatencyConfig, measure_latency
from core.speed import table_warning
from core.tables import MANIFEST_PATH, write_manifest
from core.workflows.frontier import DEFAULT_ROUNDS as FRONTIER_ROUNDS
from core.workflows.frontier import measure_frontier
from core.workflows.model import loaded

__all__ = ["BuildSettings", "DemoTable", "DEMO_TABLES", "build_demo_tables", "main"]

CACHE_DIR = MANIFEST_PATH.parent
DEMO_BATCH = 64  # images per timed call: the smallest digits conv then takes ~0.1 ms
DEMO_THREADS = 1  # see the module docstring
DEMO_DATA = "digits"


@dataclass(frozen=True)
class DemoTable:
    """One shipped table: its directory under ``cached_tables/``, its model, and how the model's
    demo weights are found and trained (each family's demo trains its own way)."""

    dir: str
    model: str
    has_weights: Callable[[], bool]
    train: Callable[[], dict[str, Any]]  # trains and saves the weights; returns what to report
    width: float = 1.0


def _classifier_weights(name: str) -> Callable[[], bool]:
    def present() -> bool:
        from core.models import demo_weights_path

        return demo_weights_path(name).is_file()

    return present


def _train_classifier(name: str) -> Callable[[], dict[str, Any]]:
    def train() -> dict[str, Any]:
        from core.demo_models import main as train_main

        code = train_main(["train", "--models", name])
        if code != 0:
            raise LayerMergeError(f"training the {name} demo weights failed (exit {code})")
        return {}

    return train


def _unet_weights() -> bool:
    from core.families.unet import unet as unet_module

    folder = unet_module.DEMO_UNET_DIR
    return any((folder / f).is_file() for f in unet_module.WEIGHT_FILES)


def _train_unet() -> dict[str, Any]:
    from core.families.unet.demo import train_demo_unet
    from core.families.unet.unet import DEMO_UNET_DIR, DEMO_UNET_NAME

    metrics = train_demo_unet(DEMO_UNET_DIR, progress=_unet_training_printer(DEMO_UNET_NAME))
    return {
        "holdout_eps_loss": metrics.get("holdout_eps_loss"),
        "fd_samples_vs_test": metrics.get("fd_samples_vs_test"),
    }


DEMO_TABLES: tuple[DemoTable, ...] = (
    DemoTable(
        "digits_resnet",
        "digits_resnet",
        _classifier_weights("digits_resnet"),
        _train_classifier("digits_resnet"),
    ),
    DemoTable(
        "digits_mobilenet",
        "digits_mobilenet",
        _classifier_weights("digits_mobilenet"),
        _train_classifier("digits_mobilenet"),
    ),
    DemoTable("digits_unet", "digits_unet", _unet_weights, _train_unet),
)


@dataclass(frozen=True)
class BuildSettings:
    """How the demo tables are measured (the defaults are what ships).

    Args:
        threads: latency timing threads.
        min_run_time: seconds of timed repeats per distinct geometry (core.latency).
        rounds: interleaved latency rounds.
        frontier: measure each demo's frontier.
        frontier_points: points per method to measure; None: every point.
        frontier_rounds: alternating rounds per measured point.
    """

    threads: int = DEMO_THREADS
    min_run_time: float = DEFAULT_MIN_RUN_TIME_S
    rounds: int = DEFAULT_ROUNDS
    frontier: bool = True
    frontier_points: int | None = None
    frontier_rounds: int = FRONTIER_ROUNDS


def build_demo_tables(
    models: Sequence[str] | None = None,
    *,
    retrain: bool = False,
    jobs: int = 2,
    threads: int = DEMO_THREADS,
    root: Path = CACHE_DIR,
    settings: BuildSettings | None = None,
) -> dict[str, Any]:
    """Weights (if missing), latency and importance tables, measured frontiers and the manifest.

    The caller's process should have the heap allocator setting applied
    (``core.benchmark.use_heap_allocator``; :func:`main` does): the tables record it, and their
    measured frontiers are timed with it.

    Args:
        models: demo model names; None: all of :data:`DEMO_TABLES`.
        retrain: retrain the demo weights even when the files exist.
        jobs: importance worker processes.
        threads: latency timing threads (``settings.threads`` wins when settings are given).
        root: the ``cached_tables`` folder.
        settings: timing settings; None: the shipped defaults with ``threads``.

    Returns:
        A JSON-able report: per model the seconds each step took, and the manifest.

    Raises:
        LayerMergeError: an unknown model name, or demo weights missing after training.
    """
    chosen = [t for t in DEMO_TABLES if models is None or t.model in models]
    unknown = set(models or ()) - {t.model for t in DEMO_TABLES}
    if unknown:
        raise LayerMergeError(
            f"unknown demo models {sorted(unknown)}; choose from "
            f"{', '.join(t.model for t in DEMO_TABLES)}"
        )
    settings = settings or BuildSettings(threads=threads)
    report: dict[str, Any] = {}
    for demo in chosen:
        report[demo.model] = _build_one(demo, root / demo.dir, retrain, jobs, settings)
    report["manifest"] = write_manifest(root / MANIFEST_PATH.name)
    return report


def _build_one(
    demo: DemoTable, out: Path, retrain: bool, jobs: int, settings: BuildSettings
) -> dict[str, Any]:
    """One demo model's weights (if missing) and tables in ``out``."""
    name = demo.model
    steps: dict[str, Any] = {}
    if retrain or not demo.has_weights():
        tic = time.perf_counter()
        steps.update(demo.train())
        steps["train_s"] = round(time.perf_counter() - tic, 1)
    family = family_for(name)
    bundle = family.load(name, width=demo.width)
    if bundle.weights_source != "shipped":
        raise LayerMergeError(f"{name}: no trained demo weights after training")
    traced = family.trace(bundle)
    config = LatencyConfig(
        batch=DEMO_BATCH,
        threads=settings.threads,
        min_run_time=settings.min_run_time,
        rounds=settings.rounds,
    )
    latency = measure_latency(
        bundle,
        traced,
        config,
        family=family,
        out=out,
        progress=progress_printer(f"{name} latency"),
    )
    steps["latency_s"] = round(latency.seconds, 1)
    steps["latency_computed"] = latency.computed
    steps["allocator"] = latency.meta.get("allocator")
    steps["latency_noise"] = latency.meta.get("latency_noise")
    warning = table_warning(latency.meta, str(out))
    steps["latency_warning"] = warning
    if warning:
        print(warning, file=sys.stderr, flush=True)
    importance = estimate_importance(
        bundle,
        traced,
        DEMO_DATA,
        family.importance_config(),
        family=family,
        out=out,
        jobs=jobs,
        progress=progress_printer(f"{name} importance"),
    )
    steps["importance_s"] = round(importance.seconds, 1)
    steps["importance_computed"] = importance.computed
    steps["additivity_error"] = latency.meta.get("additivity_error")
    steps["additivity_unexplained"] = latency.meta.get("additivity_unexplained")
    steps["base_accuracy"] = importance.meta.get("importance_base_accuracy")
    steps["base_loss"] = importance.meta.get("importance_base_loss")
    if settings.frontier:
        frontier = measure_frontier(
            loaded(bundle, traced, family=family),
            out,
            points=settings.frontier_points,
            rounds=settings.frontier_rounds,
            progress=progress_printer(f"{name} frontier"),
        )
        errors = list(
            {row.solution_key: row.error for row in frontier.rows if row.error is not None}.values()
        )
        steps["frontier_s"] = round(frontier.seconds, 1)
        steps["frontier_measured_now"] = frontier.measured_now
        steps["frontier_points"] = len({row.solution_key for row in frontier.rows})
        steps["frontier_worst_error"] = max(errors, key=abs) if errors else None
        steps["frontier_within_10_percent"] = sum(abs(e) <= 0.1 for e in errors)
    return steps


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
        help=f"demo models (default: all of {', '.join(t.model for t in DEMO_TABLES)})",
    )
    parser.add_argument("--retrain", action="store_true", help="retrain the demo weights")
    parser.add_argument("--jobs", type=int, default=2, help="importance processes (default 2)")
    parser.add_argument(
        "--threads", type=int, default=DEMO_THREADS, help="latency timing threads (default 1)"
    )
    parser.add_argument(
        "--allocator",
        default="heap",
        choices=ALLOCATORS,
        help="glibc allocator setting of this process, recorded in the tables (default heap)",
    )
    parser.add_argument(
        "--frontier-points",
        type=int,
        default=None,
        metavar="N",
        help="measure N points per method of each frontier (default: every point)",
    )
    parser.add_argument("--skip-frontier", action="store_true", help="do not measure the frontiers")
    smoke = parser.add_argument_group("smoke tests (the shipped tables use the defaults)")
    smoke.add_argument(
        "--root", type=Path, default=CACHE_DIR, help="the cached_tables folder to write"
    )
    smoke.add_argument("--min-run-time", type=float, default=DEFAULT_MIN_RUN_TIME_S)
    smoke.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    smoke.add_argument("--frontier-rounds", type=int, default=FRONTIER_ROUNDS)
    args = parser.parse_args(argv)
    try:
        TimingSettings(allocator=args.allocator).apply()  # process-wide: this process only
        settings = BuildSettings(
            threads=args.threads,
            min_run_time=args.min_run_time,
            rounds=args.rounds,
            frontier=not args.skip_frontier,
            frontier_points=args.frontier_points,
            frontier_rounds=args.frontier_rounds,
        )
        report = build_demo_tables(
            args.models,
            retrain=args.retrain,
            jobs=args.jobs,
            root=args.root,
            settings=settings,
        )
    except LayerMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
