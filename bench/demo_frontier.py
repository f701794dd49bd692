"""Benchmark: the demo frontier, test accuracy vs measured speed-up for all three methods.

Run: ``.venv/bin/python bench/demo_frontier.py [--epochs 2] [--budgets 0.7 0.5 0.35]``

Our own small version of the paper's Tables 1-3 on the digits demo task: for both demo models
(their shipped weights and shipped tables, ``cached_tables/manifest.json``), every budget and every
method (``layermerge``, ``depth`` = Kim23, ``layer`` = layer pruning only), the DP's solution is
cut into its training form, finetuned on the finetune split with the same recipe
(core.finetune), merged, and evaluated on the test split. Identical solutions from different
methods are finetuned once.

Speed is measured in a separate pass, ``--measure {default,heap}``, in a fresh process that
trains nothing: glibc's allocator state (changed by any training in the process) moves CPU eager
timings by up to 2x (core.benchmark.use_heap_allocator), so every row is measured under the same,
stated allocator. Each solution is merged from the original weights (speed does not depend on the
values) and timed side by side against the original (BN folded) at the tables' batch, one thread,
on torch eager and ONNX Runtime.

Results go to ``runs/frontier/results.json`` (git-ignored) as they finish, so a killed run resumes;
the markdown table for BENCHMARKS.md is printed at the end. The full sequence::

    .venv/bin/python bench/demo_frontier.py --budgets 0.85 0.7 0.6 0.5 0.35
    .venv/bin/python bench/demo_frontier.py --measure heap
    .venv/bin/python bench/demo_frontier.py --measure default
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import (  # noqa: E402
    compare,
    folded_original,
    predicted_speedup,
    use_heap_allocator,
)
from core.chain import trace_chain  # noqa: E402
from core.data import load_data  # noqa: E402
from core.dp import solve  # noqa: E402
from core.errors import InfeasibleBudgetError  # noqa: E402
from core.finetune import FinetuneConfig, evaluate, finetune  # noqa: E402
from core.merge import merge, merge_model  # noqa: E402
from core.models import build_model  # noqa: E402
from core.surgery import build_training_network  # noqa: E402
from core.tables import read_manifest, read_tables  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "frontier"
MODELS = ("digits_resnet", "digits_mobilenet")
METHODS = ("layermerge", "depth", "layer")
BUDGETS = (0.7, 0.5, 0.35)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--epochs", type=int, default=2, help="finetune epochs per solution")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9, help="alternating timed rounds")
    parser.add_argument("--out", default=str(WORK / "results.json"))
    parser.add_argument(
        "--measure",
        choices=("default", "heap"),
        default=None,
        help="only measure the speed of every finished row, with this allocator",
    )
    parser.add_argument("--report", action="store_true", help="only print the saved results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        print(_markdown(json.loads(Path(args.out).read_text())))
        return 0
    if args.measure:
        return _measure_all(Path(args.out), args.measure, rounds=args.rounds)
    config = FinetuneConfig(epochs=args.epochs, lr=args.lr, weight_decay=5e-5, batch_size=64)
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    data = load_data("digits")
    for name in args.models:
        model_results = results.setdefault(name, {"rows": {}})
        bundle = build_model(name)
        if bundle.weights_source != "shipped":
            raise SystemExit(f"{name} has no shipped weights yet: run python -m core.build_cache")
        chain = trace_chain(bundle.model, bundle.input_size)
        tables = read_tables(_table_dir(name))
        batch = int(tables.meta.get("batch", 64))
        model_results.update(
            original_accuracy=evaluate(bundle.model, data.test).accuracy,
            original_depth=len(chain.convs),
            table_batch=batch,
            table_original_ms=tables.original_latency_ms,
            threads=args.threads,
            finetune=config.to_dict(),
            weights_digest=bundle.weights_digest,
            tables_digest=tables.digest,
        )
        done_by_signature = {
            row["signature"]: row for row in model_results["rows"].values() if "signature" in row
        }
        for fraction in args.budgets:
            for method in args.methods:
                key = f"{method}@{fraction:g}"
                if key in model_results["rows"]:
                    continue
                started = time.perf_counter()
                try:
                    solution = solve(tables, budget_fraction=fraction, method=method)
                except InfeasibleBudgetError as exc:
                    model_results["rows"][key] = {
                        "method": method,
                        "budget": fraction,
                        "infeasible": str(exc),
                    }
                    _save(out, results)
                    continue
                signature = json.dumps(
                    [[s.start, s.end, list(s.kept_convs)] for s in solution.segments]
                    + [list(solution.kept_activations)]
                )
                if signature in done_by_signature:
                    row = {**done_by_signature[signature], "method": method, "budget": fraction}
                    row["same_as"] = done_by_signature[signature]["key"]
                else:
                    row = _finetune_and_evaluate(bundle, chain, solution, data, config)
                    row.update(key=key, signature=signature, method=method, budget=fraction)
                    row["predicted_speedup"] = predicted_speedup(
                        solution.latency_ms, tables.original_latency_ms
                    )
                    row["seconds"] = time.perf_counter() - started
                    done_by_signature[signature] = row
                model_results["rows"][key] = row
                _save(out, results)
                print(
                    f"{name} {key}: acc {row['accuracy']:.2f}% (predicted speed-up "
                    f"{row['predicted_speedup']:.2f}x)",
                    file=sys.stderr,
                )
    print(_markdown(results))
    return 0


def _finetune_and_evaluate(
    bundle: Any, chain: Any, solution: Any, data: Any, config: FinetuneConfig
) -> dict[str, Any]:
    training = build_training_network(bundle.model, chain, solution)
    surgery = evaluate(training, data.test).accuracy
    result = finetune(training, data.finetune, config=config)
    merged = merge(result.network, chain, solution)
    accuracy = evaluate(merged, data.test)
    return {
        "accuracy": accuracy.accuracy,
        "accuracy_after_surgery": surgery,
        "test_loss": accuracy.loss,
        "table_latency_ms": solution.latency_ms,
        "depth": merged.depth(),
        "pruned_convs": len(chain.convs) - len(solution.kept_convs),
        "finetune_s": result.elapsed_s,
    }


def _measure_all(out: Path, allocator: str, *, rounds: int) -> int:
    """Time every finished row's merged network against the original, under one allocator."""
    if allocator == "heap" and not use_heap_allocator():
        raise SystemExit("the heap allocator setting needs glibc")
    results = json.loads(out.read_text())
    for name, model in results.items():
        bundle = build_model(name)
        chain = trace_chain(bundle.model, bundle.input_size)
        tables = read_tables(_table_dir(name))
        baseline = folded_original(bundle.model, chain)
        measured: dict[str, Any] = {}
        for key, row in model["rows"].items():
            if "infeasible" in row:
                continue
            if row["signature"] not in measured:
                solution = solve(tables, budget_fraction=row["budget"], method=row["method"])
                merged = merge_model(bundle.model, chain, solution)
                comparisons = compare(
                    baseline,
                    merged,
                    input_shape=chain.input_shape,
                    batch=model["table_batch"],
                    rounds=rounds,
                )
                measured[row["signature"]] = {c.backend: c.to_dict() for c in comparisons}
                print(
                    f"{name} {key} ({allocator}): "
                    + ", ".join(f"{c.backend} {c.speedup:.2f}x" for c in comparisons),
                    file=sys.stderr,
                )
            row.setdefault("speed", {})[allocator] = measured[row["signature"]]
            row.pop("speedup", None)  # from an older run that measured after training
        _save(out, results)
    print(_markdown(results))
    return 0


