"""Benchmark: the paper's budgets on real architectures, predicted vs measured CPU speed-up.

Run: ``.venv/bin/python bench/bench_speedup.py [--models resnet34 mobilenet_v2 mobilenet_v2_1.4]``

For ResNet-34 (71/60/50%), MobileNetV2-1.0 (55/46/38/33%) and MobileNetV2-1.4 (43/42/35/30% of
the original table latency; LAYERMERGE.md §6.1) at 224x224, batch 1, on this CPU:

1. the latency table is measured here (core.latency: torch eager, CPU, batch 1, one thread);
2. the importance table comes from the data-light ``distortion`` mode (core.importance): no
   pretrained weights are at hand (nothing can be downloaded), so the models have their SEEDED
   initial weights, and the calibration images are seeded noise in a synthetic 1000-class image
   folder. Importance then only says how much a change moves a random network's logits: the
   solutions are structurally plausible, their accuracy means nothing, and no finetuning is done.
   What this benchmark measures is speed, which does not depend on the weights' values;
3. the LayerMerge DP solves each budget, the solution is merged, and the original network (BN
   folded, as the paper measures) and the merged one are timed side by side in one run,
   alternating, on torch eager and ONNX Runtime (core.benchmark), one thread each;
4. ``--measure heap`` and ``--measure default`` re-time every budget in a fresh process under a
   stated glibc allocator setting (core.benchmark.use_heap_allocator): CPU eager timings depend
   on it, ONNX Runtime's (own arena) do not.

Tables and results go under ``runs/speedup/`` (git-ignored); tables are cached by content, so a
rerun only re-measures the speed-ups. Results print as a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import (  # noqa: E402
    compare,
    folded_original,
    predicted_speedup,
    use_heap_allocator,
)
from core.chain import trace_chain  # noqa: E402
from core.dp import solve  # noqa: E402
from core.importance import ImportanceConfig, estimate_importance  # noqa: E402
from core.latency import LatencyConfig, measure_latency  # noqa: E402
from core.merge import merge_model  # noqa: E402
from core.models import build_model  # noqa: E402
from core.tables import read_tables  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "speedup"
INPUT_SIZE = 224
THREADS = 1  # a second OpenMP thread on this shared 2-core machine scatters timings badly
CALIBRATION_IMAGES = 4
CLASSES = 1000
# name -> (registry name, width, [(budget fraction, paper's PyTorch speed-up)])
ARCHITECTURES: dict[str, tuple[str, float, list[tuple[float, float]]]] = {
    "resnet34": ("resnet34", 1.0, [(0.71, 1.36), (0.60, 1.56), (0.50, 1.79)]),
    "mobilenet_v2": ("mobilenet_v2", 1.0, [(0.55, 1.63), (0.46, 1.90), (0.38, 2.18), (0.33, 2.49)]),
    "mobilenet_v2_1.4": (
        "mobilenet_v2",
        1.4,
        [(0.43, 1.99), (0.42, 2.07), (0.35, 2.39), (0.30, 2.72)],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--rounds", type=int, default=15, help="alternating timed rounds")
    parser.add_argument("--out", default=str(WORK / "results.json"))
    parser.add_argument(
        "--report", action="store_true", help="only print the table of the saved results"
    )
    parser.add_argument(
        "--measure",
        choices=("default", "heap"),
        default=None,
        help="only re-measure the saved solutions, in this fresh process, with this allocator",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(_markdown(json.loads(Path(args.out).read_text())))
        return 0
    torch.set_num_threads(THREADS)
    if args.measure:
        return _measure_all(Path(args.out), args.measure, rounds=args.rounds)
    folder = _calibration_folder(WORK / "calibration1000")
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    for name in args.models:
        results[name] = _run_architecture(name, folder, rounds=args.rounds)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    print(_markdown(results))
    return 0


def _run_architecture(name: str, folder: Path, *, rounds: int) -> dict[str, Any]:
    registry, width, budgets = ARCHITECTURES[name]
    bundle = build_model(registry, width=width, input_size=INPUT_SIZE)
    chain = trace_chain(bundle.model, INPUT_SIZE)
    tables_dir = WORK / "tables" / name
    started = time.perf_counter()
    measure_latency(bundle, chain, LatencyConfig(batch=1, threads=THREADS), out=tables_dir)
    latency_s = time.perf_counter() - started
    started = time.perf_counter()
    estimate_importance(
        bundle,
        chain,
        f"folder:{folder}",
        ImportanceConfig(mode="distortion", calibration_images=CALIBRATION_IMAGES),
        out=tables_dir,
        jobs=1,
        threads=THREADS,
    )
    importance_s = time.perf_counter() - started
    tables = read_tables(tables_dir)
    original_table = tables.original_latency_ms
    network_ms = tables.meta.get("network_latency_ms")
    print(
        f"{name}: tables in {latency_s:.0f} s + {importance_s:.0f} s; table original "
        f"{original_table:.2f} ms, network {network_ms} ms",
        file=sys.stderr,
    )
    baseline = folded_original(bundle.model, chain)
    rows = []
    for fraction, paper in budgets:
        solution = solve(tables, budget_fraction=fraction, method="layermerge")
        merged = merge_model(bundle.model, chain, solution)
        measured = compare(
            baseline,
            merged,
            input_shape=chain.input_shape,
            batch=1,
            rounds=rounds,
            threads=THREADS,
        )
        row = {
            "budget_fraction": fraction,
            "paper_pytorch_speedup": paper,
            "table_latency_ms": solution.latency_ms,
            "table_ratio": original_table / solution.latency_ms,
            "predicted_speedup": predicted_speedup(
                solution.latency_ms, original_table, network_latency_ms=network_ms
            ),
            "depth": merged.depth(),
            "pruned_convs": len(chain.convs) - len(solution.kept_convs),
            "merged_segments": sum(1 for s in solution.segments if s.end - s.start > 1),
            "measured": [m.to_dict() for m in measured],
        }
        rows.append(row)
        print(
            f"  {fraction:.0%}: predicted {row['predicted_speedup']:.2f}x, measured "
            + ", ".join(f"{m.backend} {m.speedup:.2f}x" for m in measured),
            file=sys.stderr,
        )
    return {
        "model": registry,
        "width": width,
        "original_depth": len(chain.convs),
        "table_original_ms": original_table,
        "network_latency_ms": network_ms,
        "additivity_error": tables.meta.get("additivity_error"),
        "latency_table_s": latency_s,
        "importance_table_s": importance_s,
        "threads": THREADS,
        "torch": torch.__version__,
        "rows": rows,
    }


def _measure_all(out: Path, allocator: str, *, rounds: int) -> int:
    """Re-time every saved budget's merged network, nothing else run in this process first.

    Building the tables runs hundreds of forward passes, which changes glibc's allocator state
    and with it CPU eager timings (core.benchmark.use_heap_allocator); a fresh process per
    allocator setting measures every row under the same, stated conditions.
    """
    if allocator == "heap" and not use_heap_allocator():
        raise SystemExit("the heap allocator setting needs glibc")
    results = json.loads(out.read_text())
    for name, result in results.items():
        registry, width, _ = ARCHITECTURES[name]
        bundle = build_model(registry, width=width, input_size=INPUT_SIZE)
        chain = trace_chain(bundle.model, INPUT_SIZE)
        tables = read_tables(WORK / "tables" / name)
        baseline = folded_original(bundle.model, chain)
        for row in result["rows"]:
            solution = solve(tables, budget_fraction=row["budget_fraction"], method="layermerge")
            merged = merge_model(bundle.model, chain, solution)
            measured = compare(
                baseline, merged, input_shape=chain.input_shape, batch=1, rounds=rounds
            )
            row.setdefault("speed", {})[allocator] = {m.backend: m.to_dict() for m in measured}
            print(
                f"{name} {row['budget_fraction']:.0%} ({allocator}): "
                + ", ".join(f"{m.backend} {m.speedup:.2f}x" for m in measured),
                file=sys.stderr,
            )
        out.write_text(json.dumps(results, indent=2))
    print(_markdown(results))
    return 0


def _calibration_folder(path: Path) -> Path:
    """A synthetic ImageFolder with one seeded-noise 8x8 image per class (1000 classes)."""
    from PIL import Image

    if (path / f"class{CLASSES - 1:04d}" / "0.png").exists():
        return path
    rng = np.random.default_rng(0)
    for index in range(CLASSES):
        folder = path / f"class{index:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "0.png")
    return path


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | budget | depth | pruned convs | table ratio | predicted | torch (heap) | "
        "torch (default) | ONNX Runtime | original ms torch / ORT | paper PyTorch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        for row in result["rows"]:
            speed = row.get("speed", {})
            # the first run's measurement (after building the tables) when not re-measured
            default = speed.get("default") or {m["backend"]: m for m in row["measured"]}
            heap = speed.get("heap", {})
            ort = (heap or default)["onnxruntime"]
            torch_heap = f"{heap['torch']['speedup']:.2f}x" if heap else "-"
            base = heap or default
            lines.append(
                f"| {name} | {row['budget_fraction']:.0%} | {result['original_depth']} -> "
                f"{row['depth']} | {row['pruned_convs']} | {row['table_ratio']:.2f}x | "
                f"{row['predicted_speedup']:.2f}x | {torch_heap} | "
                f"{default['torch']['speedup']:.2f}x | {ort['speedup']:.2f}x | "
                f"{base['torch']['original_ms']:.1f} / {ort['original_ms']:.1f} | "
                f"{row['paper_pytorch_speedup']:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
