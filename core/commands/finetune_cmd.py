"""``python -m core finetune MODEL --solution FILE --data SPEC --out DIR``: finetune, then merge.

Writes ``DIR/checkpoint.pt`` every few steps (running the same command again resumes from it),
and at the end ``DIR/compressed.pt`` (the export format) and ``DIR/metrics.json``. A progress bar
with loss, accuracy and ETA goes to stderr. Ctrl-C stops cleanly at the next step with a
checkpoint; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from core import export
from core.commands import diffusion_cmd
from core.commands.common import add_model_arguments
from core.commands.compress_cmd import CHECKPOINT_NAME, merge_error, prepare
from core.commands.diffusion_cmd import is_diffusion
from core.errors import LayerMergeError
from core.export import jsonable, network_metrics
from core.families.unet.finetune import UNetFinetuneConfig
from core.finetune import (
    FinetuneConfig,
    FinetuneProgress,
    evaluate,
    finetune,
    resolve_device,
)
from core.merge import merge
from core.surgery import build_training_network

__all__ = ["add_parser", "run", "format_text", "COMPRESSED_NAME", "METRICS_NAME"]

COMPRESSED_NAME = "compressed.pt"
METRICS_NAME = "metrics.json"
_DEFAULTS = FinetuneConfig()
_UNET_DEFAULTS = UNetFinetuneConfig()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune",
        help="finetune the training form of a solution, then merge and export it",
        description="Finetune the training-form network of SOLUTION on the finetune split of "
        "--data, with checkpoints in DIR (rerun the same command to resume), then merge it and "
        "write DIR/compressed.pt and DIR/metrics.json. A diffusion UNet trains with Adam on the "
        "ε-prediction loss and writes DIR/finetuned.pt (its training form, for compress "
        "--finetuned), DIR/compressed.pt and DIR/metrics.json, with the holdout ε-loss before "
        "and after; it has no resumable checkpoint.",
    )
    add_model_arguments(parser)
    parser.add_argument("--solution", required=True, metavar="FILE", help="solution JSON")
    parser.add_argument("--data", required=True, metavar="SPEC", help="digits, folder:PATH, ...")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    # Defaults of None are filled in by kind (CNN: FinetuneConfig, UNet: UNetFinetuneConfig), so
    # an option given for the wrong kind of model is refused instead of silently ignored.
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs", type=int, default=None, help=f"passes over data (default {_DEFAULTS.epochs})"
    )
    length.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimizer steps (overrides; UNet default {_UNET_DEFAULTS.steps})",
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        choices=("sgd", "adamw"),
        help=f"CNNs only (default {_DEFAULTS.optimizer}); UNets train with Adam",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak learning rate (default {_DEFAULTS.lr}; UNets {_UNET_DEFAULTS.lr})",
    )
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument(
        "--weight-decay", type=float, default=None, help=f"default {_DEFAULTS.weight_decay}"
    )
    parser.add_argument(
        "--momentum", type=float, default=None, help=f"default {_DEFAULTS.momentum}"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"warm-up fraction of the steps (default {_DEFAULTS.warmup_fraction}; UNets 0)",
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=None, help=f"default {_DEFAULTS.label_smoothing}"
    )
    parser.add_argument(
        "--distill",
        type=float,
        default=None,
        metavar="ALPHA",
        help="weight of distillation from the original network (0 = off, the default; Kim23 "
        "used 0.3)",
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help=f"default {_DEFAULTS.distill_temperature}"
    )
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help=f"steps between checkpoints (default {_DEFAULTS.checkpoint_every})",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--restart", action="store_true", help="ignore an existing DIR/checkpoint.pt"
    )
    parser.add_argument("--onnx", action="store_true", help="also write DIR/compressed.onnx")
    unet = parser.add_argument_group("diffusion UNets only")
    unet.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="keep an exponential moving average of the weights (e.g. 0.999) and save it",
    )
    unet.add_argument(
        "--eval-every", type=int, default=None, help="steps between holdout ε-loss evaluations"
    )
    unet.add_argument(
        "--cosine", action="store_true", help="cosine learning-rate decay (default: constant)"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if is_diffusion(args):
        return diffusion_cmd.finetune(args)
    if args.threads is not None:
        if args.threads < 1:
            raise LayerMergeError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    for flag, value in (("--ema-decay", args.ema_decay), ("--eval-every", args.eval_every)):
        if value is not None:
            raise LayerMergeError(f"{flag} applies to diffusion UNets only")
    if args.cosine:
        raise LayerMergeError("--cosine applies to diffusion UNets only (CNNs always use it)")
    config = FinetuneConfig(
        optimizer=_given(args.optimizer, _DEFAULTS.optimizer),
        lr=_given(args.lr, _DEFAULTS.lr),
        weight_decay=_given(args.weight_decay, _DEFAULTS.weight_decay),
        momentum=_given(args.momentum, _DEFAULTS.momentum),
        epochs=_given(args.epochs, _DEFAULTS.epochs),
        steps=args.steps,
        batch_size=args.batch_size,
        warmup_fraction=_given(args.warmup, _DEFAULTS.warmup_fraction),
        label_smoothing=_given(args.label_smoothing, _DEFAULTS.label_smoothing),
        distill_alpha=_given(args.distill, _DEFAULTS.distill_alpha),
        distill_temperature=_given(args.temperature, _DEFAULTS.distill_temperature),
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
        checkpoint_every=_given(args.checkpoint_every, _DEFAULTS.checkpoint_every),
    )
    resolve_device(config.device)  # refuse cuda without CUDA before any work
    bundle, chain, solution = prepare(args)
    training = build_training_network(bundle.model, chain, solution)

    from core.data import load_data

    splits = load_data(args.data, input_size=bundle.input_size)
    if splits.num_classes != bundle.num_classes:
        raise LayerMergeError(
            f"{splits.name} has {splits.num_classes} classes but {bundle.name} predicts "
            f"{bundle.num_classes}; give weights trained on this dataset"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LayerMergeError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerMergeError(f"cannot create {out}: {exc.strerror or exc}") from exc
    checkpoint = out / CHECKPOINT_NAME
    if args.restart:
        checkpoint.unlink(missing_ok=True)
    resuming = checkpoint.exists()

    before = evaluate(bundle.model, splits.test)
    surgery = evaluate(training, splits.test)
    metrics: dict[str, Any] = {
        "data": splits.name,
        "accuracy_before": before.accuracy,
        "loss_before": before.loss,
        "accuracy_after_surgery": surgery.accuracy,
    }
    metadata = {
        "model": bundle.name,
        "width": bundle.width,
        "input_size": bundle.input_size,
        "weights": bundle.weights_note,
        "weights_digest": bundle.weights_digest,
        "solution": solution.to_dict(),
        "metrics": metrics,
    }
    cancel = threading.Event()
    with _cancel_on_interrupt(cancel):
        result = finetune(
            training,
            splits.finetune,
            config=config,
            teacher=bundle.model if config.distill_alpha > 0 else None,
            checkpoint_path=checkpoint,
            metadata=metadata,
            progress=_ProgressBar(),
            cancel=cancel,
        )
    summary: dict[str, Any] = {
        "model": bundle.name,
        "weights": bundle.weights_note,
        "solution": str(args.solution),
        "method": solution.method,
        "status": result.status,
        "step": result.step,
        "total_steps": result.total_steps,
        "resumed_from": result.resumed_from if resuming else None,
        "device": result.device,
        "train_seconds": round(result.elapsed_s, 2),
        "train_loss": _finite_or_none(result.loss),
        "train_accuracy": _finite_or_none(result.accuracy),
        "checkpoint": str(checkpoint),
        "config": config.to_dict(),
        "compressed": None,
        "onnx": None,
    }
    if result.status == "completed":
        merged = merge(result.network, chain, solution)
        after = evaluate(merged, splits.test)
        metrics.update(
            accuracy_after=after.accuracy,
            loss_after=after.loss,
            merge_max_relative_error=merge_error(result.network, merged, chain),
            predicted_latency_ms=solution.latency_ms,
            finetune_steps=result.step,
            original={**network_metrics(bundle.model), "depth": len(chain.convs)},
        )
        summary["compressed"] = str(
            export.save(
                merged,
                out / COMPRESSED_NAME,
                solution=solution,
                model_name=bundle.name,
                width=bundle.width,
                input_size=bundle.input_size,
                num_classes=bundle.num_classes,
                metrics=metrics,
            )
        )
        metrics["compressed"] = network_metrics(merged)
        if args.onnx:
            onnx_path = export.export_onnx(merged, out / "compressed.onnx", chain.input_shape)
            summary["onnx"] = str(onnx_path)
    summary["metrics"] = jsonable(metrics)
    (out / METRICS_NAME).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def format_text(result: dict[str, Any]) -> str:
    if result.get("kind") == "diffusion":
        return diffusion_cmd.format_finetune(result)
    metrics = result["metrics"]
    lines = [
        f"{result['model']} finetuned for {result['method']} ({result['solution']}): "
        f"{result['status']} at step {result['step']}/{result['total_steps']} on "
        f"{result['device']} in {result['train_seconds']:.1f} s",
        f"  {result['weights']}",
        f"  test accuracy: original {metrics['accuracy_before']:.2f}%, after surgery "
        f"{metrics['accuracy_after_surgery']:.2f}%"
        + (
            f", finetuned and merged {metrics['accuracy_after']:.2f}%"
            if "accuracy_after" in metrics
            else ""
        ),
    ]
    if result["resumed_from"] is not None:
        lines.append(f"  resumed from step {result['resumed_from']}")
    if result["status"] == "cancelled":
        lines.append(f"  checkpoint {result['checkpoint']}: rerun the same command to resume")
    if result["compressed"]:
        compressed = metrics["compressed"]
        lines.append(
            f"  depth {metrics['original']['depth']} -> {compressed['depth']}, params "
            f"{metrics['original']['params']:,} -> {compressed['params']:,}"
        )
        lines.append(f"compressed checkpoint written to {result['compressed']}")
    if result["onnx"]:
        lines.append(f"ONNX written to {result['onnx']}")
    return "\n".join(lines)


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _ProgressBar:
    """Draws ``[####....] step/total loss acc lr ETA`` on stderr, at most a few times a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, report: FinetuneProgress) -> None:
        now = time.monotonic()
        done = report.step >= report.total_steps
        interval = 0.25 if self._tty else 10.0
        if not done and now - self._last < interval:
            return
        self._last = now
        width = 24
        filled = int(width * report.step / max(report.total_steps, 1))
        eta = f" ETA {report.eta_s:4.0f}s" if report.eta_s is not None and not done else ""
        line = (
            f"finetune [{'#' * filled}{'.' * (width - filled)}] {report.step}/{report.total_steps}"
            f" epoch {report.epoch + 1} loss {report.loss:.4f} acc {report.accuracy:5.1f}%"
            f" lr {report.lr:.2e}{eta}"
        )
        end = "\n" if done or not self._tty else "\r"
        print(line, end=end, file=sys.stderr, flush=True)


class _cancel_on_interrupt:  # noqa: N801 (a context manager used like a function)
    """The first Ctrl-C sets ``cancel`` (a clean stop with a checkpoint); the second interrupts."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel
        self._previous: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            if self._cancel.is_set():
                raise KeyboardInterrupt
            self._cancel.set()
            print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)

        signal.signal(signal.SIGINT, handler)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
