"""Arguments and loading shared by several commands."""

from __future__ import annotations

import argparse
import sys

from core.models import ModelBundle, build_model, stated_input_size

__all__ = ["add_model_arguments", "load_model", "progress_printer"]


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


def load_model(args: argparse.Namespace) -> ModelBundle:
    """Build the model named on the command line (weights loaded safely).

    The input size is ``--input-size``, else what the model states, else (a user's model that
    states none) the size of the ``--data`` images, so a CIFAR model is traced at 32, not at a
    silent 224.
    """
    size = args.input_size
    data = getattr(args, "data", None)
    if size is None and isinstance(data, str) and stated_input_size(args.model) is None:
        from core.data import data_input_size

        size = data_input_size(data)
    return build_model(
        args.model,
        width=args.width,
        weights=getattr(args, "weights", None),
        input_size=size,
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
