"""Benchmark: which part of the network the speed model gets wrong, part by part.

The speed model (:mod:`core.speed`) predicts a merged network's latency from parts timed alone:
table entries (a merged conv with its activation), residual adds, activations, the stem and the
head. Where a prediction misses its measurement, this bench says which of those parts is off. It
times, side by side in one run, the BN-folded original and a few frontier points' merged
networks of a shipped table (by default the ones the speed model misses most, and the fastest):

- **in the network**: each step inside a real forward pass (``StepNetwork.timed_forward``);
- **alone, now**: each step again on a copy of its own input, repeated (a hot cache, as a table
  entry is timed), in this run;
- **model**: what the speed model counts for the same part (table entries and structure costs
  from meta.json, times the overhead scale s; the fixed stem and head unscaled), rescaled by
  this run's drift (the original measured now / meta.json's N) so all three are in this run's ms.

Parts: ``stem`` (conv 0, its activation and ops), ``convs`` (the merged convs with the activation
each entry is timed with), ``activations`` (those no entry times: after a removed conv, or a
linear output that gets one), ``residual`` (the adds and their shortcuts), ``head`` (the ops
after the last conv), and ``between`` (the whole network minus its timed steps: Python and the
allocator between steps).

Run (about 2 min per table on a 2-core machine, one thread, the table's settings)::

    .venv/bin/python bench/bench_speed_parts.py [--tables cached_tables/digits_resnet ...]
    .venv/bin/python bench/bench_speed_parts.py --smoke    # seconds: proves the script runs

Results go to ``runs/speed_parts/<table>.json`` and print as markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.benchmark import TimingSettings, folded_original  # noqa: E402
from core.merge import merge_model  # noqa: E402
from core.network import StepNetwork, step_label  # noqa: E402
from core.solution import Solution  # noqa: E402
from core.speed import (  # noqa: E402
    SpeedPrediction,
    planned_activations,
    predict_speed,
    running_residuals,
)
from core.tables import read_meta  # noqa: E402
from core.workflows.frontier import FrontierRow, frontier_rows  # noqa: E402
from core.workflows.model import LoadedModel, load_model  # noqa: E402

PARTS = ("stem", "convs", "activations", "residual", "head", "between")
DEFAULT_TABLES = ("cached_tables/digits_resnet", "cached_tables/digits_mobilenet")
OUT = Path("runs/speed_parts")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=list(DEFAULT_TABLES))
    parser.add_argument("--points", type=int, default=3, help="frontier points per table")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=8, help="forward passes per round")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.points, args.rounds, args.repeats = 1, 2, 2
    OUT.mkdir(parents=True, exist_ok=True)
    reports = []
    for tables in args.tables:
        report = run_table(Path(tables), args.points, args.rounds, args.repeats, smoke=args.smoke)
        (OUT / f"{Path(tables).name}.json").write_text(json.dumps(report, indent=2) + "\n")
        reports.append(report)
    print(markdown(reports))
    return 0


def run_table(
    directory: Path, points: int, rounds: int, repeats: int, *, smoke: bool = False
) -> dict[str, Any]:
    """Time the original and ``points`` frontier networks of one table, part by part."""
    meta = read_meta(directory)
    settings = TimingSettings.from_meta(meta).apply()
    torch.set_num_threads(settings.threads)
    model = _model_of(meta)
    rows = _picked_rows(directory, points)
    batch = 2 if smoke else settings.batch
    example = torch.randn(
        batch, *model.chain.input_shape, generator=torch.Generator().manual_seed(0)
    )
    networks: dict[str, StepNetwork] = {
        "original": folded_original(model.bundle.model, model.chain)
    }
    for row in rows:
        networks[_name(row)] = merge_model(model.bundle.model, model.chain, row.solution)
    load_before = _load_average()
    started = time.perf_counter()
    measured = _time_parts(networks, example, rounds, repeats)
    seconds = time.perf_counter() - started
    drift = measured["original"]["total"] / float(meta["network_folded_latency_ms"])
    result: dict[str, Any] = {
        "table": str(directory),
        "batch": batch,
        "threads": settings.threads,
        "allocator": settings.allocator,
        "rounds": rounds,
        "repeats": repeats,
        "load_average": [load_before, _load_average()],
        "seconds": round(seconds, 1),
        "network_ms_meta": float(meta["network_folded_latency_ms"]),
        "drift": drift,
        "networks": {},
    }
    solutions = {"original": None, **{_name(row): row for row in rows}}
    for name, network in networks.items():
        row = solutions[name]
        solution = row.solution if row is not None else None
        groups = _groups(network, model, meta, solution)
        parts = measured[name]
        result["networks"][name] = {
            "total_ms": parts["total"],
            "speedup_measured": measured["original"]["total"] / parts["total"],
            "speedup_predicted": row.prediction.speedup if row is not None else 1.0,
            "speedup_frontier_file": row.measured.speedup if row and row.measured else None,
            "in_network_ms": _sum_groups(groups, parts["in_network"], parts["total"]),
            "alone_ms": _sum_groups(groups, parts["alone"], None),
            "model_ms": {
                k: None if v is None else v * drift
                for k, v in _model_parts(meta, model, solution).items()
            },
        }
    return result


def markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for report in reports:
        load = report["load_average"]
        lines += [
            f"### {report['table']} (batch {report['batch']}, {report['threads']} thread, "
            f"{report['allocator']} allocator; drift {report['drift']:.2f}; load {load[0]} → "
            f"{load[1]}; {report['seconds']:.0f} s)",
            "",
            "| network | speed-up predicted | measured here | part | model ms | alone ms | in network ms |",
            "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        for name, data in report["networks"].items():
            first = True
            for part in PARTS:
                model_ms = data["model_ms"].get(part)
                alone = data["alone_ms"].get(part)
                inside = data["in_network_ms"].get(part)
                head = (
                    f"| {name} | {data['speedup_predicted']:.2f}× | {data['speedup_measured']:.2f}× "
                    if first
                    else "| | | "
                )
                lines.append(f"{head}| {part} | {_ms(model_ms)} | {_ms(alone)} | {_ms(inside)} |")
                first = False
            total_model = sum(v for v in data["model_ms"].values() if v is not None)
            lines.append(
                f"| | | | **total** | {total_model:.2f} | "
                f"{sum(v for v in data['alone_ms'].values() if v is not None):.2f} | "
                f"{data['total_ms']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- what is timed


def _time_parts(
    networks: Mapping[str, StepNetwork], example: torch.Tensor, rounds: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Per network: the whole forward's median (ms), each step's median inside the network and
    alone (ms by step label), over ``rounds`` interleaved rounds of ``repeats`` passes."""
    totals: dict[str, list[float]] = {name: [] for name in networks}
    inside: dict[str, dict[str, list[float]]] = {name: {} for name in networks}
    alone: dict[str, dict[str, list[float]]] = {name: {} for name in networks}
    with torch.inference_mode():
        for network in networks.values():
            network.eval()
            for _ in range(3):
                network(example)
        for _ in range(rounds):
            for name, network in networks.items():
                for _ in range(repeats):
                    started = time.perf_counter()
                    network(example)
                    totals[name].append((time.perf_counter() - started) * 1e3)
                for _ in range(repeats):
                    _, steps = network.timed_forward(example)
                    for label, seconds in steps:
                        inside[name].setdefault(label, []).append(seconds * 1e3)
                for label, ms in _steps_alone(network, example, repeats).items():
                    alone[name].setdefault(label, []).append(ms)
    return {
        name: {
            "total": statistics.median(totals[name]),
            "in_network": {k: statistics.median(v) for k, v in inside[name].items()},
            "alone": {k: statistics.median(v) for k, v in alone[name].items()},
        }
        for name in networks
    }


