"""``python -m core chain MODEL``: convs, positions, residual spans, valid segments, entries."""

from __future__ import annotations

import argparse
from typing import Any

from core.commands.common import add_model_arguments, load

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
    model = load(args)
    family, bundle, chain = model.family, model.bundle, model.chain
    segments = family.segments(model.traced)
    description = {
        "model": bundle.name,
        "input_size": bundle.input_size,
        "weights": bundle.weights_note,
        "chain_digest": model.traced.digest(),
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
    return {**family.result_fields(), **family.describe_chain(bundle, model.traced, description)}


def format_text(result: dict[str, Any]) -> str:
    convs = result["convs"]
    shape = (
        "x".join(str(v) for v in result["input_shape"])
        if "input_shape" in result
        else f"{result['input_size']}x{result['input_size']}"
    )
    kind = f" ({result['kind']})" if "kind" in result else ""
    act_width = max([6, *(len(c["activation"] or "-") for c in convs)])
    role = any("role" in c for c in convs)
    lines = [
        f"{result['model']}{kind} at {shape}: {len(convs)} convs, positions "
        f"0..{result['last_position']}",
        f"  {result['weights']}",
        f"  {'pos':>4} {'k':>2} {'s':>2} {'groups':>6} {'in':>5} {'out':>5} {'input':>14} "
        + (f"{'role':>6} " if role else "")
        + f"{'act':>{act_width}}  name",
    ]
    for c in convs:
        shape_in = "x".join(str(v) for v in c["input_shape"])
        mark = "*" if c["reducible"] else " "
        lines.append(
            f"  {c['position']:>4} {c['kernel']:>2} {c['stride']:>2} {c['groups']:>6} "
            f"{c['in_channels']:>5} {c['out_channels']:>5} {shape_in:>14} "
            + (f"{c.get('role', ''):>6} " if role else "")
            + f"{c['activation'] or '-':>{act_width}}{mark} {c['name']}"
        )
    spans = ", ".join(
        f"({r['start']},{r['end']}]" + ("+1x1" if r["shortcut"] else "")
        for r in result["residual_spans"]
    )
    lines += ["  * = reducible (prunable) conv", f"residual spans: {spans or 'none'}"]
    if "resnet_blocks" in result:
        lines.append(f"ResnetBlock2Ds ({len(result['resnet_blocks'])}):")
        for b in result["resnet_blocks"]:
            lines.append(
                f"  ({b['conv1'] - 1},{b['conv2']}]  {b['in_channels']}->{b['out_channels']}"
                f"{' +shortcut conv' if b['shortcut'] else ''}"
                f"{' +time embedding' if b['time_embedding'] else ''}  {b['name']}"
            )
    if "upsample_convs" in result:
        lines.append(f"upsample convs (may become identity): {result['upsample_convs'] or 'none'}")
    if "attention_blocks" in result:
        lines.append(f"attention blocks (kept): {len(result['attention_blocks'])}")
    lines += [
        f"breaks: {result['breaks']}",
        f"valid segments: {len(result['valid_segments'])}",
        f"table entries (segment, kernel option): {result['table_entries']}",
    ]
    return "\n".join(lines)
