"""``python -m core importance MODEL --data SPEC --out DIR``: the importance table.

Every model family goes through :func:`core.workflows.tables.importance`: the options are passed
as they are, the family turns them into its settings and refuses those that do not apply.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from typing import Any

from core.commands.common import add_model_arguments, progress_printer
from core.files import check_output_folder
from core.importance import MODES, NORMALIZATIONS
from core.runner import Runner, check_scheduler
from core.tables import TableEntry
from core.workflows import tables

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "importance",
        help="score every (segment, kernel option) by a brief finetune on held-out data",
        description="For every table entry of MODEL, finetune the network modified in that one "
        "segment briefly on the data's finetune split and evaluate it on the disjoint holdout "
        "split (LayerMerge §4), or, with --mode distortion, compare its logits with the "
        "original's (seconds, no training). Writes importance.csv and meta.json to DIR. Entries "
        "run in --jobs local processes or on a dask cluster; finished entries are saved at once.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        metavar="SPEC",
        help="digits | folder:PATH | cifar10:PATH (diffusion UNets: digits)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="table directory")
    parser.add_argument("--jobs", type=int, default=1, help="local worker processes (default 1)")
    parser.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="dask.distributed scheduler address (tcp://host:8786); overrides --jobs",
    )
    parser.add_argument(
        "--mode", default="finetune", help=f"{' | '.join(MODES)} (default finetune)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="finetune steps per entry (default: 1/4 epoch; diffusion UNets: 60, 0 scores the "
        "unfinetuned networks)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak SGD lr (default: 0.1 x batch size / 256; diffusion UNets: Adam, 2e-4)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="finetune batch (default 64)")
    parser.add_argument(
        "--normalization",
        default=None,
        help=f"{' | '.join(NORMALIZATIONS)} (default: acc, or distortion in distortion mode)",
    )
    parser.add_argument(
        "--reinit-single",
        action="store_true",
        help="re-initialise single-layer entries before finetuning (the original code's rule)",
    )
    parser.add_argument(
        "--eval-images", type=int, default=None, help="holdout images evaluated (default: all)"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=None,
        help="holdout images whose logits distortion mode compares (default 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the entries' finetunes")
    parser.add_argument(
        "--data-seed", type=int, default=0, help="seed of the finetune/holdout/test split"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per job (default: cores/jobs)"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    # refused now, in one line, not after the model and data are loaded
    runner = Runner(processes=args.jobs, cluster=args.cluster, threads=args.threads)
    check_output_folder(args.out, what="table directory")
    if args.cluster:
        check_scheduler(args.cluster)
    settings = {
        "mode": args.mode,
        "steps": args.steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "normalization": args.normalization,
        "reinit_single": args.reinit_single or None,
        "eval_images": args.eval_images,
        "calibration_images": args.calibration_images,
        "seed": args.seed,
        "data_seed": args.data_seed,
    }
    result = tables.importance(
        args.model,
        data=args.data,
        weights=args.weights,
        width=args.width,
        input_size=args.input_size,
        out=args.out,
        settings=settings,
        runner=runner,
        progress=progress_printer("importance"),
    )
    meta = result.meta
    return {
        "out": args.out,
        "model": result.model,
        "family": result.family,
        "notes": asdict(result.notes),
        "weights": result.weights_note,
        "data": meta.get("data"),
        "data_spec": meta.get("data_spec"),
        "mode": meta.get("importance_mode"),
        "normalization": meta.get("importance_normalization"),
        "settings": meta.get("importance_settings"),
        "runner": meta.get("importance_runner"),
        "entries": len(result.entries),
        "computed": result.computed,
        "cached": result.cached,
        "networks_trained": result.networks_trained,
        "seconds": round(result.seconds, 2),
        "base_accuracy": meta.get("importance_base_accuracy"),
        "base_loss": meta.get("importance_base_loss"),
        "reference_loss": meta.get("importance_reference_loss"),
        "least_important": [_row(e) for e in result.least_important()],
    }


def format_text(result: dict[str, Any]) -> str:
    settings = result.get("settings") or {}
    label = f" ({result['notes']['model']})" if result["notes"]["model"] else ""
    lines = [
        f"{result['model']}{label} on {result['data']}: {result['mode']} importance "
        f"({result['normalization']}), {result['runner']}",
        f"  {result['weights']}",
    ]
    if result["mode"] == "finetune":
        lines.append(
            f"  {settings.get('steps')} steps of batch {settings.get('batch_size')} at lr "
            f"{settings.get('lr'):.4g} per entry"
        )
    base_accuracy, base_loss = result.get("base_accuracy"), result.get("base_loss")
    if base_accuracy is not None:
        lines.append(f"  unmodified network: {base_accuracy:.2f}% accuracy, loss {base_loss:.4f}")
    elif base_loss is not None:
        lines.append(f"  unmodified network: loss {base_loss:.4f}")
    reference = result.get("reference_loss")
    if reference is not None and base_loss is not None and reference != base_loss:
        lines.append(f"  Δ measured against the original finetuned alike: loss {reference:.4f}")
    lines.append(
        f"  {result['entries']} entries: {result['computed']} computed now "
        f"({result['networks_trained']} networks), {result['cached']} from earlier runs, in "
        f"{result['seconds']:.1f} s"
    )
    for r in result["least_important"]:
        delta = (
            f"Δacc {r['delta_acc']:+.2f} pp"
            if r["delta_acc"] is not None
            else f"Δloss {r['delta_loss']:+.4f}"
        )
        lines.append(
            f"  least important ({r['start']},{r['end']}] kernel {r['kernel']}"
            f"{' dw' if r['depthwise'] else ''}: importance {r['importance']:.4f} ({delta})"
        )
    lines.append(f"importance table written to {result['out']}")
    return "\n".join(lines)


def _row(entry: TableEntry) -> dict[str, Any]:
    start, end, kernel, depthwise, stride = entry.key
    return {
        "start": start,
        "end": end,
        "kernel": kernel,
        "depthwise": depthwise,
        "stride": stride,
        "kept_convs": list(entry.kept_convs),
        "importance": entry.importance,
        "delta_acc": _finite(entry.delta_acc),  # a UNet has no accuracy: None, not NaN
        "delta_loss": _finite(entry.delta_loss),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
