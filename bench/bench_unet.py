"""Benchmark: the compressed demo diffusion UNet at three budgets against the original.

Run: ``.venv/bin/python bench/bench_unet.py [--budgets 0.8 0.65 0.5] [--steps 600]``

For each budget (a fraction of the original table latency of ``cached_tables/digits_unet``):

1. the DP (LayerMerge, and the depth-only baseline where it is feasible) picks a solution;
2. its training form is finetuned on the digits ``train`` split with the ε-loss (``--steps`` Adam
   steps at lr 4e-4, batch 64, EMA ``--ema``: the paper's DDPM recipe, 100K steps with EMA
   0.9999, scaled to a CPU); the original gets the same finetune as a control;
3. the finetuned training form is merged; merged == training form is checked on a random input;
4. the original and the merged UNet are timed SIDE BY SIDE in this one process, alternating:
   full DDIM sampling (``--count`` images x ``--sampling-steps`` steps, the whole batch at once)
   and one UNet step at batch 64. Ratios are reported, not absolute times;
5. sample quality: digits-FD (Fréchet distance between the features our own digits classifier,
   ``digits_resnet``, gives to ``--fd-samples`` generated images and to the real test digits).
   This is NOT the Inception FID of the paper (nothing can be downloaded here).

Results print as a markdown table for BENCHMARKS.md and are written to ``runs/unet/results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.benchmark import predicted_speedup  # noqa: E402
from core.dp import solve  # noqa: E402
from core.errors import InfeasibleBudgetError  # noqa: E402
from core.families.unet.chain import trace_unet  # noqa: E402
from core.families.unet.data import load_diffusion_digits  # noqa: E402
from core.families.unet.export import count_convs  # noqa: E402
from core.families.unet.finetune import UNetFinetuneConfig, finetune_unet  # noqa: E402
from core.families.unet.flow import apply_unet_solution  # noqa: E402
from core.families.unet.latency import UNetForward  # noqa: E402
from core.families.unet.loss import epsilon_loss  # noqa: E402
from core.families.unet.merge import merge_unet  # noqa: E402
from core.families.unet.quality import digits_fd  # noqa: E402
from core.families.unet.sampling import ddim_sample  # noqa: E402
from core.families.unet.unet import build_unet  # noqa: E402
from core.tables import read_tables  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "cached_tables" / "digits_unet"
WORK = ROOT / "runs" / "unet"


def side_by_side(original: torch.nn.Module, merged: torch.nn.Module, args: Any) -> dict[str, float]:
    """Alternate original and merged timings in one process; medians and their ratio."""

    def sample(unet: torch.nn.Module) -> float:
        started = time.perf_counter()
        ddim_sample(unet, args.count, steps=args.sampling_steps, seed=1, batch_size=args.count)
        return time.perf_counter() - started

    def one_step(unet: torch.nn.Module) -> float:
        forward = UNetForward(unet).eval()
        x = torch.randn(64, *sample_shape(unet))
        with torch.no_grad():
            started = time.perf_counter()
            for _ in range(10):
                forward(x)
        return (time.perf_counter() - started) / 10

    for unet in (original, merged):  # warm-up: allocator, oneDNN primitive caches
        ddim_sample(unet, args.count, steps=2, seed=1, batch_size=args.count)
    times: dict[str, list[float]] = {"orig_s": [], "comp_s": [], "orig_step": [], "comp_step": []}
    for _ in range(args.repeats):
        times["orig_s"].append(sample(original))
        times["comp_s"].append(sample(merged))
        times["orig_step"].append(one_step(original))
        times["comp_step"].append(one_step(merged))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "sampling_original_s": medians["orig_s"],
        "sampling_compressed_s": medians["comp_s"],
        "sampling_speedup": medians["orig_s"] / medians["comp_s"],
        "step_original_ms": 1000 * medians["orig_step"],
        "step_compressed_ms": 1000 * medians["comp_step"],
        "step_speedup": medians["orig_step"] / medians["comp_step"],
    }


def sample_shape(unet: torch.nn.Module) -> tuple[int, int, int]:
    size = int(unet.config.sample_size)
    return int(unet.config.in_channels), size, size


def finetune_config(args: Any) -> UNetFinetuneConfig:
    """The paper's DDPM finetune (Adam lr 4e-4, EMA) at ``--steps`` steps and ``--ema`` decay."""
    return UNetFinetuneConfig(steps=args.steps, eval_every=args.steps, ema_decay=args.ema or None)


