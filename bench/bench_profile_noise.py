"""Benchmark: a table profiled on a busy machine stays right, or says it is not.

Profiles one model twice in this process, under the profiling protocol (core.latency: one thread,
the heap allocator setting, interleaved rounds, a reference op that finds slow phases):

1. quietly (run it on an otherwise idle machine: the load average is recorded);
2. with ``--busy`` processes (default 2) running beside it, each a one-thread torch matmul loop
   (``--busy-kind torch``) or a pure-Python spin (``--busy-kind spin``), started a few seconds
   before and stopped right after (by their own process ids).

Both tables share one importance table (a demo model's shipped one; for a registry model the
data-light distortion mode on seeded weights, computed once), so the DP's picks differ only by
latency. It reports, busy against quiet:

- the keep-everything table sum, the measured network and what the structure leaves unexplained,
  and the noise each run found (slow samples, re-timed, unresolved);
- how far the busy table's keep-everything sum and network move (ratio), and the entries' median
  and worst ratio;
- the LayerMerge picks at budgets 90% ... 40% of each table's own keep-everything latency: whether
  the busy table picks the same solution, and how much faster the quiet table predicts its pick
  to be than the busy table's pick (the speed the noise cost, judged by the quiet table);
- whether the busy table's warning fired (core.speed.table_warning).

Goal (issue 12): the busy table within 10% of the quiet one, or the warning raised.

Run (about 3 min for digits_mobilenet, 4-5 min for mobilenet_v2 at 224 on a 2-core machine)::

    .venv/bin/python bench/bench_profile_noise.py [--model digits_mobilenet] [--busy 2]
    .venv/bin/python bench/bench_profile_noise.py --model mobilenet_v2 --width 1.4 --input-size 224
    .venv/bin/python bench/bench_profile_noise.py --smoke      # seconds: proves the script runs

Results go to ``runs/noise/<model>.json`` and print as markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import TimingSettings  # noqa: E402
from core.dp import solve  # noqa: E402
from core.errors import InfeasibleBudgetError  # noqa: E402
from core.files import library_versions  # noqa: E402
from core.importance import ImportanceConfig, estimate_importance  # noqa: E402
from core.latency import LatencyConfig, cpu_model, measure_latency  # noqa: E402
from core.solution import Solution, SolutionSegment  # noqa: E402
from core.speed import predict_speed, table_warning  # noqa: E402
from core.table_store import update_meta  # noqa: E402
from core.tables import Tables, read_meta, read_tables  # noqa: E402
from core.workflows.model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "noise"
CACHED = ROOT / "cached_tables"
BUDGETS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
BUSY_CODE = {
    "torch": "import torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\n"
    "while True:\n    a = (a @ a).tanh_()",
    "spin": "while True:\n    pass",
}
BUSY_WARMUP_S = 3.0  # the busy processes import torch and reach their loop first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_mobilenet")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 demos, 1 others")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the 2nd run")
    parser.add_argument("--busy-kind", choices=sorted(BUSY_CODE), default="torch")
    parser.add_argument("--min-run-time", type=float, default=LatencyConfig().min_run_time)
    parser.add_argument("--rounds", type=int, default=LatencyConfig().rounds)
    parser.add_argument("--smoke", action="store_true", help="tiny settings: prove it runs")
    parser.add_argument("--out", default=str(WORK))
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.min_run_time, args.rounds = "digits_resnet", 0.01, 2
    TimingSettings(allocator="heap").apply()
    demo = (CACHED / args.model / "importance.csv").is_file() and args.input_size is None
    batch = args.batch or (64 if demo and not args.smoke else 1 if not demo else 2)
    model = load_model(args.model, width=args.width, input_size=args.input_size)
    name = args.model + (f"-{args.width:g}" if args.width != 1.0 else "")
    work = Path(args.out) / name
    shutil.rmtree(work, ignore_errors=True)
    config = LatencyConfig(
        batch=batch, threads=1, min_run_time=args.min_run_time, rounds=args.rounds
    )
    runs: dict[str, Any] = {}
    for label, busy in (("quiet", 0), ("busy", args.busy)):
        directory = work / label
        processes = _start_busy(busy, args.busy_kind)
        try:
            load_before = _load()
            tic = time.perf_counter()
            table = measure_latency(model.bundle, model.traced, config, out=directory)
            seconds = time.perf_counter() - tic
            load_after = _load()
        finally:
            _stop(processes)
        _importance(model, directory, work / "quiet", demo=demo)
        runs[label] = {
            "seconds": round(seconds, 1),
            "busy_processes": busy,
            "load_average": [load_before, load_after],
            "meta": read_meta(directory),
            "entries": {str(e.key): e.latency_ms for e in table.entries},
        }
        print(f"{label}: profiled in {seconds:.0f} s (load {load_before} -> {load_after})")
    result = _compare(runs, work)
    result.update(
        {
            "model": name,
            "batch": batch,
            "busy_kind": args.busy_kind,
            "smoke": args.smoke,
            "machine": cpu_model(),
            "versions": library_versions(),
        }
    )
    out = Path(args.out) / f"{name}{'-smoke' if args.smoke else ''}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(_markdown(result))
    return 0


def _importance(model: Any, directory: Path, quiet_dir: Path, *, demo: bool) -> None:
    """The shared importance table: copied from the shipped one or from the quiet run's."""
    source = CACHED / model.name if demo else quiet_dir
    if not demo and not (quiet_dir / "importance.csv").is_file():
        from bench_speedup import _calibration_folder

        folder = _calibration_folder(ROOT / "runs" / "speedup" / "calibration1000")
        estimate_importance(
            model.bundle,
            model.traced,
            f"folder:{folder},resize={model.bundle.input_size}",
            ImportanceConfig(mode="distortion", calibration_images=4),
            out=quiet_dir,
            jobs=1,
            threads=1,
        )
    if source.resolve() == directory.resolve():
        return
    shutil.copy(source / "importance.csv", directory / "importance.csv")
    fields = {k: v for k, v in read_meta(source).items() if k.startswith(("importance", "data"))}
    update_meta(directory, model.traced.digest(), fields, owner="importance")


