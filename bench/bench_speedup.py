"""Benchmark: the speed model's predicted speed-up against the measured one, row by row.

Run one part at a time (each prints its estimate first), then the report::

    .venv/bin/python bench/bench_speedup.py --list
    .venv/bin/python bench/bench_speedup.py --part digits_resnet      # ... one per part
    .venv/bin/python bench/bench_speedup.py --report                  # markdown for BENCHMARKS.md

Parts (issue 12, "Must show"):

- ``digits_resnet``, ``digits_mobilenet``, ``digits_unet``: every frontier point of the shipped demo
  table, all three methods (``core.workflows.frontier``). The tables are copied from
  ``cached_tables/`` (regenerate them first with ``make tables``) into ``runs/speedup/<part>/``,
  so the shipped ``frontier_measured.json`` is left alone and every point is measured afresh, side
  by side with the original in this one run, with the table's settings (batch 64, one thread, its
  allocator);
- ``resnet34`` (71/60/50%), ``mobilenet_v2`` (55/46/38/33%), ``mobilenet_v2_1.4``
  (43/42/35/30% of the original table latency; LAYERMERGE.md §6.1) at 224x224, batch 1: the
  latency table is profiled here under the protocol (core.latency: one thread, heap allocator,
  interleaved rounds, contention check), the importance table comes from the data-light
  ``distortion`` mode on seeded weights and a synthetic 1000-class noise folder (no pretrained
  weights can be downloaded: the solutions are structurally plausible, their accuracy means
  nothing, and speed does not depend on weight values), LayerMerge solves each budget, and the
  merged network is timed against the original (BN folded) side by side, with the table's settings.

Every row shows the speed model's prediction (:mod:`core.speed`), the measurement, their error
(the goal: within ±10%), and the parts of the prediction: the measured original N from meta.json
against the original measured in this run (drift of the machine), the table change, the residual
adds the merge absorbs, the activations, and the overhead scale s those changes are counted with. Where a row misses, those columns say which part of the
network the model gets wrong. The machine's load average is recorded before and after each part.

``--smoke`` runs a part on tiny settings in seconds (64x64 inputs, short timings, two points) to
prove the script works; its numbers mean nothing. Results go to ``runs/speedup/<part>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import TimingSettings  # noqa: E402
from core.dp import solve  # noqa: E402
from core.files import library_versions  # noqa: E402
from core.importance import ImportanceConfig, estimate_importance  # noqa: E402
from core.latency import LatencyConfig, cpu_model, measure_latency  # noqa: E402
from core.speed import table_warning  # noqa: E402
from core.tables import read_tables  # noqa: E402
from core.workflows.frontier import measure_frontier  # noqa: E402
from core.workflows.measure import measure  # noqa: E402
from core.workflows.model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "speedup"
CACHED = ROOT / "cached_tables"
INPUT_SIZE = 224
THREADS = 1
CALIBRATION_IMAGES = 4
CLASSES = 1000
ROUNDS = 15  # alternating timed rounds per measured network at 224
FRONTIER_ROUNDS = 9


@dataclass(frozen=True)
class Part:
    """One separately runnable part of the benchmark."""

    name: str
    model: str
    width: float = 1.0
    budgets: tuple[tuple[float, float], ...] = ()  # (fraction, paper's PyTorch speed-up)
    minutes: float = 0.0  # rough estimate on a quiet 2-core machine

    @property
    def demo(self) -> bool:
        return not self.budgets


PARTS = {
    part.name: part
    for part in (
        Part("digits_resnet", "digits_resnet", minutes=3),
        Part("digits_mobilenet", "digits_mobilenet", minutes=5),
        Part("digits_unet", "digits_unet", minutes=8),
        Part("resnet34", "resnet34", budgets=((0.71, 1.36), (0.60, 1.56), (0.50, 1.79)), minutes=8),
        Part(
            "mobilenet_v2",
            "mobilenet_v2",
            budgets=((0.55, 1.63), (0.46, 1.90), (0.38, 2.18), (0.33, 2.49)),
            minutes=8,
        ),
        Part(
            "mobilenet_v2_1.4",
            "mobilenet_v2",
            width=1.4,
            budgets=((0.43, 1.99), (0.42, 2.07), (0.35, 2.39), (0.30, 2.72)),
            minutes=9,
        ),
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the parts with estimates")
    parser.add_argument("--part", choices=PARTS, nargs="+", help="run these parts")
    parser.add_argument("--report", action="store_true", help="print the saved results")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: prove it runs")
    parser.add_argument("--out", default=str(WORK), help="results folder (default runs/speedup)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.list or not (args.part or args.report):
        for part in PARTS.values():
            what = "every frontier point, 3 methods" if part.demo else "the paper's budgets"
            print(f"{part.name:<18} ~{part.minutes:.0f} min  {what}")
        print("run: bench/bench_speedup.py --part NAME; then --report")
        return 0
    if args.part:
        TimingSettings(allocator="heap").apply()  # what the tables record; process-wide
        for name in args.part:
            part = PARTS[name]
            print(f"{name}: about {part.minutes:.0f} min on a quiet 2-core machine", flush=True)
            result = _run_part(part, out, smoke=args.smoke)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}{'-smoke' if args.smoke else ''}.json").write_text(
                json.dumps(result, indent=2, default=str)
            )
            print(_markdown({name: result}), flush=True)
    if args.report:
        results = {
            path.stem: json.loads(path.read_text())
            for path in sorted(out.glob("*.json"))
            if path.stem.removesuffix("-smoke") in PARTS
        }
        print(_markdown(results))
    return 0


def _run_part(part: Part, out: Path, *, smoke: bool) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = _load()
    if part.demo:
        rows, meta, extra = _demo_part(part, out, smoke=smoke)
    else:
        rows, meta, extra = _paper_part(part, out, smoke=smoke)
    return {
        "part": part.name,
        "smoke": smoke,
        "machine": cpu_model(),
        "versions": library_versions(),
        "load_average": [load_before, _load()],
        "seconds": round(time.perf_counter() - started, 1),
        "table": {
            key: meta.get(key)
            for key in (
                "batch",
                "threads",
                "allocator",
                "input_size",
                "network_folded_latency_ms",
                "original_table_latency_ms",
                "explained_network_ms",
                "additivity_unexplained",
                "latency_noise",
            )
        },
        "warning": table_warning(meta),
        **extra,
        "rows": rows,
    }


def _demo_part(part: Part, out: Path, *, smoke: bool) -> tuple[list[dict], dict, dict]:
    source = CACHED / part.model
    tables_dir = out / part.name
    shutil.rmtree(tables_dir, ignore_errors=True)
    shutil.copytree(source, tables_dir, ignore=shutil.ignore_patterns("frontier_measured.json"))
    model = load_model(part.model)
    done = measure_frontier(
        model,
        tables_dir,
        points=2 if smoke else None,
        rounds=1 if smoke else FRONTIER_ROUNDS,
        progress=_printer(part.name),
    )
    rows = [
        {
            "method": row.method,
            "budget": row.latency_ms / row.prediction.original_table_ms,
            "table_ms": row.latency_ms,
            **_prediction_fields(row.prediction),
            "measured_speedup": row.measured.speedup if row.measured else None,
            "original_ms": row.measured.original_ms if row.measured else None,
            "merged_ms": row.measured.merged_ms if row.measured else None,
            "error": row.error,
            "solution_key": row.solution_key,
            "kept_convs": len(row.solution.kept_convs),
            "segments": len(row.solution.segments),
        }
        for row in done.rows
    ]
    return rows, read_tables(tables_dir).meta, {"measured_points": done.measured_now}


def _paper_part(part: Part, out: Path, *, smoke: bool) -> tuple[list[dict], dict, dict]:
    size = 64 if smoke else INPUT_SIZE
    tables_dir = out / part.name / f"tables-{size}"
    model = load_model(part.model, width=part.width, input_size=size)
    config = LatencyConfig(
        batch=1,
        threads=THREADS,
        min_run_time=0.01 if smoke else LatencyConfig().min_run_time,
        rounds=2 if smoke else LatencyConfig().rounds,
    )
    tic = time.perf_counter()
    measure_latency(
        model.bundle, model.traced, config, out=tables_dir, progress=_printer(part.name)
    )
    latency_s = time.perf_counter() - tic
    tic = time.perf_counter()
    folder = _calibration_folder(out / "calibration1000")
    images = 2 if smoke else CALIBRATION_IMAGES
    estimate_importance(
        model.bundle,
        model.traced,
        f"folder:{folder},resize={size}",
        ImportanceConfig(mode="distortion", calibration_images=images),
        out=tables_dir,
        jobs=1,
        threads=THREADS,
    )
    importance_s = time.perf_counter() - tic
    tables = read_tables(tables_dir)
    rows = []
    for fraction, paper in part.budgets[:2] if smoke else part.budgets:
        solution = solve(tables, budget_fraction=fraction, method="layermerge")
        done = measure(
            model,
            solution,
            backends=("torch",),
            rounds=2 if smoke else ROUNDS,
            tables_meta=tables.meta,
        )
        [torch_row] = done.comparisons
        predicted = done.predicted or {}
        rows.append(
            {
                "method": "layermerge",
                "budget": fraction,
                "paper_pytorch_speedup": paper,
                "table_ms": solution.latency_ms,
                "table_ratio": tables.original_latency_ms / solution.latency_ms,
                **_prediction_fields_dict(predicted),
                "measured_speedup": torch_row.speedup,
                "original_ms": torch_row.original_ms,
                "merged_ms": torch_row.compressed_ms,
                "error": predicted.get("speedup", float("nan")) / torch_row.speedup - 1,
                "depth": done.compressed["depth"],
                "original_depth": done.original["depth"],
                "kept_convs": len(solution.kept_convs),
                "settings_note": done.settings_note,
            }
        )
        print(
            f"  {fraction:.0%}: predicted {predicted.get('speedup', float('nan')):.2f}x, "
            f"measured {torch_row.speedup:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    extra = {"latency_table_s": round(latency_s, 1), "importance_table_s": round(importance_s, 1)}
    return rows, tables.meta, extra


def _prediction_fields(prediction: Any) -> dict[str, Any]:
    return _prediction_fields_dict(prediction.to_dict())


def _prediction_fields_dict(prediction: dict[str, Any]) -> dict[str, Any]:
    return {
        "predicted_speedup": prediction.get("speedup"),
        "predicted_ms": prediction.get("predicted_ms"),
        "network_ms": prediction.get("network_ms"),
        "table_change_ms": prediction.get("table_change_ms"),
        "residual_change_ms": prediction.get("residual_change_ms"),
        "activation_change_ms": prediction.get("activation_change_ms"),
        "overhead_scale": prediction.get("overhead_scale"),
        "basis": prediction.get("basis"),
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = [
        "| part | method | budget | predicted | measured | error | original ms: table N / "
        "now | merged ms: predicted / measured | table Δ | residual Δ | activation Δ | scale s | "
        "paper |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        for row in result["rows"]:
            paper = row.get("paper_pytorch_speedup")
            lines.append(
                f"| {name} | {row['method']} | {row['budget']:.0%} | "
                f"{_x(row['predicted_speedup'])} | {_x(row['measured_speedup'])} | "
                f"{_pct(row['error'])} | {_ms(row['network_ms'])} / {_ms(row['original_ms'])} | "
                f"{_ms(row['predicted_ms'])} / {_ms(row['merged_ms'])} | "
                f"{_ms(row['table_change_ms'])} | {_ms(row['residual_change_ms'])} | "
                f"{_ms(row['activation_change_ms'])} | {_scale(row.get('overhead_scale'))} | "
                f"{_x(paper)} |"
            )
    for name, result in results.items():
        errors = [abs(r["error"]) for r in result["rows"] if _finite(r["error"])]
        within = sum(e <= 0.1 for e in errors)
        lines.append(
            f"\n{name}: {within} of {len(errors)} measured rows within 10%; load average "
            f"{result['load_average']}; {result['seconds']:.0f} s"
            + (f"; {result['warning']}" if result.get("warning") else "")
        )
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and np.isfinite(value)


def _x(value: Any) -> str:
    return f"{value:.2f}x" if _finite(value) else "-"


def _scale(value: Any) -> str:
    return f"{value:.3f}" if _finite(value) else "-"


def _pct(value: Any) -> str:
    return f"{value:+.1%}" if _finite(value) else "-"


def _ms(value: Any) -> str:
    return f"{value:.3g}" if _finite(value) else "-"


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _printer(label: str):
    def report(done: int, total: int, eta: float | None = None) -> None:
        if done == total or done % max(1, total // 10) == 0:
            eta_text = f", ~{eta:.0f} s left" if eta else ""
            print(f"  {label}: {done}/{total}{eta_text}", file=sys.stderr, flush=True)

    return report


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


if __name__ == "__main__":
    sys.exit(main())
