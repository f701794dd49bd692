"""Benchmark: tracing + segment enumeration (resnet50, mobilenet_v2 1.4) and a full merge.

Run: ``.venv/bin/python bench/bench_chain.py``. Model construction (torchvision's random init) is
excluded: the figures are what a user waits for once a model is loaded. Medians of 5 runs.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.chain import trace_chain  # noqa: E402
from core.merge import merge_model  # noqa: E402
from core.segments import find_segments, keep_everything_solution  # noqa: E402
from tests.helpers import random_solution  # noqa: E402

REPEATS = 5


def _median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    models = {
        "resnet50": torchvision.models.resnet50(),
        "mobilenet_v2 (width 1.4)": torchvision.models.mobilenet_v2(width_mult=1.4),
    }
    for name, model in models.items():
        seconds = _median_seconds(lambda m=model: find_segments(trace_chain(m, 224)))
        rows.append((f"trace + segments, {name} @224", seconds, 2.0))
    mobilenet = torchvision.models.mobilenet_v2().eval()
    chain = trace_chain(mobilenet, 224)
    everything = keep_everything_solution(chain)
    rows.append(
        (
            "merge mobilenet_v2, keep everything",
            _median_seconds(lambda: merge_model(mobilenet, chain, everything)),
            1.0,
        )
    )
    solution = random_solution(chain, random.Random(0))
    merged_segments = sum(1 for s in solution.segments if s.end - s.start > 1)
    rows.append(
        (
            f"merge mobilenet_v2, random solution ({merged_segments} multi-conv segments)",
            _median_seconds(lambda: merge_model(mobilenet, chain, solution)),
            1.0,
        )
    )
    print("| step | median (s) | target (s) |")
    print("| --- | ---: | ---: |")
    for label, seconds, target in rows:
        print(f"| {label} | {seconds:.3f} | < {target:g} |")


if __name__ == "__main__":
    main()
