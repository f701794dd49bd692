"""``python -m core compress MODEL --solution FILE --out FILE``: surgery, merge, export.

Takes the original model (``--weights``, or the shipped or seeded weights), optionally the
finetuned training-form weights of ``python -m core finetune`` (``--finetuned``), merges them
into the deployable network and writes the compressed checkpoint (and ONNX with ``--onnx``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from core import export
from core.chain import Chain, trace_chain
from core.commands import diffusion_cmd
from core.commands.common import add_model_arguments, load_model
from core.commands.diffusion_cmd import is_diffusion
from core.errors import LayerMergeError
from core.export import jsonable, network_metrics
from core.finetune import evaluate, load_finetune_checkpoint
from core.merge import merge
from core.models import ModelBundle
from core.network import StepNetwork
from core.solution import Solution, load_solution
from core.surgery import build_training_network

__all__ = ["add_parser", "run", "format_text", "prepare", "resolve_finetuned", "merge_error"]

CHECKPOINT_NAME = "checkpoint.pt"  # inside a finetune --out directory


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
        "--out", required=True, metavar="FILE", help="compressed checkpoint to write"
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
    if is_diffusion(args):
        return diffusion_cmd.compress(args)
    bundle, chain, solution = prepare(args)
    training = build_training_network(bundle.model, chain, solution)
    finetuned_from, finetune_info = None, {}
    if args.finetuned:
        finetuned_from, finetune_info = _load_finetuned(args.finetuned, training)
    merged = merge(training.eval(), chain, solution)
    error = merge_error(training, merged, chain)

    metrics: dict[str, Any] = {
        "original": {**network_metrics(bundle.model), "depth": len(chain.convs)},
        "predicted_latency_ms": solution.latency_ms,
        "merge_max_relative_error": error,
        **finetune_info.get("metrics", {}),
    }
    if args.data:
        from core.data import load_data

        splits = load_data(args.data, input_size=bundle.input_size)
        before = evaluate(bundle.model, splits.test)
        after = evaluate(merged, splits.test)
        metrics.update(
            data=splits.name,
            accuracy_before=before.accuracy,
            accuracy_after=after.accuracy,
            loss_before=before.loss,
            loss_after=after.loss,
        )
    out = _write(
        lambda: export.save(
            merged,
            args.out,
            solution=solution,
            model_name=bundle.name,
            width=bundle.width,
            input_size=bundle.input_size,
            num_classes=bundle.num_classes,
            metrics=metrics,
        ),
        args.out,
    )
    onnx_path = None
    if args.onnx:
        onnx_path = _write(
            lambda: export.export_onnx(merged, args.onnx, chain.input_shape), args.onnx
        )
    return {
        "model": bundle.name,
        "weights": bundle.weights_note,
        "finetuned": str(finetuned_from) if finetuned_from else None,
        "finetune_status": finetune_info.get("status"),
        "solution": str(args.solution),
        "method": solution.method,
        "out": str(out),
        "onnx": str(onnx_path) if onnx_path else None,
        "metrics": jsonable({**metrics, "compressed": network_metrics(merged)}),
    }


def format_text(result: dict[str, Any]) -> str:
    if result.get("kind") == "diffusion":
        return diffusion_cmd.format_compress(result)
    metrics = result["metrics"]
    original, compressed = metrics["original"], metrics["compressed"]
    lines = [
        f"{result['model']} compressed with {result['method']} ({result['solution']})",
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
    ]
    if "accuracy_after" in metrics:
        lines.append(
            f"  test accuracy {metrics['accuracy_before']:.2f}% -> {metrics['accuracy_after']:.2f}%"
            f" on {metrics['data']}"
        )
    lines.append(f"compressed checkpoint written to {result['out']}")
    if result["onnx"]:
        lines.append(f"ONNX written to {result['onnx']} (checked against ONNX Runtime)")
    return "\n".join(lines)


def prepare(args: argparse.Namespace) -> tuple[ModelBundle, Chain, Solution]:
    """The model (weights loaded safely), its chain and the solution named on the command line."""
    bundle = load_model(args)
    chain = trace_chain(bundle.model, bundle.input_size)
    solution = load_solution(args.solution)
    return bundle, chain, solution


def resolve_finetuned(source: str | Path) -> Path:
    """A finetune ``--out`` directory or a checkpoint file -> the checkpoint file."""
    path = Path(source)
    return path / CHECKPOINT_NAME if path.is_dir() else path


@torch.no_grad()
def merge_error(training: StepNetwork, merged: StepNetwork, chain: Chain) -> float:
    """Largest relative difference between the training form and the merged network (eval)."""
    example = torch.randn(2, *chain.input_shape, generator=torch.Generator().manual_seed(0))
    reference = training.eval()(example)
    got = merged.eval()(example)
    return float((reference - got).abs().max() / reference.abs().max().clamp_min(1e-12))


def _load_finetuned(source: str, training: StepNetwork) -> tuple[Path, dict[str, Any]]:
    path = resolve_finetuned(source)
    checkpoint = load_finetune_checkpoint(path)
    if checkpoint["spec"] != jsonable(training.spec):
        raise LayerMergeError(
            f"finetune checkpoint {path} was made for another model or solution than the ones "
            "given; pass the same MODEL, --width, --input-size and --solution as to finetune"
        )
    training.load_state_dict(checkpoint["state_dict"], strict=True)
    metadata = checkpoint["metadata"]
    metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    info = {
        "status": f"{checkpoint['status']} at step {checkpoint['step']}/"
        f"{checkpoint['total_steps']}",
        "metrics": {
            "finetune_steps": checkpoint["step"],
            "finetune_total_steps": checkpoint["total_steps"],
            **json.loads(json.dumps(metrics)),
        },
    }
    return path, info


def _write(action: Any, target: str) -> Path:
    try:
        return action()
    except OSError as exc:
        raise LayerMergeError(f"cannot write {target}: {exc.strerror or exc}") from exc
