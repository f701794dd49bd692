"""``python -m core profile MODEL --out DIR``: the latency table, measured on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from core.chain import trace_chain
from core.commands import diffusion_cmd
from core.commands.common import add_model_arguments, load_model, progress_printer
from core.commands.diffusion_cmd import is_diffusion
from core.latency import (
    DEFAULT_MIN_RUN_TIME_S,
    DEVICES,
    LatencyConfig,
    list_backends,
    measure_latency,
)

__all__ = ["add_parser", "run", "format_text"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "profile",
        help="measure the latency table of every (segment, kernel option) on this machine",
        description="Time every merged conv (with its activation) of MODEL's valid segments at "
        "its true input shape, and the whole network, and write latency.csv and meta.json to "
        "DIR. Finished entries are saved at once: an interrupted run resumes, and an identical "
        "rerun measures nothing.",
    )
    add_model_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="table directory")
    parser.add_argument("--batch", type=int, default=1, help="images per timed call (default 1)")
    parser.add_argument(
        "--backend",
        default="torch",
        help=f"latency backend: {' | '.join(list_backends())} (default torch)",
    )
    parser.add_argument("--device", default="cpu", help=f"{' | '.join(DEVICES)} (default cpu)")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: torch's, all cores)"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=DEFAULT_MIN_RUN_TIME_S,
        metavar="S",
        help=f"seconds of timed repeats per distinct merged conv (default {DEFAULT_MIN_RUN_TIME_S})",
    )
    parser.add_argument(
        "--no-network",
        action="store_true",
        help="skip timing the whole network (meta.json then has no additivity error)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if is_diffusion(args):
        return diffusion_cmd.profile(args)
    config = LatencyConfig(
        batch=args.batch,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        min_run_time=args.min_run_time,
        network=not args.no_network,
    )
    bundle = load_model(args)
    chain = trace_chain(bundle.model, bundle.input_size)
    table = measure_latency(
        bundle, chain, config, out=args.out, progress=progress_printer("profile")
    )
    meta = table.meta
    return {
        "out": args.out,
        "model": bundle.name,
        "width": bundle.width,
        "input_size": bundle.input_size,
        "batch": meta["batch"],
        "backend": meta["backend"],
        "device": meta["device"],
        "threads": meta["threads"],
        "cpu": meta.get("cpu"),
        "entries": len(table.entries),
        "computed": table.computed,
        "cached": table.cached,
        "measured_geometries": table.measured_geometries,
        "seconds": round(table.seconds, 2),
        "original_table_latency_ms": meta.get("original_table_latency_ms"),
        "network_latency_ms": meta.get("network_latency_ms"),
        "additivity_error": meta.get("additivity_error"),
        "slowest": slowest_rows(table.entries),
    }


def slowest_rows(entries: Any, count: int = 5) -> list[dict[str, Any]]:
    """The ``count`` slowest entries, keyed like the table's rows (CNN and UNet tables alike)."""
    slowest = sorted(entries, key=lambda e: -e.latency_ms)[:count]
    return [
        {
            **dict(zip(("start", "end", "kernel", "depthwise", "stride"), e.key, strict=True)),
            "latency_ms": e.latency_ms,
        }
        for e in slowest
    ]


def format_text(result: dict[str, Any]) -> str:
    if result.get("kind") == "diffusion":
        return diffusion_cmd.format_profile(result)
    lines = [
        f"{result['model']} at {result['input_size']}x{result['input_size']}, batch "
        f"{result['batch']}, {result['backend']} on {result['device']} with {result['threads']} "
        f"threads ({result['cpu']})",
        f"  {result['entries']} entries: {result['computed']} measured now "
        f"({result['measured_geometries']} distinct convs), {result['cached']} from earlier runs, "
        f"in {result['seconds']:.1f} s",
        f"  keep-everything table latency: {result['original_table_latency_ms']:.3f} ms",
    ]
    network = result.get("network_latency_ms")
    if network is not None:
        lines.append(
            f"  whole network measured: {network:.3f} ms; additivity error "
            f"{result['additivity_error']:+.1%} (table sum vs network)"
        )
    for s in result["slowest"]:
        lines.append(
            f"  slowest ({s['start']},{s['end']}] kernel {s['kernel']}"
            f"{' dw' if s['depthwise'] else ''} stride {s['stride']}: {s['latency_ms']:.3f} ms"
        )
    lines.append(f"latency table written to {result['out']}")
    return "\n".join(lines)
