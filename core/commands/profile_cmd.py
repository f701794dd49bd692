"""``python -m core profile MODEL --out DIR``: the latency table, measured on this machine.

Every model family goes through :func:`core.workflows.tables.profile`; what a family words
differently (a UNet's identity upsamples, what its table leaves out) comes in the result's notes.
The profiling protocol (:mod:`core.latency`) holds on a busy machine: one thread and glibc's heap
allocator setting by default (applied to this process, recorded, and reused by every later
measurement of the table), interleaved rounds, and a reference op that finds slow phases, whose
samples are timed again. An unreliable table gets one warning line on stderr
(:func:`core.speed.table_warning`).

``--target onnx`` says the network will be deployed as ONNX: the table is then timed on ONNX
Runtime, since torch eager timings need not hold there (a merged 11x11 kernel measured 1.49x in
torch and 0.55x in ONNX Runtime); with ``--backend torch`` given as well, one line says so.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from core.benchmark import ALLOCATORS, TimingSettings
from core.commands.common import add_model_arguments, progress_printer
from core.latency import (
    DEFAULT_MIN_RUN_TIME_S,
    DEFAULT_ROUNDS,
    DEFAULT_THREADS,
    DEVICES,
    LatencyConfig,
    list_backends,
)
from core.speed import table_warning
from core.tables import TableEntry
from core.workflows import tables

__all__ = ["add_parser", "run", "format_text", "backend_for"]

# --target: the deployment runtime, and the latency backend that times it
TARGET_BACKENDS = {"torch": "torch", "onnx": "onnxruntime"}


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
        default=None,
        help=f"latency backend: {' | '.join(list_backends())} (default: the --target's)",
    )
    parser.add_argument(
        "--target",
        default=None,
        choices=tuple(TARGET_BACKENDS),
        help="where the compressed network will run: torch (times with the torch backend, the "
        "default) or onnx (an ONNX export: times with the onnxruntime backend)",
    )
    parser.add_argument("--device", default="cpu", help=f"{' | '.join(DEVICES)} (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"intra-op threads (default {DEFAULT_THREADS}: stable timings on a shared machine; "
        "more to profile a multi-core deployment)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"interleaved timing rounds; each entry keeps the median (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--allocator",
        default="heap",
        choices=ALLOCATORS,
        help="heap: keep freed memory in glibc's heap so large activations cost no page faults "
        "(default; later measurements of the table reuse it); default: glibc as it starts",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=DEFAULT_MIN_RUN_TIME_S,
        metavar="S",
        help=f"seconds of timed repeats per distinct merged conv (default {DEFAULT_MIN_RUN_TIME_S})",
    )
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="time the table in --out again if its last run warned that timings stayed slow",
    )
    parser.add_argument(
        "--no-network",
        action="store_true",
        help="skip timing the whole network (meta.json then has no additivity error)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    backend = backend_for(args.target, args.backend)
    hint = _target_hint(args.target, backend)
    if hint:
        print(hint, file=sys.stderr)
    config = LatencyConfig(
        batch=args.batch,
        backend=backend,
        device=args.device,
        threads=args.threads,
        min_run_time=args.min_run_time,
        network=not args.no_network,
        rounds=args.rounds,
    )
    TimingSettings(allocator=args.allocator).apply()  # process-wide: this CLI process only
    result = tables.profile(
        args.model,
        weights=args.weights,
        width=args.width,
        input_size=args.input_size,
        out=args.out,
        config=config,
        progress=progress_printer("profile"),
        remeasure_unreliable=args.remeasure,
    )
    meta = result.meta
    warning = table_warning(meta, args.out) if result.complete else None
    if warning:
        print(warning, file=sys.stderr)
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
        "allocator": meta.get("allocator", "default"),
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
        "explained_network_ms": meta.get("explained_network_ms"),
        "additivity_unexplained": meta.get("additivity_unexplained"),
        "noise": meta.get("latency_noise"),
        "warning": warning,
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
        f"thread(s), {result['allocator']} allocator ({result['cpu']})",
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
    explained = result.get("explained_network_ms")
    if network is not None and explained is not None:
        lines.append(
            f"  table + structure (stem, head, residual adds, activations): {explained:.3f} ms; "
            f"{result['additivity_unexplained']:+.1%} of the network left unexplained"
        )
    noise = result.get("noise")
    if noise and noise.get("reference_quiet_ms"):
        seen = (
            f"contention seen: {noise['slow_samples']} sample(s) in slow phases, "
            f"{noise['remeasured']} re-timed, {noise['unresolved']} entry(ies) still slow"
            if noise["contention_seen"]
            else "no contention seen"
        )
        lines.append(
            f"  noise: {noise['rounds']} rounds, reference op {noise['reference_quiet_ms']:.3f} "
            f"ms quiet (up to {noise['reference_max_ratio']:.1f}x); {seen}"
        )
    for s in result["slowest"]:
        lines.append(
            f"  slowest ({s['start']},{s['end']}] kernel {s['kernel']}"
            f"{' dw' if s['depthwise'] else ''} stride {s['stride']}: {s['latency_ms']:.3f} ms"
        )
    lines.append(f"latency table written to {result['out']}")
    return "\n".join(lines)


def backend_for(target: str | None, backend: str | None) -> str:
    """The latency backend a profile uses: ``--backend`` when given, else the ``--target``'s."""
    return backend or TARGET_BACKENDS[target or "torch"]


def _target_hint(target: str | None, backend: str) -> str | None:
    """One line when the table is timed on another runtime than the stated deployment's."""
    wanted = TARGET_BACKENDS.get(target or "")
    if wanted is None or backend == wanted or wanted not in list_backends():
        return None
    return (
        f"note: --target {target} deploys on {wanted}, but this table is timed with the "
        f"{backend} backend, so its speed predictions may not hold there; use --backend {wanted}"
    )


def _row(entry: TableEntry) -> dict[str, Any]:
    """One slow entry, keyed like the table's rows."""
    keys = ("start", "end", "kernel", "depthwise", "stride")
    return {**dict(zip(keys, entry.key, strict=True)), "latency_ms": entry.latency_ms}
