"""``python -m core compress MODEL --solution FILE --out FILE``: surgery, merge, export.

Takes the original model (``--weights``, or the shipped or seeded weights), optionally the
finetuned training form a ``python -m core finetune`` run wrote (``--finetuned``), merges it into
the deployable network and writes the compressed checkpoint (and ONNX with ``--onnx``): the
compress workflow (``core.workflows.compress``), the same for every model family.

With ``--onnx``, the ONNX file is timed against the original's ONNX export on ONNX Runtime, side
by side, and the result shown beside the tables' prediction (``--no-onnx-measure`` skips it); a
solution chosen on another runtime's latency table gets a one-line warning, since its speed
predictions were made for that runtime. The tables are ``--tables``, else the shipped tables the
solution records (its ``tables_digest``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.commands.common import add_model_arguments, figure_lines, load
from core.errors import LayerMergeError, TableMismatchError
from core.files import check_output_file
from core.solution import Solution
from core.tables import MANIFEST_PATH, read_manifest
from core.workflows.compress import compress
from core.workflows.measure import (
    backend_warning,
    onnx_speed_how,
    onnx_speed_line,
    onnx_speed_warning,
    times_onnx,
)
from core.workflows.model import LoadedModel, load_data, load_solution, tables_meta_for

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
        "--onnx-measure",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --onnx: time the ONNX file against the original's ONNX export on ONNX "
        "Runtime, side by side (seconds on the demo models; default on)",
    )
    parser.add_argument(
        "--tables",
        default=None,
        metavar="DIR",
        help="the table directory the solution was solved on (default: the shipped tables it "
        "records): with --onnx, its backend is checked and its predicted speed-up shown",
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
    meta = _tables_meta(model, solution, args.tables)
    time_onnx = bool(args.onnx) and args.onnx_measure and times_onnx(model)
    done = compress(
        model,
        solution,
        out=args.out,
        finetuned=args.finetuned,
        data=data,
        onnx=args.onnx,
        time_onnx=time_onnx,
        tables_meta=meta,
    )
    finetuned = done.finetuned
    warning = None
    if args.onnx:  # said once the files are written, so a failed run prints only its error
        warning = backend_warning(meta.get("backend", "torch") if meta is not None else None)
        if warning:
            print(warning, file=sys.stderr)
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
        "onnx_measure": "measured" if time_onnx else _why_not_timed(args, model),
        "onnx_backend_warning": warning,
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
        speed = metrics.get("onnx_speed")
        if speed:
            lines.append(f"  {onnx_speed_line(speed)}")
            lines.append(f"    {onnx_speed_how(speed)}")
            slower = onnx_speed_warning(speed)
            if slower:
                lines.append(f"  {slower}")
        elif result["onnx_measure"]:
            lines.append(f"  ONNX speed not measured: {result['onnx_measure']}")
    return "\n".join(lines)


def _tables_meta(
    model: LoadedModel, solution: Solution, directory: str | None
) -> dict[str, Any] | None:
    """The meta.json of the tables ``solution`` came from: ``--tables`` (checked to be them),
    else the shipped table directory whose digest the solution records; None when unknown."""
    if directory is not None:
        return tables_meta_for(model, directory, solution)
    if not solution.tables_digest:
        return None
    for entry in read_manifest():
        if entry.get("tables_digest") == solution.tables_digest:
            try:
                return tables_meta_for(model, MANIFEST_PATH.parent / entry["dir"], solution)
            except TableMismatchError:
                return None  # the same tables made for another model or network
    return None


def _why_not_timed(args: argparse.Namespace, model: LoadedModel) -> str | None:
    """Why an ONNX file was written but not timed (None: no ONNX file was asked for)."""
    if not args.onnx:
        return None
    if not args.onnx_measure:
        return "--no-onnx-measure"
    return f"the {model.family.name} family's ONNX graphs are not timed on ONNX Runtime"