def _table_dir(name: str) -> Path:
    for entry in read_manifest():
        if entry.get("model") == name and float(entry.get("width", 1.0)) == 1.0:
            directory = Path(entry["dir"])
            return directory if directory.is_absolute() else ROOT / "cached_tables" / directory
    raise SystemExit(f"no {name} tables in cached_tables/manifest.json")


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def _markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, model in results.items():
        lines += [
            f"**{name}** (original: test accuracy {model['original_accuracy']:.2f}%, depth "
            f"{model['original_depth']}; speed at batch {model['table_batch']}, "
            f"{model['threads']} thread)",
            "",
            "| budget | method | depth | pruned convs | after surgery | finetuned test acc | "
            "predicted | torch (heap) | torch (default) | ONNX Runtime |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows = sorted(model["rows"].values(), key=lambda r: (-r["budget"], r["method"]))
        for row in rows:
            if "infeasible" in row:
                lines.append(
                    f"| {row['budget']:.0%} | {row['method']} | infeasible | | | | | | | |"
                )
                continue
            speed = row.get("speed", {})

            def cell(allocator: str, backend: str, speed: dict[str, Any] = speed) -> str:
                value = speed.get(allocator, {}).get(backend, {}).get("speedup")
                return f"{value:.2f}x" if value else "-"

            same = f" (= {row['same_as']})" if row.get("same_as") else ""
            lines.append(
                f"| {row['budget']:.0%} | {row['method']}{same} | {row['depth']} | "
                f"{row['pruned_convs']} | {row['accuracy_after_surgery']:.2f}% | "
                f"{row['accuracy']:.2f}% | {row['predicted_speedup']:.2f}x | "
                f"{cell('heap', 'torch')} | {cell('default', 'torch')} | "
                f"{cell('heap', 'onnxruntime') if 'heap' in speed else cell('default', 'onnxruntime')} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