def _steps_alone(network: StepNetwork, example: torch.Tensor, repeats: int) -> dict[str, float]:
    """Each step timed alone on its own input (kept hot, as a table entry is), median ms."""
    saved: dict[int, torch.Tensor] = {}
    x = example
    result: dict[str, float] = {}
    for step in network.spec["steps"]:
        if step["op"] == "save":
            x = network.run_step(step, x, saved)
            continue
        inputs, skips = x, dict(saved)
        network.run_step(step, inputs, skips)  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            network.run_step(step, inputs, skips)
            times.append((time.perf_counter() - started) * 1e3)
        result[step_label(step)] = statistics.median(times)
        x = network.run_step(step, x, saved)
    return result


# --------------------------------------------------------------------------- grouping


def _groups(
    network: StepNetwork, model: LoadedModel, meta: Mapping[str, Any], solution: Solution | None
) -> dict[str, str]:
    """The part (:data:`PARTS`) each step label belongs to."""
    with_kernel = _ends_with_kernel(model, solution)
    groups: dict[str, str] = {}
    for step in network.spec["steps"]:
        op = step["op"]
        name = step.get("name", "")
        if op == "save":
            continue
        if op == "add":
            groups[f"add {step['slot']}"] = "residual"
        elif name in ("conv0", "act0") or name.startswith("op0_"):
            groups[name] = "stem"
        elif op == "fixed":
            groups[name] = "head"
        elif op == "conv":
            groups[name] = "convs"
        elif op == "act":
            position = int(name[3:])
            groups[name] = "convs" if position in with_kernel else "activations"
        else:
            groups[name or op] = "convs"
    return groups


