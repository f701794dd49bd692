"""Arguments, loading and rendering shared by several commands (command modules never import
each other: what two verbs share lives here or in ``core``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import LayerMergeError
from core.families import family_for
from core.models import ModelBundle, build_model
from core.workflows.model import LoadedModel
from core.workflows.model import load_model as load_loaded_model

__all__ = [
    "add_model_arguments",
    "load_model",
    "load",
    "require_positive",
    "options_of",
    "figure_lines",
    "progress_printer",
]

# How each stage of a job is named when its figures are shown (ModelFamily.metric_names).
STAGE_LABELS = {
    "original": "original",
    "surgery": "after surgery",
    "finetuned": "finetuned",
    "merged": "merged",
}


def add_model_arguments(parser: argparse.ArgumentParser, *, weights: bool = True) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="registry name (resnet18, resnet34, resnet50, mobilenet_v2, digits_resnet, "
        "digits_mobilenet); your own architecture as path/to/file.py:function (the file as "
        "downloaded, no PYTHONPATH needed) or module:function; or a diffusion UNet: "
        "digits_unet or diffusers:PATH (a local diffusers UNet2DModel folder)",
    )
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (MobileNetV2)")
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input resolution (default: the model's; for your own model that states none, "
        "the --data images' size)",
    )
    if weights:
        parser.add_argument(
            "--weights",
            default=None,
            help="a weights file of any name (.pt, .pth, .th, .tar, ...; loaded with "
            "weights_only=True): a state_dict, or a checkpoint holding one under state_dict, "
            "model, net or model_state_dict; or for digits_unet a diffusers folder; default: "
            "seeded initial weights, or the shipped weights of a demo model",
        )


def input_size_of(args: argparse.Namespace) -> int | None:
    """The input size to build MODEL at: ``--input-size``, else what the model states, else (a
    user's model that states none) the size of the ``--data`` images, so a CIFAR model is traced
    at 32, not at a silent 224."""
    size = args.input_size
    data = getattr(args, "data", None)
    if (
        size is None
        and isinstance(data, str)
        and not family_for(args.model).states_input_size(args.model)
    ):
        from core.data import data_input_size

        size = data_input_size(data)
    return size


def load(args: argparse.Namespace) -> LoadedModel:
    """The model named on the command line with its family and traced form (weights read safely)."""
    return load_loaded_model(
        args.model,
        weights=getattr(args, "weights", None),
        width=args.width,
        input_size=input_size_of(args),
    )


def load_model(args: argparse.Namespace) -> ModelBundle:
    """Build the classifier named on the command line (weights loaded safely)."""
    return build_model(
        args.model,
        width=args.width,
        weights=getattr(args, "weights", None),
        input_size=input_size_of(args),
    )


def progress_printer(label: str):
    """A progress callback ``(done, total, eta_s)`` drawing a one-line bar on stderr."""

    def report(done: int, total: int, eta_s: float | None = None) -> None:
        if not sys.stderr.isatty() and done not in (total,) and done % max(1, total // 20):
            return
        width = 30
        filled = int(width * done / max(total, 1))
        eta = f" ETA {eta_s:5.0f}s" if eta_s is not None and done < total else ""
        end = "\n" if done >= total else "\r"
        bar = "#" * filled + "." * (width - filled)
        print(f"{label} [{bar}] {done}/{total}{eta}", end=end, file=sys.stderr, flush=True)

    return report


def require_positive(args: argparse.Namespace, names: Iterable[str]) -> None:
    """Refuse a count option below 1 in one line (``--batch must be a positive integer``).

    Raises:
        LayerMergeError: naming the first option given below 1.
    """
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise LayerMergeError(f"{flag} must be a positive integer, got {value}")


def options_of(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options ``names`` as the family reads them (``core.families.options``)."""
    return {name: getattr(args, name) for name in names}


def figure_lines(result: Mapping[str, Any], job: str) -> list[str]:
    """The task figures a ``job`` result holds, one line per figure, in the family's words.

    ``test accuracy: original 97.22%, after surgery 61.11%, merged 95.00%``: which keys hold
    which stage, and how each figure is written, come from the model's family.
    """
    family = family_for(result["model"])
    metrics = result["metrics"]
    lines = []
    for figure, (label, spec) in family.figures().items():
        parts = [
            f"{STAGE_LABELS.get(stage, stage)} {spec.format(metrics[key])}"
            for stage, template in family.metric_names(job).items()
            if isinstance(metrics.get(key := template.format(figure)), int | float)
        ]
        if parts:
            data = f" on {metrics['data']}" if metrics.get("data") else ""
            lines.append(f"  {label}{data}: {', '.join(parts)}")
    return lines
