"""Benchmark: predicted vs measured accuracy along the frontiers, and the five-budget demo frontier.

Issue 13, item 3 (calibration, measured). For each demo model (its shipped weights and tables,
``cached_tables/manifest.json``), each objective (``additive``, ``paper``) and each method
(``layermerge``, ``depth`` = Kim23, ``layer``), about ``--points`` solutions are taken spread along
the method's exact frontier by latency (the unchanged original excluded). A solution chosen by
several methods or objectives is measured once. Each distinct solution is measured three ways:

- **after surgery**: merged from the original weights, no finetune, scored by the family's
  ``evaluate`` on its test split (accuracy in %; a UNet: ε-loss on its holdout split);
- **finetuned**: the standard finetune (:data:`STANDARD_FINETUNE`; the finetune workflow,
  ``core.workflows.finetune``), then merged and scored the same way;
- **measured speed-up**: the merged network timed side by side against the BN-folded original
  (the family's speed baseline; ``core.benchmark.measure_side_by_side`` through the measure
  workflow) at the tables' batch, one thread, torch eager, with the heap allocator setting
  (``core.benchmark.use_heap_allocator``) made at process start. Speed is measured for every
  model before any training runs in the process, and the machine load (``os.getloadavg``) is
  recorded before and after.

It then reports predicted (``Solution.predicted``: original + ΣΔ) vs actual per objective:
Spearman rank correlation (ties averaged) and mean absolute error, against after-surgery and
against finetuned, over the objective's distinct solutions; writes
``<out-dir>/<model>/calibration.json`` (docs/calibration.md; rows for both objectives, marked
with ``objective``) and prints markdown for BENCHMARKS.md.

``--budgets 0.9,0.7,0.5,0.3,0.15`` instead solves each method at those budgets (fractions of the
original table latency, the default objective and search) and prints finetuned accuracy against
measured speed-up, with whether LayerMerge at least matches the better baseline at equal measured
speed-up at each budget (issue 13's demo-frontier goal: 4 of 5). ``bench/demo_frontier.py`` is
this mode.

Every measurement is cached as it finishes in ``runs/calibration/results.json`` (git-ignored),
keyed by model and weights, solution digest and recipe (the finetune settings; the speed
settings), so a killed run resumes, the two modes share measurements, and a rerun only reports.
A finetune interrupted midway resumes from its own run state (``runs/calibration/<model>/...``).

Models: ``digits_resnet`` and ``digits_mobilenet`` by default. ``--models digits_unet`` (the
ε-loss UNet, predicted and measured ε-loss on its holdout split) works too but is left out of the
default run: its standard finetune is 300 steps of about a second each on this 2-core machine,
and its frontiers give about 20 distinct solutions, so about 2 hours.

Commands (the full runs; ``--plan`` prints the selection and a time estimate from the costs the
cache has measured, without measuring)::

    .venv/bin/python bench/calibration.py --smoke          # tiny end-to-end run, into a temp dir
    .venv/bin/python bench/calibration.py                  # writes cached_tables/*/calibration.json
    .venv/bin/python bench/calibration.py --budgets 0.9,0.7,0.5,0.3,0.15
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.benchmark import predicted_speedup  # noqa: E402
from core.dp import frontier, solve  # noqa: E402
from core.errors import InfeasibleBudgetError  # noqa: E402
from core.solution import Solution  # noqa: E402
from core.tables import Tables, read_manifest, read_tables  # noqa: E402

DEFAULT_CACHE = ROOT / "runs" / "calibration" / "results.json"
MODELS = ("digits_resnet", "digits_mobilenet")
OPTIONAL_MODELS = ("digits_unet",)  # the ε-loss UNet: supported, not in the default run
METHODS = ("layermerge", "depth", "layer")
BASELINES = ("depth", "layer")
OBJECTIVES = ("additive", "paper")
FIVE_BUDGETS = (0.9, 0.7, 0.5, 0.3, 0.15)
DATA_SPEC = "digits"
DEFAULT_POINTS = 8
SPEED_THREADS = 1
SPEED_ROUNDS = 15  # core.benchmark.DEFAULT_ROUNDS
# The standard finetune, as the family's finetune options (``family.finetune_config``): for a
# classifier bench/demo_frontier.py's recipe as BENCHMARKS.md states it (SGD Nesterov, lr 0.02,
# cosine with 5% warm-up, weight decay 5e-5, batch 64, 2 epochs over the finetune split, seed 0);
# for the UNet its family's default (Adam 4e-4, batch 64, 300 steps).
STANDARD_FINETUNE: dict[str, dict[str, Any]] = {
    "classifier": {"epochs": 2, "lr": 0.02, "weight_decay": 5e-5, "batch_size": 64, "seed": 0},
    "unet": {},
}
SMOKE = {"points": 1, "steps": 3, "rounds": 3}


# ------------------------------------------------------------------------------ pure parts


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when undefined.

    Undefined: fewer than 3 pairs, or either side constant.
    """
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs pairs, got {len(xs)} and {len(ys)} values")
    if len(xs) < 3:
        return None
    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def mean_absolute_error(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Mean of |x - y| over the pairs; None when there are none."""
    if len(xs) != len(ys):
        raise ValueError(f"mean_absolute_error needs pairs, got {len(xs)} and {len(ys)} values")
    if not xs:
        return None
    return sum(abs(a - b) for a, b in zip(xs, ys, strict=True)) / len(xs)


def spread(latencies: Sequence[float], count: int) -> list[int]:
    """Indices of about ``count`` points spread evenly by latency over [min, max].

    For each of ``count`` evenly spaced target latencies (both ends included; one target: the
    middle), the nearest point not yet taken (ties: the faster). All points when there are at
    most ``count``. Returned in increasing latency order.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    order = sorted(range(len(latencies)), key=lambda i: (latencies[i], i))
    if len(order) <= count:
        return order
    low, high = latencies[order[0]], latencies[order[-1]]
    if count == 1:
        targets = [(low + high) / 2]
    else:
        targets = [low + (high - low) * k / (count - 1) for k in range(count)]
    taken: list[int] = []
    for target in targets:
        free = [i for i in order if i not in taken]
        taken.append(min(free, key=lambda i: (abs(latencies[i] - target), latencies[i])))
    return sorted(taken, key=lambda i: (latencies[i], i))


def solution_digest(solution: Solution) -> str:
    """What makes a solution's network: its segments (with kept convs) and kept activations."""
    structure = [
        [s.start, s.end, s.kernel, bool(s.depthwise), s.stride, list(s.kept_convs)]
        for s in sorted(solution.segments, key=lambda s: s.start)
    ] + [sorted(solution.kept_activations)]
    return hashlib.sha256(json.dumps(structure).encode()).hexdigest()[:16]


def is_unchanged(solution: Solution) -> bool:
    """The original network itself: every segment one conv kept, every position an activation."""
    if not solution.segments:
        return False
    last = max(s.end for s in solution.segments)
    return all(
        s.end - s.start == 1 and tuple(s.kept_convs) == (s.end,) for s in solution.segments
    ) and set(solution.kept_activations) == set(range(last + 1))


@dataclass(frozen=True)
class Planned:
    """One solution to measure as one (objective, method) chose it: a row of the report."""

    objective: str
    method: str
    budget: float  # the budget fraction it answers (its latency / the original table latency)
    latency_ms: float
    predicted: float | None
    predicted_speedup: float
    digest: str
    solution: Solution = field(repr=False, compare=False)


def plan_frontier_points(
    tables: Tables,
    *,
    points: int = DEFAULT_POINTS,
    objectives: Sequence[str] = OBJECTIVES,
    methods: Sequence[str] = METHODS,
    frontier_of: Callable[..., list[Any]] = frontier,
) -> list[Planned]:
    """About ``points`` solutions per (objective, method), spread along its frontier by latency.

    The unchanged original (the slowest frontier point) is left out: it calibrates nothing. The
    same solution may appear under several (objective, method) pairs; measure each digest once.
    """
    original_ms = tables.original_latency_ms
    planned: list[Planned] = []
    for objective in objectives:
        for method in methods:
            solutions = [
                p.solution() for p in frontier_of(tables, method=method, objective=objective)
            ]
            solutions = [s for s in solutions if not is_unchanged(s)]
            for index in spread([s.latency_ms for s in solutions], points) if solutions else []:
                solution = solutions[index]
                planned.append(_planned(solution, objective, method, original_ms, tables.meta))
    return planned


def plan_budgets(
    tables: Tables,
    budgets: Sequence[float],
    *,
    methods: Sequence[str] = METHODS,
    objective: str = "additive",
) -> list[Planned | dict[str, Any]]:
    """Each method's solution at each budget (a dict naming it for an infeasible budget)."""
    original_ms = tables.original_latency_ms
    planned: list[Planned | dict[str, Any]] = []
    for budget in budgets:
        for method in methods:
            try:
                solution = solve(tables, budget_fraction=budget, method=method, objective=objective)
            except InfeasibleBudgetError as exc:
                planned.append({"method": method, "budget": budget, "infeasible": str(exc)})
                continue
            row = _planned(solution, objective, method, original_ms, tables.meta)
            planned.append(
                Planned(**{**row.__dict__, "budget": budget})  # the budget asked for
            )
    return planned


def distinct(planned: Iterable[Planned | dict[str, Any]]) -> dict[str, Solution]:
    """Each distinct solution once, by digest, in first-seen order."""
    found: dict[str, Solution] = {}
    for row in planned:
        if isinstance(row, Planned):
            found.setdefault(row.digest, row.solution)
    return found


def calibration_rows(
    planned: Sequence[Planned], measured: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The calibration.json rows (docs/calibration.md): one per planned (objective, method) point.

    ``measured`` maps a digest to its ``surgery``, ``finetuned`` and ``measured_speedup`` (any
    may be missing: null). ``solution`` is the digest: rows with the same one are one network,
    measured once (two methods' solutions of equal latency and prediction may still differ).
    """
    rows = []
    for row in planned:
        found = measured.get(row.digest, {})
        rows.append(
            {
                "method": row.method,
                "budget": round(row.budget, 6),
                "latency_ms": row.latency_ms,
                "predicted": row.predicted,
                "surgery": _finite(found.get("surgery")),
                "finetuned": _finite(found.get("finetuned")),
                "measured_speedup": _finite(found.get("measured_speedup")),
                "objective": row.objective,
                "solution": row.digest,
            }
        )
    return rows


def calibration_stats(rows: Sequence[Mapping[str, Any]], objective: str) -> dict[str, Any]:
    """Predicted vs after-surgery and vs finetuned over ``objective``'s distinct solutions.

    A solution several methods chose (the same ``solution`` digest) counts once.
    """
    seen: dict[Any, Mapping[str, Any]] = {}
    for index, row in enumerate(rows):
        if row.get("objective", "additive") == objective:
            seen.setdefault(row.get("solution", index), row)
    unique = list(seen.values())
    stats: dict[str, Any] = {"objective": objective, "solutions": len(unique)}
    for stage in ("surgery", "finetuned"):
        pairs = [
            (r["predicted"], r[stage])
            for r in unique
            if r.get("predicted") is not None and r.get(stage) is not None
        ]
        xs, ys = [p for p, _ in pairs], [a for _, a in pairs]
        stats[stage] = {
            "n": len(pairs),
            "spearman": spearman(xs, ys),
            "mae": mean_absolute_error(xs, ys),
            "bias": (sum(ys) - sum(xs)) / len(pairs) if pairs else None,  # actual - predicted
        }
    return stats


def budget_verdicts(
    rows: Sequence[Mapping[str, Any]], *, higher_is_better: bool = True, tolerance: float = 0.0
) -> list[dict[str, Any]]:
    """Per budget: does LayerMerge at least match the better baseline at equal measured speed-up?

    ``rows`` are five-budget rows with ``budget``, ``method``, ``finetuned`` and
    ``measured_speedup`` (or ``infeasible``). The speed-up compared at is LayerMerge's measured
    one at that budget, s. A method's quality at s is the best finetuned quality among its
    measured points (at any budget) at least as fast as s: a faster solution serves any slower
    target, and measured speed-ups need not follow the budgets. LayerMerge matches when its
    quality at s is at least each baseline's, within ``tolerance`` (points of quality); a
    baseline with no point that fast cannot match it. ``matches`` is False when only baselines
    have a measured point at the budget, None when no method has.
    """
    sign = 1.0 if higher_is_better else -1.0
    measured = [
        r
        for r in rows
        if "infeasible" not in r
        and r.get("finetuned") is not None
        and r.get("measured_speedup") is not None
    ]

    def best_at(method: str, speedup: float) -> Mapping[str, Any] | None:
        faster = [r for r in measured if r["method"] == method and r["measured_speedup"] >= speedup]
        return max(faster, key=lambda r: sign * r["finetuned"], default=None)

    verdicts = []
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        here = [r for r in measured if r["budget"] == budget]
        verdict: dict[str, Any] = {"budget": budget, "layermerge": None, "best_baseline": None}
        own = next((r for r in here if r["method"] == "layermerge"), None)
        if own is None:
            verdict["matches"] = False if here else None
            verdicts.append(verdict)
            continue
        target = own["measured_speedup"]
        lm = best_at("layermerge", target) or own
        verdict["speedup"] = target
        verdict["layermerge"] = _point(lm)
        found = [b for b in (best_at(m, target) for m in BASELINES) if b is not None]
        best = max(found, key=lambda r: sign * r["finetuned"], default=None)
        if best is None:
            verdict["matches"], verdict["margin"] = True, None
        else:
            verdict["best_baseline"] = _point(best)
            verdict["margin"] = sign * (lm["finetuned"] - best["finetuned"])
            verdict["matches"] = verdict["margin"] >= -tolerance
        verdicts.append(verdict)
    return verdicts


def _point(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "method": row["method"],
        "budget": row["budget"],
        "speedup": row["measured_speedup"],
        "quality": row["finetuned"],
    }


def _planned(
    solution: Solution,
    objective: str,
    method: str,
    original_ms: float,
    meta: Mapping[str, Any],
) -> Planned:
    return Planned(
        objective=objective,
        method=method,
        budget=solution.latency_ms / original_ms,
        latency_ms=solution.latency_ms,
        predicted=solution.predicted,
        predicted_speedup=predicted_speedup(
            solution.latency_ms, original_ms, solution=solution, meta=meta
        ),
        digest=solution_digest(solution),
        solution=solution,
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# ------------------------------------------------------------------------------ the cache


class Cache:
    """Measurements as they finish: {model key: {digest: {stage: {recipe key: result}}}}.

    Saved atomically after every measurement, so a killed run loses at most the one in progress.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, model: str, digest: str, stage: str, recipe: str) -> dict[str, Any] | None:
        return self.data.get(model, {}).get(digest, {}).get(stage, {}).get(recipe)

    def put(self, model: str, digest: str, stage: str, recipe: str, result: dict[str, Any]) -> None:
        self.data.setdefault(model, {}).setdefault(digest, {}).setdefault(stage, {})[recipe] = (
            result
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def recipe_key(settings: Mapping[str, Any]) -> str:
    """A short digest of a recipe's settings (JSON, keys sorted)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ measuring


@dataclass
class ModelRun:
    """One model's loaded state and what the run asks of it."""

    name: str
    model: Any  # core.workflows.model.LoadedModel
    tables: Tables
    table_dir: Path
    data: Any = None
    planned: list[Any] = field(default_factory=list)
    key: str = ""  # the cache's model key: name and weights digest
    loads: dict[str, Any] = field(default_factory=dict)

    @property
    def solutions(self) -> dict[str, Solution]:
        return distinct(self.planned)


def load_run(name: str) -> ModelRun:
    from core.workflows.model import load_model

    model = load_model(name)
    if getattr(model.bundle, "weights_source", "shipped") != "shipped":
        raise SystemExit(f"{name} has no shipped weights yet: run python -m core.build_cache")
    table_dir = _table_dir(name)
    digest = str(getattr(model.bundle, "weights_digest", "") or "")
    return ModelRun(
        name=name,
        model=model,
        tables=read_tables(table_dir),
        table_dir=table_dir,
        key=f"{name}@{digest[:16]}",
    )


def speed_recipe(run: ModelRun, rounds: int, backends: Sequence[str], allocator: str) -> dict:
    return {
        "batch": int(run.tables.meta.get("batch", 64)),
        "threads": SPEED_THREADS,
        "rounds": rounds,
        "backends": list(backends),
        "allocator": allocator,
        "baseline": "folded",
    }


def measure_speed(run: ModelRun, solution: Solution, settings: Mapping[str, Any]) -> dict:
    """The merged network (original weights) timed side by side against the speed baseline."""
    from core.workflows.compress import compress
    from core.workflows.measure import measure

    started = time.perf_counter()
    load_before = os.getloadavg()
    merged = compress(run.model, solution).merged
    done = measure(
        run.model,
        solution,
        compressed=merged,
        baseline=None,  # the family's fair baseline: a classifier's BN-folded original
        backends=settings["backends"],
        batch=settings["batch"],
        rounds=settings["rounds"],
        threads=settings["threads"],
    )
    by_backend = {c.backend: c.to_dict() for c in done.comparisons}
    return {
        "measured_speedup": by_backend[settings["backends"][0]]["speedup"],
        "comparisons": by_backend,
        "baseline": done.baseline,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "rounds": settings["rounds"],
        "seconds": time.perf_counter() - started,
    }


def measure_surgery(run: ModelRun, solution: Solution) -> dict:
    """The family's task figures of the merged network made from the original weights."""
    from core.workflows.compress import compress
    from core.workflows.evaluate import evaluate

    started = time.perf_counter()
    done = compress(run.model, solution)
    figures = evaluate(run.model, run.data, done.merged)
    return {
        "surgery": figures.value,
        "figures": dict(figures.figures),
        "merge_error": done.merge_error,
        "seconds": time.perf_counter() - started,
    }


def measure_finetune(run: ModelRun, solution: Solution, config: Any, folder: Path) -> dict:
    """The standard finetune of the training form (resumable in ``folder``), merged, scored."""
    from core.workflows.evaluate import evaluate
    from core.workflows.finetune import finetune

    started = time.perf_counter()
    done = finetune(run.model, solution, run.data, config, out=folder)
    if done.status != "completed" or done.merged is None:
        raise SystemExit(f"{run.name}: the finetune in {folder} did not complete ({done.status})")
    figures = evaluate(run.model, run.data, done.merged)
    return {
        "finetuned": figures.value,
        "figures": dict(figures.figures),
        "steps": done.total_steps,
        "steps_this_call": done.step - (done.resumed_from or 0),
        "train_seconds": done.train_seconds,
        "seconds": time.perf_counter() - started,
    }


def finetune_config(run: ModelRun, steps: int | None) -> Any:
    options = dict(STANDARD_FINETUNE.get(run.model.family.name, {}))
    if steps is not None:
        options["steps"] = steps
    return run.model.family.finetune_config(options, run.data)


def _table_dir(name: str) -> Path:
    for entry in read_manifest():
        if entry.get("model") == name and float(entry.get("width", 1.0)) == 1.0:
            directory = Path(entry["dir"])
            return directory if directory.is_absolute() else ROOT / "cached_tables" / directory
    raise SystemExit(f"no {name} tables in cached_tables/manifest.json")


# ------------------------------------------------------------------------------ reports


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "—" if value is None else pattern.format(value)


def _quality_unit(run: ModelRun) -> tuple[str, str]:
    task = run.model.family.task
    return (task.quality, "%" if task.higher_is_better else "")


def calibration_markdown(run: ModelRun, rows: list[dict[str, Any]], extra: Mapping) -> str:
    quality, unit = _quality_unit(run)
    lines = [
        f"**{run.name}** ({quality}; original {_fmt(extra.get('original'))}{unit}; "
        f"{extra.get('distinct', 0)} distinct solutions; finetune: {extra.get('recipe')}; "
        f"speed: {extra.get('speed')}; {extra.get('load')})",
        "",
        "| objective | solutions | Spearman pred vs surgery | MAE pred vs surgery | "
        "Spearman pred vs finetuned | MAE pred vs finetuned | mean finetuned − pred |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for objective in OBJECTIVES:
        stats = calibration_stats(rows, objective)
        if not stats["solutions"]:
            continue
        s, f = stats["surgery"], stats["finetuned"]
        lines.append(
            f"| {objective} | {stats['solutions']} | {_fmt(s['spearman'])} | "
            f"{_fmt(s['mae'])} | {_fmt(f['spearman'])} | {_fmt(f['mae'])} | {_fmt(f['bias'])} |"
        )
    lines += [
        "",
        "| objective | method | budget | predicted speed-up | measured speed-up | predicted | "
        "after surgery | finetuned |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in sorted(rows, key=lambda r: (r["objective"], r["method"], -r["budget"])):
        lines.append(
            f"| {row['objective']} | {row['method']} | {row['budget']:.0%} | "
            f"{_fmt(row.get('predicted_speedup'), '{:.2f}x')} | "
            f"{_fmt(row['measured_speedup'], '{:.2f}x')} | {_fmt(row['predicted'])} | "
            f"{_fmt(row['surgery'])} | {_fmt(row['finetuned'])} |"
        )
    return "\n".join(lines) + "\n"


def budgets_markdown(
    run: ModelRun, rows: list[dict[str, Any]], extra: Mapping, tolerance: float
) -> str:
    quality, unit = _quality_unit(run)
    lines = [
        f"**{run.name}** ({quality}; original {_fmt(extra.get('original'))}{unit}; finetune: "
        f"{extra.get('recipe')}; speed: {extra.get('speed')}; {extra.get('load')})",
        "",
        "| budget | method | predicted | after surgery | finetuned | predicted speed-up | "
        "measured speed-up | other backends |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if "infeasible" in row:
            lines.append(f"| {row['budget']:.0%} | {row['method']} | infeasible | | | | | |")
            continue
        same = f" (= {row['same_as']})" if row.get("same_as") else ""
        others = ", ".join(
            f"{backend} {value:.2f}x" for backend, value in list(row["speedups"].items())[1:]
        )
        lines.append(
            f"| {row['budget']:.0%} | {row['method']}{same} | {_fmt(row['predicted'])} | "
            f"{_fmt(row['surgery'])} | {_fmt(row['finetuned'])} | "
            f"{_fmt(row['predicted_speedup'], '{:.2f}x')} | "
            f"{_fmt(row['measured_speedup'], '{:.2f}x')} | {others or '—'} |"
        )
    verdicts = budget_verdicts(
        rows, higher_is_better=run.model.family.task.higher_is_better, tolerance=tolerance
    )
    lines += [
        "",
        "| budget | LayerMerge's speed-up there | LayerMerge at least as fast: best "
        "finetuned | better baseline at least as fast | LayerMerge at least matches it |",
        "| ---: | ---: | --- | --- | --- |",
    ]
    for v in verdicts:
        answer = {True: "yes", False: "**no**", None: "n/a (no method feasible)"}[v["matches"]]
        if v.get("margin") is not None:
            answer += f" ({v['margin']:+.2f})"
        elif v["matches"]:
            answer += " (no baseline this fast)"
        lines.append(
            f"| {v['budget']:.0%} | {_fmt(v.get('speedup'), '{:.2f}x')} | "
            f"{_verdict_point(v['layermerge'])} | {_verdict_point(v['best_baseline'])} | "
            f"{answer} |"
        )
    matched = sum(v["matches"] is True for v in verdicts)
    lines += [
        "",
        f"LayerMerge at least matches the better baseline at equal measured speed-up at "
        f"{matched} of {len(verdicts)} budgets (goal: 4 of 5; tolerance {tolerance:g}).",
    ]
    return "\n".join(lines) + "\n"


def _verdict_point(point: Mapping[str, Any] | None) -> str:
    if point is None:
        return "—"
    return (
        f"{point['quality']:.2f} ({point['method']} at {point['budget']:.0%}, "
        f"{point['speedup']:.2f}x)"
    )


def _speed_results(run: ModelRun, cache: Cache, speeds: Mapping) -> list[dict[str, Any]]:
    key = recipe_key(speeds[run.name])
    found = (cache.get(run.key, d, "speed", key) for d in run.solutions)
    return [r for r in found if r is not None]


def _baseline(run: ModelRun, cache: Cache, speeds: Mapping) -> str:
    labels = sorted({r.get("baseline", "?") for r in _speed_results(run, cache, speeds)})
    return ", ".join(labels) or "family's speed baseline"


def _load_text(run: ModelRun, cache: Cache, speeds: Mapping) -> str:
    """The 1-minute load average over the speed measurements (each recorded before and after)."""
    loads = [
        v[0]
        for r in _speed_results(run, cache, speeds)
        for v in (r.get("load_before"), r.get("load_after"))
        if v
    ]
    if not loads:
        return "machine load not recorded"
    return f"1-min load average around the timings {min(loads):.2f}–{max(loads):.2f}"


# ------------------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated, of {', '.join(MODELS + OPTIONAL_MODELS)}",
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--objectives",
        default=",".join(OBJECTIVES),
        help="comma-separated; the five-budget mode uses the first (additive)",
    )
    parser.add_argument(
        "--points", type=int, default=None, help=f"per objective and method ({DEFAULT_POINTS})"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="finetune steps instead of the standard recipe's"
    )
    parser.add_argument(
        "--budgets",
        default=None,
        help="five-budget mode: comma-separated fractions, e.g. 0.9,0.7,0.5,0.3,0.15",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="five-budget mode: quality points LayerMerge may trail the baseline and still match",
    )
    parser.add_argument("--rounds", type=int, default=None, help=f"timed rounds ({SPEED_ROUNDS})")
    parser.add_argument(
        "--backends", default="torch", help="torch[,onnxruntime]; the first gives the speed-up"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads for finetuning")
    parser.add_argument(
        "--out-dir",
        default=None,
        help="where <model>/calibration.json go (default cached_tables/; --smoke: a temp dir)",
    )
    parser.add_argument(
        "--cache", default=None, help=f"measurement cache (default {DEFAULT_CACHE.relative_to(ROOT)}"
        "; --smoke: in the out dir)",
    )  # fmt: skip
    parser.add_argument("--plan", action="store_true", help="print the selection and estimate only")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny run: {SMOKE['points']} point per objective and method, {SMOKE['steps']} "
        f"finetune steps, {SMOKE['rounds']} timed rounds, into a temp dir",
    )
    args = parser.parse_args(argv)
    models = _names(args.models, MODELS + OPTIONAL_MODELS, "model")
    methods = _names(args.methods, METHODS, "method")
    objectives = _names(args.objectives, OBJECTIVES, "objective")
    points = args.points or (SMOKE["points"] if args.smoke else DEFAULT_POINTS)
    steps = args.steps if args.steps is not None else (SMOKE["steps"] if args.smoke else None)
    rounds = args.rounds or (SMOKE["rounds"] if args.smoke else SPEED_ROUNDS)
    backends = _names(args.backends, ("torch", "onnxruntime"), "backend")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else None
    if args.out_dir:
        out_dir = Path(args.out_dir)
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="lm-calibration-smoke-"))
    elif budgets:
        out_dir = DEFAULT_CACHE.parent  # five_budgets.json does not ship
    else:
        out_dir = ROOT / "cached_tables"
    cache_path = Path(args.cache) if args.cache else (
        out_dir / "results.json" if args.smoke else DEFAULT_CACHE
    )  # fmt: skip
    runs_dir = cache_path.parent

    # process start: the allocator setting before any network is built or run
    from core.benchmark import use_heap_allocator

    allocator = "heap" if use_heap_allocator() else "default"
    if allocator != "heap":
        print("warning: no glibc, speed measured with the default allocator", file=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    from core.workflows.model import load_data

    started = time.perf_counter()
    runs = []
    for name in models:
        run = load_run(name)
        run.data = load_data(run.model, DATA_SPEC)
        if budgets:
            run.planned = plan_budgets(
                run.tables, budgets, methods=methods, objective=objectives[0]
            )
        else:
            run.planned = plan_frontier_points(
                run.tables, points=points, objectives=objectives, methods=methods
            )
        runs.append(run)
    cache = Cache(cache_path)
    recipes = {run.name: finetune_config(run, steps) for run in runs}
    speeds = {run.name: speed_recipe(run, rounds, backends, allocator) for run in runs}
    print(
        f"{len(runs)} model(s); " + ", ".join(
            f"{r.name}: {len(r.solutions)} distinct solutions" for r in runs
        ) + f"; cache {cache_path}",
        file=sys.stderr,
    )  # fmt: skip
    if args.plan:
        _print_plan(runs, cache, recipes, speeds)
        return 0
    partial = set(methods) != set(METHODS) or set(objectives) != set(OBJECTIVES)
    if not budgets and partial and out_dir.resolve() == (ROOT / "cached_tables").resolve():
        print(
            "warning: a calibration.json of only some methods or objectives goes to "
            "cached_tables/; pass --out-dir to keep the shipped files",
            file=sys.stderr,
        )

    # 1. speed, for every model before any training in this process
    for run in runs:
        recipe = recipe_key(speeds[run.name])
        run.loads["before"] = list(os.getloadavg())
        for digest, solution in run.solutions.items():
            if cache.get(run.key, digest, "speed", recipe) is None:
                result = measure_speed(run, solution, speeds[run.name])
                cache.put(run.key, digest, "speed", recipe, result)
                _progress(run, digest, "speed", f"{result['measured_speedup']:.2f}x", result)
        run.loads["after"] = list(os.getloadavg())
    # 2. after surgery
    for run in runs:
        for digest, solution in run.solutions.items():
            if cache.get(run.key, digest, "surgery", "original") is None:
                result = measure_surgery(run, solution)
                cache.put(run.key, digest, "surgery", "original", result)
                _progress(run, digest, "surgery", f"{result['surgery']:.2f}", result)
    # 3. the standard finetune
    for run in runs:
        config = recipes[run.name]
        recipe = recipe_key(config.to_dict())
        for digest, solution in run.solutions.items():
            if cache.get(run.key, digest, "finetune", recipe) is None:
                folder = runs_dir / run.name / f"{digest}-{recipe}"
                result = measure_finetune(run, solution, config, folder)
                cache.put(run.key, digest, "finetune", recipe, result)
                _progress(run, digest, "finetune", f"{result['finetuned']:.2f}", result)

    for run in runs:
        measured = _measured(run, cache, recipes, speeds)
        extra = {
            "original": _original(run),
            "distinct": len(run.solutions),
            "recipe": _recipe_text(recipes[run.name], steps=steps),
            "speed": f"batch {speeds[run.name]['batch']}, 1 thread, {rounds} rounds, "
            f"{allocator} allocator, {backends[0]} vs the {_baseline(run, cache, speeds)}",
            "load": _load_text(run, cache, speeds),
        }
        if budgets:
            rows = _budget_rows(run, measured)
            print(budgets_markdown(run, rows, extra, args.tolerance))
            target = out_dir / run.name / "five_budgets.json"
            _write_json(target, {"rows": rows, "loads": run.loads, **extra})
        else:
            rows = calibration_rows(run.planned, measured)
            target = out_dir / run.name / "calibration.json"
            _write_json(target, rows)
            for row, plan in zip(rows, run.planned, strict=True):
                row["predicted_speedup"] = plan.predicted_speedup  # for the report only
            print(calibration_markdown(run, rows, extra))
        print(f"wrote {target}", file=sys.stderr)
    _print_costs(runs, cache, time.perf_counter() - started)
    return 0


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return names


def _measured(run: ModelRun, cache: Cache, recipes: Mapping, speeds: Mapping) -> dict[str, dict]:
    finetune_recipe = recipe_key(recipes[run.name].to_dict())
    speed_recipe_key = recipe_key(speeds[run.name])
    found = {}
    for digest in run.solutions:
        speed = cache.get(run.key, digest, "speed", speed_recipe_key) or {}
        surgery = cache.get(run.key, digest, "surgery", "original") or {}
        tuned = cache.get(run.key, digest, "finetune", finetune_recipe) or {}
        found[digest] = {
            "measured_speedup": speed.get("measured_speedup"),
            "speedups": {b: c["speedup"] for b, c in speed.get("comparisons", {}).items()},
            "surgery": surgery.get("surgery"),
            "finetuned": tuned.get("finetuned"),
        }
    return found


def _budget_rows(run: ModelRun, measured: Mapping[str, Mapping]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    for plan in run.planned:
        if not isinstance(plan, Planned):
            rows.append(dict(plan))
            continue
        found = measured.get(plan.digest, {})
        label = f"{plan.method}@{plan.budget:g}"
        rows.append(
            {
                "method": plan.method,
                "budget": plan.budget,
                "latency_ms": plan.latency_ms,
                "predicted": plan.predicted,
                "predicted_speedup": plan.predicted_speedup,
                "surgery": _finite(found.get("surgery")),
                "finetuned": _finite(found.get("finetuned")),
                "measured_speedup": _finite(found.get("measured_speedup")),
                "speedups": dict(found.get("speedups", {})),
                "digest": plan.digest,
                **({"same_as": first[plan.digest]} if plan.digest in first else {}),
            }
        )
        first.setdefault(plan.digest, label)
    return rows


def _original(run: ModelRun) -> float | None:
    from core.workflows.evaluate import evaluate

    return evaluate(run.model, run.data).value


def _recipe_text(config: Any, *, steps: int | None) -> str:
    settings = config.to_dict()
    parts = [f"{k} {settings[k]}" for k in ("optimizer", "lr", "weight_decay", "batch_size")
             if k in settings]  # fmt: skip
    if steps is not None or settings.get("steps"):
        parts.append(f"{settings.get('steps', steps)} steps")
    elif "epochs" in settings:
        parts.append(f"{settings['epochs']} epochs")
    return ", ".join(parts)


def _progress(run: ModelRun, digest: str, stage: str, value: str, result: Mapping) -> None:
    print(
        f"{run.name} {digest} {stage}: {value} ({result['seconds']:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _costs(runs: Sequence[ModelRun], cache: Cache) -> dict[str, dict[str, float | None]]:
    """Per model, from every measurement in the cache: mean seconds per timed round (speed),
    per solution (surgery) and per finetune step."""
    costs = {}
    for run in runs:
        per_round, surgery, per_step = [], [], []
        for results in cache.data.get(run.key, {}).values():
            for result in results.get("speed", {}).values():
                if result.get("rounds"):
                    per_round.append(result["seconds"] / result["rounds"])
            surgery += [r["seconds"] for r in results.get("surgery", {}).values()]
            for result in results.get("finetune", {}).values():
                if result.get("steps_this_call"):
                    per_step.append(result["train_seconds"] / result["steps_this_call"])
        costs[run.name] = {
            "speed_round_s": _mean(per_round),
            "surgery_s": _mean(surgery),
            "finetune_step_s": _mean(per_step),
        }
    return costs


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _print_costs(runs: Sequence[ModelRun], cache: Cache, elapsed: float) -> None:
    print(f"run took {elapsed:.0f} s in all", file=sys.stderr)
    for name, cost in _costs(runs, cache).items():
        print(
            f"{name}: speed {_fmt(cost['speed_round_s'], '{:.2f}')} s per timed round, surgery "
            f"{_fmt(cost['surgery_s'], '{:.1f}')} s per solution, finetune "
            f"{_fmt(cost['finetune_step_s'], '{:.3f}')} s per step",
            file=sys.stderr,
        )


def _print_plan(runs: Sequence[ModelRun], cache: Cache, recipes: Mapping, speeds: Mapping) -> None:
    """The selection, and the time still needed at the costs this cache has measured."""
    costs = _costs(runs, cache)
    total = 0.0
    for run in runs:
        print(f"{run.name}: {len(run.solutions)} distinct solutions")
        for plan in run.planned:
            if isinstance(plan, Planned):
                print(
                    f"  {plan.objective:8} {plan.method:10} {plan.budget:6.1%} "
                    f"predicted {_fmt(plan.predicted)} -> {plan.digest}"
                )
            else:
                print(f"  {plan['method']:10} {plan['budget']:.0%} infeasible")
        config, speed = recipes[run.name], speeds[run.name]
        steps, cost = _total_steps(run, config), costs[run.name]
        if None in (steps, *cost.values()):
            print("  no measured costs in this cache yet: run --smoke first for an estimate")
            continue
        finetune_key, speed_key = recipe_key(config.to_dict()), recipe_key(speed)
        todo = {
            "speed": sum(cache.get(run.key, d, "speed", speed_key) is None for d in run.solutions),
            "surgery": sum(
                cache.get(run.key, d, "surgery", "original") is None for d in run.solutions
            ),
            "finetune": sum(
                cache.get(run.key, d, "finetune", finetune_key) is None for d in run.solutions
            ),
        }
        per = {
            "speed": cost["speed_round_s"] * speed["rounds"],
            "surgery": cost["surgery_s"],
            "finetune": cost["finetune_step_s"] * steps,
        }
        seconds = sum(per[k] * todo[k] for k in per)
        total += seconds
        print(
            f"  per solution about {per['speed']:.0f} s speed, {per['surgery']:.0f} s surgery, "
            f"{per['finetune']:.0f} s finetune ({steps} steps); still to do "
            f"{todo['speed']}/{todo['surgery']}/{todo['finetune']}: about {seconds / 60:.0f} min"
        )
    print(f"estimate at this cache's measured costs: about {total / 60:.0f} min")


def _total_steps(run: ModelRun, config: Any) -> int | None:
    settings = config.to_dict()
    if settings.get("steps"):
        return int(settings["steps"])
    if "epochs" in settings:
        # core.finetune drops the last incomplete batch of an epoch
        per_epoch = max(1, len(run.data.finetune) // settings.get("batch_size", 64))
        return per_epoch * int(settings["epochs"])
    return None


if __name__ == "__main__":
    sys.exit(main())
