"""``python -m core profile MODEL --out DIR``: the latency table, measured on this machine.

Every model family goes through :func:`core.workflows.tables.profile`; what a family words
differently (a UNet's identity upsamples, what its table leaves out) comes in the result's notes.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from core.commands.common import add_model_arguments, progress_printer
from core.latency import (
    DEFAULT_MIN_RUN_TIME_S,
    DEVICES,
    LatencyConfig,
    list_backends,
)
from core.tables import TableEntry
from core.workflows import tables

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
    config = LatencyConfig(
        batch=args.batch,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        min_run_time=args.min_run_time,
        network=not args.no_network,
    )
    result = tables.profile(
        args.model,
        weights=args.weights,
        width=args.width,
        input_size=args.input_size,
        out=args.out,
        config=config,
        progress=progress_printer("profile"),
    )
    meta = result.meta
    return {
        "out": args.out,
        "model": result.model,
        "family": result.family,
        "notes": asdict(result.notes),
        "width": meta["width"],
        "input_size": meta["input_size"],
        "input_shape": meta["input_shape"],
        "batch": meta["batch"],
        "backend": meta["backend"],
        "device": meta["device"],
        "threads": meta["threads"],
        "cpu": meta.get("cpu"),
        "entries": len(result.entries),
        "identity_entries": result.identity_entries,
        "computed": result.computed,
        "cached": result.cached,
        "measured_geometries": result.measured_geometries,
        "seconds": round(result.seconds, 2),
        "original_table_latency_ms": meta.get("original_table_latency_ms"),
        "network_latency_ms": meta.get("network_latency_ms"),
        "additivity_error": meta.get("additivity_error"),
        "slowest": [_row(e) for e in result.slowest()],
    }


def format_text(result: dict[str, Any]) -> str:
    notes = result["notes"]
    label = f" ({notes['model']})" if notes["model"] else ""
    identity = result["identity_entries"]
    identity_text = f" (identity segments, at 0 ms: {identity})" if identity else ""
    lines = [
        f"{result['model']}{label} at {result['input_size']}x{result['input_size']}, batch "
        f"{result['batch']}, {result['backend']} on {result['device']} with {result['threads']} "
        f"threads ({result['cpu']})",
        f"  {result['entries']} entries{identity_text}: {result['computed']} measured now "
        f"({result['measured_geometries']} distinct convs), {result['cached']} from earlier "
        f"runs, in {result['seconds']:.1f} s",
        f"  keep-everything table latency: {result['original_table_latency_ms']:.3f} ms",
    ]
    network = result.get("network_latency_ms")
    if network is not None:
        left_out = f"; {notes['latency']}" if notes["latency"] else ""
        lines.append(
            f"  whole {notes['network']} measured: {network:.3f} ms; additivity error "
            f"{result['additivity_error']:+.1%} (table sum vs {notes['network']}{left_out})"
        )
    for s in result["slowest"]:
        lines.append(
            f"  slowest ({s['start']},{s['end']}] kernel {s['kernel']}"
            f"{' dw' if s['depthwise'] else ''} stride {s['stride']}: {s['latency_ms']:.3f} ms"
        )
    lines.append(f"latency table written to {result['out']}")
    return "\n".join(lines)


def _row(entry: TableEntry) -> dict[str, Any]:
    """One slow entry, keyed like the table's rows."""
    keys = ("start", "end", "kernel", "depthwise", "stride")
    return {**dict(zip(keys, entry.key, strict=True)), "latency_ms": entry.latency_ms}