def _compare(runs: dict[str, Any], work: Path) -> dict[str, Any]:
    quiet, busy = read_tables(work / "quiet"), read_tables(work / "busy")
    ratios = [
        runs["busy"]["entries"][key] / value
        for key, value in runs["quiet"]["entries"].items()
        if value > 0 and runs["busy"]["entries"].get(key)
    ]
    picks = []
    for fraction in BUDGETS:
        try:
            quiet_pick = solve(quiet, budget_fraction=fraction)
            busy_pick = solve(busy, budget_fraction=fraction)
        except InfeasibleBudgetError:
            continue
        # both picks judged by the quiet table (the one to trust)
        quiet_speed = predict_speed(quiet.meta, quiet_pick).speedup
        busy_speed = predict_speed(quiet.meta, _relatency(busy_pick, quiet)).speedup
        picks.append(
            {
                "budget": fraction,
                "same_pick": _segments(quiet_pick) == _segments(busy_pick),
                "quiet_pick_speedup": quiet_speed,
                "busy_pick_speedup_on_quiet_table": busy_speed,
                "speed_lost": busy_speed / quiet_speed - 1,
            }
        )
    summary: dict[str, Any] = {}
    for label, table in (("quiet", quiet), ("busy", busy)):
        meta = table.meta
        summary[label] = {
            "seconds": runs[label]["seconds"],
            "busy_processes": runs[label]["busy_processes"],
            "load_average": runs[label]["load_average"],
            "keep_everything_ms": table.original_latency_ms,
            "network_ms": meta.get("network_folded_latency_ms"),
            "unexplained": meta.get("additivity_unexplained"),
            "noise": meta.get("latency_noise"),
            "warning": table_warning(meta),
        }
    sum_ratio = busy.original_latency_ms / quiet.original_latency_ms
    network_ratio = _ratio(summary["busy"]["network_ms"], summary["quiet"]["network_ms"])
    moved = max(abs(sum_ratio - 1), abs((network_ratio or 1) - 1))
    return {
        **summary,
        "keep_everything_ratio": sum_ratio,
        "network_ratio": network_ratio,
        "entry_ratio_median": statistics.median(ratios) if ratios else None,
        "entry_ratio_worst": max(ratios, key=lambda r: abs(r - 1)) if ratios else None,
        "picks": picks,
        "goal_met": moved <= 0.1 or summary["busy"]["warning"] is not None,
    }


def _relatency(solution: Solution, tables: Tables) -> Solution:
    """``solution`` with the segment latencies of ``tables``."""
    latency = {e.key: e.latency_ms for e in tables.entries}
    segments = tuple(
        SolutionSegment(
            s.start, s.end, s.kernel, s.depthwise, s.stride, s.kept_convs, latency[s.key]
        )
        for s in solution.segments
    )
    return Solution(
        method=solution.method,
        budget_ms=solution.budget_ms,
        latency_ms=sum(s.latency_ms for s in segments),
        importance=solution.importance,
        segments=segments,
        kept_activations=solution.kept_activations,
    )


def _segments(solution: Solution) -> list[tuple]:
    return [(*s.key, s.kept_convs) for s in solution.segments]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _start_busy(count: int, kind: str) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-c", BUSY_CODE[kind]], env=env) for _ in range(count)
    ]
    if processes:
        time.sleep(BUSY_WARMUP_S)
    return processes


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:  # only the processes this script started, by their ids
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _markdown(result: dict[str, Any]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return spec.format(value) if isinstance(value, int | float) else "-"

    lines = [
        f"**{result['model']}** (batch {result['batch']}, {result['busy']['busy_processes']} "
        f"busy {result['busy_kind']} processes beside the second run)",
        "",
        "| run | load avg | keep-everything ms | network ms | unexplained | slow samples | "
        "re-timed | unresolved | warning |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for label in ("quiet", "busy"):
        run = result[label]
        noise = run["noise"] or {}
        lines.append(
            f"| {label} | {run['load_average']} | {fmt(run['keep_everything_ms'], '{:.3f}')} | "
            f"{fmt(run['network_ms'], '{:.3f}')} | {fmt(run['unexplained'], '{:+.1%}')} | "
            f"{noise.get('slow_samples', '-')} | {noise.get('remeasured', '-')} | "
            f"{noise.get('unresolved', '-')} | {'yes' if run['warning'] else 'no'} |"
        )
    lines += [
        "",
        f"busy / quiet: keep-everything {fmt(result['keep_everything_ratio'], '{:.3f}')}, "
        f"network {fmt(result['network_ratio'], '{:.3f}')}, entries median "
        f"{fmt(result['entry_ratio_median'], '{:.3f}')} (worst "
        f"{fmt(result['entry_ratio_worst'], '{:.3f}')}); goal (within 10% or warned): "
        f"{'met' if result['goal_met'] else 'NOT met'}",
        "",
        "| budget | same pick | quiet pick (predicted) | busy pick on the quiet table | lost |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for pick in result["picks"]:
        lines.append(
            f"| {pick['budget']:.0%} | {'yes' if pick['same_pick'] else 'no'} | "
            f"{pick['quiet_pick_speedup']:.2f}x | "
            f"{pick['busy_pick_speedup_on_quiet_table']:.2f}x | {pick['speed_lost']:+.1%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
