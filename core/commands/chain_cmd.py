"""``python -m core chain MODEL``: convs, positions, residual spans, valid segments, entries."""

from __future__ import annotations

import argparse
from typing import Any

from core.chain import trace_chain
from core.commands import diffusion_cmd
from core.commands.common import add_model_arguments, load_model
from core.commands.diffusion_cmd import is_diffusion
from core.segments import find_segments

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "chain",
        help="trace a model into LayerMerge's chain and list its valid segments",
        description="Trace MODEL into its chain of convs and activations: positions, residual "
        "spans, breaks, valid segments and the number of (segment, kernel) table entries.",
    )
    add_model_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if is_diffusion(args):
        return diffusion_cmd.chain(args)
    bundle = load_model(args)
    chain = trace_chain(bundle.model, bundle.input_size)
    segments = find_segments(chain)
    return {
        "model": bundle.name,
        "width": bundle.width,
        "input_size": bundle.input_size,
        "weights": bundle.weights_note,
        "chain_digest": chain.digest(),
        "positions": chain.last_position + 1,
        "last_position": chain.last_position,
        "convs": [
            {
                "position": c.index,
                "name": c.name,
                "kernel": c.kernel,
                "stride": c.stride,
                "groups": c.groups,
                "in_channels": c.in_channels,
                "out_channels": c.out_channels,
                "input_shape": list(c.input_shape),
                "activation": chain.activations[c.index],
                "reducible": c.index > 0 and c.reducible,
            }
            for c in chain.convs
        ],
        "residual_spans": [
            {"start": r.start, "end": r.end, "shortcut": r.shortcut} for r in chain.residuals
        ],
        "breaks": sorted(chain.breaks),
        "valid_segments": [[s.start, s.end] for s in segments],
        "table_entries": sum(len(s.options) for s in segments),
    }


def format_text(result: dict[str, Any]) -> str:
    if result.get("kind") == "diffusion":
        return diffusion_cmd.format_chain(result)
    lines = [
        f"{result['model']} at {result['input_size']}x{result['input_size']}: "
        f"{len(result['convs'])} convs, positions 0..{result['last_position']}",
        f"  {result['weights']}",
        f"  {'pos':>4} {'k':>2} {'s':>2} {'groups':>6} {'in':>5} {'out':>5} {'input':>14} "
        f"{'act':>6}  name",
    ]
    for c in result["convs"]:
        shape = "x".join(str(v) for v in c["input_shape"])
        mark = "*" if c["reducible"] else " "
        lines.append(
            f"  {c['position']:>4} {c['kernel']:>2} {c['stride']:>2} {c['groups']:>6} "
            f"{c['in_channels']:>5} {c['out_channels']:>5} {shape:>14} "
            f"{c['activation'] or '-':>6}{mark} {c['name']}"
        )
    spans = ", ".join(
        f"({r['start']},{r['end']}]" + ("+1x1" if r["shortcut"] else "")
        for r in result["residual_spans"]
    )
    lines += [
        "  * = reducible (prunable) conv",
        f"residual spans: {spans or 'none'}",
        f"breaks: {result['breaks']}",
        f"valid segments: {len(result['valid_segments'])}",
        f"table entries (segment, kernel option): {result['table_entries']}",
    ]
    return "\n".join(lines)