def _ends_with_kernel(model: LoadedModel, solution: Solution | None) -> set[int]:
    if solution is None:
        return set(range(1, model.chain.last_position + 1))
    return {s.end for s in solution.segments if s.kernel > 0}


def _sum_groups(
    groups: Mapping[str, str], times: Mapping[str, float], total: float | None
) -> dict[str, float]:
    sums = dict.fromkeys(PARTS, 0.0)
    for label, ms in times.items():
        sums[groups.get(label, "convs")] += ms
    sums["between"] = total - sum(times.values()) if total is not None else None
    return sums


def _model_parts(
    meta: Mapping[str, Any], model: LoadedModel, solution: Solution | None
) -> dict[str, float | None]:
    """What the speed model counts for each part of ``solution`` (None: the original), in the
    table's ms: fixed costs as they are, the rest times the overhead scale s."""
    from core.segments import keep_everything_solution

    solution = solution or keep_everything_solution(model.chain)
    prediction: SpeedPrediction = predict_speed(meta, solution)
    scale = prediction.overhead_scale
    costs = {row["name"]: row for row in meta.get("structure_costs") or ()}
    stem = sum(
        r["latency_ms"] for r in costs.values() if r["kind"] == "fixed" and r["name"] == "stem"
    )
    head = sum(
        r["latency_ms"] for r in costs.values() if r["kind"] == "fixed" and r["name"] != "stem"
    )
    runs = planned_activations(meta, solution)
    activation = {
        r["position"]: r["latency_ms"] for r in costs.values() if r["kind"] == "activation"
    }
    latencies = {tuple(row[:5]): row[5] for row in meta.get("original_segments") or ()}
    convs = 0.0
    extra = 0.0
    for segment in solution.segments:
        if segment.kernel > 0:  # the original's segments carry no latency: read the table's
            convs += segment.latency_ms or latencies.get(tuple(segment.key), 0.0)
            if segment.end not in runs:  # the entry timed an activation the network skips
                convs -= activation.get(segment.end, 0.0)
        elif segment.end in runs:
            extra += activation.get(segment.end, 0.0)
    residual = sum(
        costs[f"residual {start}-{end}"]["latency_ms"]
        for start, end in running_residuals(meta, solution)
    )
    return {
        "stem": stem,
        "convs": scale * convs,
        "activations": scale * extra,
        "residual": scale * residual,
        "head": head,
        "between": None,
    }


# --------------------------------------------------------------------------- helpers


def _model_of(meta: Mapping[str, Any]) -> LoadedModel:
    name = str(meta["model"])
    weights = meta.get("weights_file")
    path = Path("cached_tables/demo_weights") / str(weights) if weights else None
    return load_model(name, weights=path if path and path.exists() else None)


def _picked_rows(directory: Path, points: int) -> list[FrontierRow]:
    """The LayerMerge and baseline points the model misses most, and the fastest measured one."""
    listed = frontier_rows(directory).rows
    rows = [r for r in listed if r.measured is not None]
    if not rows:  # nothing measured yet: the fastest points
        return sorted(listed, key=lambda r: -r.prediction.speedup)[:points]
    unique: dict[str, FrontierRow] = {}
    for row in rows:
        unique.setdefault(row.solution_key, row)
    by_error = sorted(unique.values(), key=lambda r: -abs(_error(r)))
    fastest = max(unique.values(), key=lambda r: r.measured.speedup)
    picked = [fastest] + [r for r in by_error if r is not fastest][: max(points - 1, 0)]
    return picked


def _error(row: FrontierRow) -> float:
    return row.prediction.speedup / row.measured.speedup - 1


def _name(row: FrontierRow) -> str:
    return f"{row.method} {row.prediction.speedup:.2f}× pred"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
