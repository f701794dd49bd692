"""``python -m core finetune MODEL --solution FILE --data SPEC --out DIR``: finetune, then merge.

The finetune workflow (``core.workflows.finetune``), the same for every model family: the loop
writes its run state to DIR every few steps (running the same command again resumes from it),
DIR holds the finetuned training form for ``compress --finetuned``, and once the loop completes
``DIR/compressed.pt`` (the export format) and ``DIR/metrics.json``. A progress bar with the
family's figures and an ETA goes to stderr. Ctrl-C stops cleanly at the next step with the run
state saved, prints the summary (``"status": "cancelled"``) and exits 130, so a script can tell a
cancelled run from a finished one (exit 0); a second Ctrl-C interrupts at once (also 130).

``--control`` then finetunes the uncompressed original with the same recipe (a second progress
bar, ``control [...]``) and reports the compressed network against it as well as against the
original; the control is kept in ``--control-cache`` (default: ``controls/`` beside DIR) and
reused by any later finetune of the same original with the same recipe and data.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

import torch

from core.commands.common import (
    add_model_arguments,
    figure_lines,
    load,
    options_of,
    require_positive,
)
from core.errors import LayerMergeError
from core.families import FinetuneReport
from core.families.unet.finetune import UNetFinetuneConfig
from core.files import check_output_folder
from core.finetune import FinetuneConfig
from core.workflows.finetune import finetune
from core.workflows.model import load_data, load_solution

__all__ = ["add_parser", "run", "format_text"]

# The defaults named in --help: each family fills in its own (ModelFamily.finetune_config).
_DEFAULTS = FinetuneConfig()
_UNET_DEFAULTS = UNetFinetuneConfig()
# The options whose meaning and defaults belong to the model's family.
FAMILY_OPTIONS = (
    "epochs",
    "steps",
    "optimizer",
    "lr",
    "batch_size",
    "weight_decay",
    "momentum",
    "warmup",
    "label_smoothing",
    "distill",
    "temperature",
    "grad_clip",
    "seed",
    "device",
    "checkpoint_every",
    "ema_decay",
    "eval_every",
    "cosine",
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune",
        help="finetune the training form of a solution, then merge and export it",
        description="Finetune the training-form network of SOLUTION on the finetune split of "
        "--data, with checkpoints in DIR (rerun the same command to resume), then merge it and "
        "write DIR/compressed.pt and DIR/metrics.json. A diffusion UNet trains with Adam on the "
        "ε-prediction loss, keeps its resumable run state in DIR/finetune-state.pt and writes "
        "DIR/finetuned.pt (its training form, for compress --finetuned), DIR/compressed.pt and "
        "DIR/metrics.json, with the holdout ε-loss before and after. Ctrl-C stops cleanly at "
        "the next step with the run state saved and exits 130 (rerun to resume); a completed "
        "run exits 0.",
    )
    add_model_arguments(parser)
    parser.add_argument("--solution", required=True, metavar="FILE", help="solution JSON")
    parser.add_argument("--data", required=True, metavar="SPEC", help="digits, folder:PATH, ...")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    # Defaults of None are filled in by the model's family (ModelFamily.finetune_config), so an
    # option given for another kind of model is refused instead of silently ignored.
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
    parser.add_argument(
        "--control",
        action="store_true",
        help="also finetune the uncompressed original with the same recipe (data, steps, lr, "
        "batch, seed) and report the compressed network against it as well as against the "
        "original; reused from --control-cache when the same original and recipe ran before",
    )
    parser.add_argument(
        "--control-cache",
        default=None,
        metavar="DIR",
        help="where controls are kept (default: controls/ beside --out)",
    )
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
    require_positive(args, ["threads"])
    check_output_folder(args.out)  # a file in the way is refused now, not after the model loads
    if args.control_cache is not None:
        if not args.control:
            raise LayerMergeError("--control-cache is only used with --control")
        check_output_folder(args.control_cache, what="control cache")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load(args)
    data = load_data(model, args.data)
    config = model.family.finetune_config(options_of(args, FAMILY_OPTIONS), data)
    solution = load_solution(model, args.solution)
    cancel = threading.Event()
    with _cancel_on_interrupt(cancel):
        outcome = finetune(
            model,
            solution,
            data,
            config,
            out=args.out,
            solution_source=args.solution,
            restart=args.restart,
            onnx=args.onnx,
            progress=_ProgressBar(),
            cancel=cancel,
            control=args.control,
            control_cache=args.control_cache,
            control_progress=_ProgressBar("control"),
        )
    return outcome.summary()


def format_text(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    kind = f" ({result['kind']})" if "kind" in result else ""
    lines = [
        f"{result['model']}{kind} finetuned for {result['method']} ({result['solution']}): "
        f"{result['status']} at step {result['step']}/{result['total_steps']} on "
        f"{result['device']} in {result['train_seconds']:.1f} s",
        f"  {result['weights']}",
        *figure_lines(result, "finetune"),
    ]
    if result["resumed_from"] is not None:
        lines.append(f"  resumed from step {result['resumed_from']}")
    if result["status"] == "cancelled":
        state = metrics.get("finetune_state", result["checkpoint"])
        lines.append(f"  run state {state}: rerun the same command to resume")
    control = result.get("control")
    if control is not None:
        if control["status"] == "completed":
            how = "reused from" if control["reused"] else "written to"
            lines.append(
                f"  control (the original finetuned the same way, {control['step']} steps) "
                f"{how} {control['folder']}"
            )
        else:
            lines.append(
                f"  control {control['status']} at step {control['step']}/"
                f"{control['total_steps']}: rerun the same command to resume it"
            )
    if result.get("comparison"):
        lines.append(f"  {result['comparison']['line']}")
    if result["compressed"]:
        original, compressed = metrics["original"], metrics["compressed"]
        lines.append(
            f"  depth {original['depth']} -> {compressed['depth']}, params "
            f"{original['params']:,} -> {compressed['params']:,}; merged == training form to "
            f"{metrics['merge_max_relative_error']:.1e} (relative)"
        )
    lines.append(f"finetuned training form written to {result['finetuned']}")
    if result["compressed"]:
        lines.append(f"compressed checkpoint written to {result['compressed']}")
    if result["onnx"]:
        lines.append(f"ONNX written to {result['onnx']}")
    return "\n".join(lines)


class _ProgressBar:
    """Draws ``[####....] step/total <the family's figures> ETA`` on stderr, a few times a second."""

    def __init__(self, name: str = "finetune") -> None:
        self._name = name
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, report: FinetuneReport) -> None:
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
            f"{self._name} [{'#' * filled}{'.' * (width - filled)}] {report.step}/{report.total_steps}"
            f" {report.readout()}{eta}"
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
