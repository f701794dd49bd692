"""``python -m core compress MODEL --solution FILE --out FILE``: surgery, merge, export.

Takes the original model (``--weights``, or the shipped or seeded weights), optionally the
finetuned training form a ``python -m core finetune`` run wrote (``--finetuned``), merges it into
the deployable network and writes the compressed checkpoint (and ONNX with ``--onnx``): the
compress workflow (``core.workflows.compress``), the same for every model family.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.commands.common import add_model_arguments, figure_lines, load
from core.errors import LayerMergeError
from core.files import check_output_file
from core.workflows.compress import compress
from core.workflows.model import load_data, load_solution

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compress",
        help="merge a solution into the deployable network and write the compressed checkpoint",
        description="Build the training form of SOLUTION, load finetuned weights when given, "
        "merge every segment into one conv and save the compressed checkpoint (loadable with "
        "torch.load(weights_only=True)), optionally also as ONNX.",
    )
    add_model_arguments(parser)
    parser.add_argument("--solution", required=True, metavar="FILE", help="solution JSON")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="compressed checkpoint to write, in an existing folder (replaced atomically; a "
        "directory or a device is never replaced)",
    )
    parser.add_argument(
        "--finetuned",
        default=None,
        metavar="DIR_OR_FILE",
        help="a finetune --out directory or its checkpoint.pt (diffusion UNets: its "
        "finetuned.pt): use the finetuned weights",
    )
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="also export ONNX here (diffusion UNets: inputs sample and timestep)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="measure test accuracy before and after on this dataset (e.g. digits; diffusion "
        "UNets: the holdout ε-loss)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    # a typo in --out or --onnx is refused now, not after the model is loaded and merged
    out = check_output_file(args.out, what="the compressed checkpoint")
    if args.onnx and check_output_file(args.onnx, what="the ONNX file") == out:
        raise LayerMergeError(f"--out and --onnx name the same file ({args.out}); give two files")
    model = load(args)
    solution = load_solution(model, args.solution)
    data = load_data(model, args.data) if args.data else None
    done = compress(
        model, solution, out=args.out, finetuned=args.finetuned, data=data, onnx=args.onnx
    )
    finetuned = done.finetuned
    return {
        **model.family.result_fields(),
        "model": model.name,
        "weights": model.bundle.weights_note,
        "finetuned": str(finetuned.path) if finetuned else None,
        "finetune_status": finetuned.status if finetuned else None,
        "solution": str(args.solution),
        "method": solution.method,
        "out": str(done.checkpoint),
        "onnx": str(done.onnx) if done.onnx else None,
        "metrics": done.metrics,
    }


def format_text(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    original, compressed = metrics["original"], metrics["compressed"]
    kind = f" ({result['kind']})" if "kind" in result else ""
    lines = [
        f"{result['model']}{kind} compressed with {result['method']} ({result['solution']})",
        f"  {result['weights']}",
    ]
    if result["finetuned"]:
        lines.append(
            f"  finetuned weights from {result['finetuned']} ({result['finetune_status']})"
        )
    lines += [
        f"  depth {original['depth']} -> {compressed['depth']} convs on the main path; "
        f"{original['conv_count']} -> {compressed['conv_count']} conv layers; "
        f"params {original['params']:,} -> {compressed['params']:,}",
        f"  merged == training form to {metrics['merge_max_relative_error']:.1e} (relative)",
        *figure_lines(result, "compress"),
        f"compressed checkpoint written to {result['out']}",
    ]
    if result["onnx"]:
        lines.append(f"ONNX written to {result['onnx']} (checked against ONNX Runtime)")
    return "\n".join(lines)
