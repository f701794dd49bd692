"""Benchmark of the two look-up tables: how long they take to build on this machine.

Three timings, each from an empty output directory (nothing cached):

1. ``profile`` of resnet34 at 224x224, batch 1 (torch eager, CPU);
2. ``profile`` of mobilenet_v2 width 1.4 at 224x224, batch 1;
3. the demo importance table of ``digits_resnet`` (finetune mode, default settings) with 2
   local processes.

For the two profiles it also reports the additivity error (keep-everything table sum vs the
measured whole network), the number of entries and of distinct merged convs actually timed.
Targets (issue 3): each at most 5 minutes on the 2-core development CPU.

Run: ``.venv/bin/python bench/bench_tables.py [--threads 1] [--skip-importance]``
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

from core.chain import trace_chain  # noqa: E402
from core.files import library_versions  # noqa: E402
from core.importance import ImportanceConfig, estimate_importance  # noqa: E402
from core.latency import LatencyConfig, cpu_model, measure_latency  # noqa: E402
from core.models import build_model  # noqa: E402

COMMAND = ".venv/bin/python bench/bench_tables.py"
PROFILES = (("resnet34", 1.0), ("mobilenet_v2", 1.4))
TARGET_S = 300.0


def bench_profile(name: str, width: float, *, threads: int, batch: int = 1) -> dict[str, Any]:
    """Profile one model from scratch, timing the whole call (build and trace included)."""
    started = time.perf_counter()
    bundle = build_model(name, width=width, input_size=224)
    chain = trace_chain(bundle.model, 224)
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as out:
        table = measure_latency(bundle, chain, LatencyConfig(batch=batch, threads=threads), out=out)
    seconds = time.perf_counter() - started
    meta = table.meta
    return {
        "model": f"{name}-{width:g}" if width != 1.0 else name,
        "entries": len(table.entries),
        "distinct_convs": table.measured_geometries,
        "seconds": round(seconds, 1),
        "table_ms": round(meta["original_table_latency_ms"], 2),
        "network_ms": round(meta["network_latency_ms"], 2),
        "additivity_error": round(meta["additivity_error"], 3),
        "threads": meta["threads"],
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
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{cpu_model()}, load average {load:.1f}, {json.dumps(library_versions())}")
    results: dict[str, Any] = {"load_average_start": round(load, 2)}
    if not args.skip_profile:
        results["profile"] = []
        print("| model | entries | distinct convs | seconds | table ms | network ms | additivity |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, width in PROFILES:
            row = bench_profile(name, width, threads=args.threads)
            results["profile"].append(row)
            print(
                f"| {row['model']} | {row['entries']} | {row['distinct_convs']} | "
                f"{row['seconds']} | {row['table_ms']} | {row['network_ms']} | "
                f"{row['additivity_error']:+.1%} |",
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
