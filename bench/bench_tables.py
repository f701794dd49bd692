"""Benchmark of the two look-up tables: how long they take to build on this machine.

Three timings, each from an empty output directory (nothing cached):

1. ``profile`` of resnet34 at 224x224, batch 1 (torch eager, CPU);
2. ``profile`` of mobilenet_v2 width 1.4 at 224x224, batch 1;
3. the demo importance table of ``digits_resnet`` (finetune mode, default settings) with 2
   local processes.

The profiles run under the profiling protocol (core.latency: one thread, the heap allocator
setting applied to this process, interleaved rounds with a contention check, the folded network
and the structure costs). For each it also reports the additivity error (keep-everything table
sum vs the measured network, BN folded), what the structure costs leave unexplained, the noise
the run found and whether the table came out unreliable (core.speed.table_warning), the number of
entries and of distinct merged convs actually timed. Targets (issue 3): each at most 5 minutes on
the 2-core development CPU.

Run: ``.venv/bin/python bench/bench_tables.py [--threads 1] [--skip-importance]``
(``--smoke``: 64x64 inputs and short timings, seconds: proves the script runs.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import TimingSettings  # noqa: E402
from core.chain import trace_chain  # noqa: E402
from core.files import library_versions  # noqa: E402
from core.importance import ImportanceConfig, estimate_importance  # noqa: E402
from core.latency import LatencyConfig, cpu_model, measure_latency  # noqa: E402
from core.models import build_model  # noqa: E402
from core.speed import table_warning  # noqa: E402

COMMAND = ".venv/bin/python bench/bench_tables.py"
PROFILES = (("resnet34", 1.0), ("mobilenet_v2", 1.4))
TARGET_S = 300.0


def bench_profile(
    name: str, width: float, *, threads: int, batch: int = 1, smoke: bool = False
) -> dict[str, Any]:
    """Profile one model from scratch, timing the whole call (build and trace included)."""
    started = time.perf_counter()
    size = 64 if smoke else 224
    bundle = build_model(name, width=width, input_size=size)
    chain = trace_chain(bundle.model, size)
    config = LatencyConfig(batch=batch, threads=threads)
    if smoke:
        config = LatencyConfig(batch=batch, threads=threads, min_run_time=0.01, rounds=2)
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as out:
        table = measure_latency(bundle, chain, config, out=out)
    seconds = time.perf_counter() - started
    meta = table.meta
    noise = meta["latency_noise"]
    return {
        "model": f"{name}-{width:g}" if width != 1.0 else name,
        "entries": len(table.entries),
        "distinct_convs": table.measured_geometries,
        "seconds": round(seconds, 1),
        "table_ms": round(meta["original_table_latency_ms"], 2),
        "network_ms": round(meta["network_latency_ms"], 2),
        "additivity_error": round(meta["additivity_error"], 3),
        "unexplained": round(meta["additivity_unexplained"], 3),
        "slow_samples": noise["slow_samples"],
        "remeasured": noise["remeasured"],
        "unresolved": noise["unresolved"],
        "warning": table_warning(meta),
        "threads": meta["threads"],
        "allocator": meta["allocator"],
    }


def bench_importance(*, jobs: int = 2) -> dict[str, Any]:
    """The demo importance table (digits_resnet, finetune mode, default settings), from scratch."""
    started = time.perf_counter()
    bundle = build_model("digits_resnet")
    chain = trace_chain(bundle.model, bundle.input_size)
    with tempfile.TemporaryDirectory(prefix="bench-importance-") as out:
        table = estimate_importance(bundle, chain, "digits", ImportanceConfig(), out=out, jobs=jobs)
    seconds = time.perf_counter() - started
    settings = table.meta["importance_settings"]
    return {
        "model": "digits_resnet",
        "entries": len(table.entries),
        "networks": table.networks_trained,
        "jobs": jobs,
        "steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "seconds": round(seconds, 1),
        "base_accuracy": round(table.meta["importance_base_accuracy"], 2),
        "weights": bundle.weights_source,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="latency timing threads")
    parser.add_argument("--jobs", type=int, default=2, help="importance processes")
    parser.add_argument("--skip-importance", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: prove it runs")
    args = parser.parse_args()
    TimingSettings(allocator="heap").apply()  # the protocol's setting; process-wide
    load = os.getloadavg()[0]
    print(f"{cpu_model()}, load average {load:.1f}, {json.dumps(library_versions())}")
    results: dict[str, Any] = {"load_average_start": round(load, 2)}
    if not args.skip_profile:
        results["profile"] = []
        print(
            "| model | entries | distinct convs | seconds | table ms | network ms (BN folded) | "
            "additivity | unexplained | slow / re-timed / unresolved | warning |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for name, width in PROFILES:
            row = bench_profile(name, width, threads=args.threads, smoke=args.smoke)
            results["profile"].append(row)
            print(
                f"| {row['model']} | {row['entries']} | {row['distinct_convs']} | "
                f"{row['seconds']} | {row['table_ms']} | {row['network_ms']} | "
                f"{row['additivity_error']:+.1%} | {row['unexplained']:+.1%} | "
                f"{row['slow_samples']} / {row['remeasured']} / {row['unresolved']} | "
                f"{'yes' if row['warning'] else 'no'} |",
                flush=True,
            )
    if not args.skip_importance:
        row = bench_importance(jobs=args.jobs)
        results["importance"] = row
        print(
            f"importance digits_resnet ({row['weights']} weights): {row['entries']} entries, "
            f"{row['networks']} networks, {row['steps']} steps x {row['batch_size']}, "
            f"{row['jobs']} processes: {row['seconds']} s"
        )
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    slow = [
        r["model"]
        for r in [*results.get("profile", []), results.get("importance", {})]
        if r and r["seconds"] > TARGET_S
    ]
    print(json.dumps(results))
    print("targets met" if not slow else f"over the {TARGET_S:.0f} s target: {slow}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