def fd_of(unet: torch.nn.Module, args: Any) -> float:
    images = ddim_sample(unet, args.fd_samples, steps=args.sampling_steps, seed=0)
    return digits_fd(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    parser.add_argument("--methods", nargs="+", default=["layermerge", "depth"])
    parser.add_argument("--steps", type=int, default=600, help="finetune steps per solution")
    parser.add_argument("--count", type=int, default=64, help="images per timed sampling call")
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fd-samples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--ema", type=float, default=0.999, help="EMA decay of the finetunes (0: none)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tables = read_tables(TABLES)
    bundle = build_unet("digits_unet")
    original = bundle.model.eval()
    uchain = trace_unet(original)
    data = load_diffusion_digits()
    reference = {
        "holdout_loss": epsilon_loss(original, data.holdout, seed=0),
        "digits_fd": fd_of(original, args),
        "convs": count_convs(original),
        "params": sum(p.numel() for p in original.parameters()),
    }
    floor = digits_fd(data.holdout)  # real held-out digits against the test split
    # Control: the original finetuned as long as each compressed UNet, so that a change in FD
    # is not the extra finetuning's doing.
    control = copy.deepcopy(original)
    finetune_unet(control, data, finetune_config(args))
    reference["finetuned_holdout_loss"] = epsilon_loss(control, data.holdout, seed=0)
    reference["finetuned_digits_fd"] = fd_of(control, args)
    del control
    rows: list[dict[str, Any]] = []
    for budget in args.budgets:
        for method in args.methods:
            try:
                solution = solve(tables, budget_fraction=budget, method=method)
            except InfeasibleBudgetError as exc:
                rows.append({"budget": budget, "method": method, "infeasible": str(exc)})
                print(f"{method} @ {budget:.0%}: infeasible", file=sys.stderr, flush=True)
                continue
            result = apply_unet_solution(original, uchain, solution)
            training = result.training_network
            before = epsilon_loss(training, data.holdout, seed=0)
            tic = time.perf_counter()
            finetune_unet(training, data, finetune_config(args))
            finetune_s = time.perf_counter() - tic
            merged = merge_unet(training)
            x = torch.randn(4, *sample_shape(original))
            t = torch.tensor([0, 250, 600, 999])
            with torch.no_grad():
                a, b = training(x, t).sample, merged(x, t).sample
            row = {
                "budget": budget,
                "method": method,
                # the table covers 50% of a UNet step (attention, norm1, skips are not in it):
                # predicted on the whole step by the one speed model (core.speed)
                "predicted_speedup": predicted_speedup(
                    solution.latency_ms,
                    tables.original_latency_ms,
                    solution=solution,
                    meta=tables.meta,
                ),
                "predicted_table_ratio": tables.original_latency_ms / solution.latency_ms,
                "merged_blocks": sum(
                    1 for s in result.structure["blocks"].values() if s["form"] == "linearized"
                ),
                "identity_upsamples": len(result.structure["identity_upsamples"]),
                "convs": count_convs(merged),
                "params": sum(p.numel() for p in merged.parameters()),
                "holdout_loss_before_finetune": before,
                "holdout_loss": epsilon_loss(merged, data.holdout, seed=0),
                "merge_max_rel_err": float((a - b).abs().max() / a.abs().max()),
                "finetune_s": finetune_s,
                "digits_fd": fd_of(merged, args),
                **side_by_side(original, merged, args),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    results = {
        "args": vars(args),
        "reference": reference,
        "fd_floor_holdout_vs_test": floor,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    (WORK / "results.json").write_text(json.dumps(results, indent=2))
    print(
        f"original: digits-FD {reference['digits_fd']:.2f} (real holdout digits: {floor:.2f}), "
        f"holdout ε-loss {reference['holdout_loss']:.2f}, {reference['convs']} convs; "
        f"finetuned {args.steps} more steps: digits-FD {reference['finetuned_digits_fd']:.2f}, "
        f"ε-loss {reference['finetuned_holdout_loss']:.2f}\n"
    )
    print(
        "| budget | method | convs | merged blocks / identity upsamples | predicted | "
        "sampling speed-up | one-step speed-up | ε-loss (before → after finetune) | digits-FD |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "infeasible" in row:
            print(f"| {row['budget']:.0%} | {row['method']} | infeasible | | | | | | |")
            continue
        print(
            f"| {row['budget']:.0%} | {row['method']} | {row['convs']} | "
            f"{row['merged_blocks']} / {row['identity_upsamples']} | "
            f"{row['predicted_speedup']:.2f}x | {row['sampling_speedup']:.2f}x | "
            f"{row['step_speedup']:.2f}x | {row['holdout_loss_before_finetune']:.1f} → "
            f"{row['holdout_loss']:.1f} | {row['digits_fd']:.2f} |"
        )
    print(f"\n({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
