"""``python -m core bench MODEL --solution FILE``: original vs compressed, measured side by side.

Both networks run in this one process, alternating round by round, on torch eager and ONNX
Runtime; the medians and their ratio are reported, beside the latency table's prediction when
``--tables`` is given. The baseline is the original with BNs folded (as the paper measures).

For a diffusion UNet (``core.commands.diffusion_cmd``) one denoising step is compared the same
way, then the wall time of DDIM sampling (``--samples`` images x ``--sampling-steps`` steps,
alternating repeats), and with ``--fd`` the digits Fréchet distance of both UNets' samples.
"""

from __future__ import annotations

import argparse
from typing import Any

from core import export
from core.benchmark import (
    BACKENDS,
    DEFAULT_ROUNDS,
    compare,
    folded_original,
    predicted_speedup,
    use_heap_allocator,
)
from core.commands import diffusion_cmd
from core.commands.common import add_model_arguments
from core.commands.compress_cmd import prepare
from core.commands.diffusion_cmd import is_diffusion
from core.errors import LayerMergeError
from core.merge import merge_model
from core.solution import Solution
from core.tables import read_meta

__all__ = ["add_parser", "run", "format_text"]

# Diffusion UNets: DDIM sampling timed side by side, and the sample-quality check (--fd).
UNET_SAMPLES = 64
UNET_SAMPLING_STEPS = 20
UNET_SAMPLING_REPEATS = 3
UNET_FD_SAMPLES = 256


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure the original and the compressed network side by side",
        description="Time the original network (BN folded) and the network merged for SOLUTION "
        "alternately in one run, on torch eager and/or ONNX Runtime, and report the medians and "
        "the speed-up.",
    )
    add_model_arguments(parser)
    parser.add_argument("--solution", required=True, metavar="FILE", help="solution JSON")
    parser.add_argument(
        "--compressed",
        default=None,
        metavar="FILE",
        help="time this compressed checkpoint instead of merging SOLUTION afresh",
    )
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass")
    parser.add_argument(
        "--backend",
        default=None,
        choices=(*BACKENDS, "both"),
        help="default: both (diffusion UNets: torch)",
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds each")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument(
        "--baseline",
        default=None,
        choices=("folded", "module"),
        help="folded: the original with BN folded (default, as the paper); module: as built "
        "(a diffusion UNet has no BN: its baseline is always the module)",
    )
    parser.add_argument(
        "--tables", default=None, metavar="DIR", help="also show the table's predicted speed-up"
    )
    parser.add_argument(
        "--allocator",
        default="default",
        choices=("default", "heap"),
        help="heap: keep freed memory in glibc's heap, so large activations cost no page "
        "faults (see core.benchmark.use_heap_allocator); default: as the process starts",
    )
    unet = parser.add_argument_group("diffusion UNets only")
    unet.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"images per timed DDIM sampling run (default {UNET_SAMPLES})",
    )
    unet.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help=f"DDIM steps per sampling run (default {UNET_SAMPLING_STEPS})",
    )
    unet.add_argument(
        "--sampling-repeats",
        type=int,
        default=None,
        help=f"alternating timed sampling runs per UNet; 0 skips (default {UNET_SAMPLING_REPEATS})",
    )
    unet.add_argument(
        "--fd",
        action="store_true",
        help="also sample --fd-samples images from each UNet and report their digits Fréchet "
        "distance to the test split (costs a minute or more)",
    )
    unet.add_argument(
        "--fd-samples",
        type=int,
        default=None,
        help=f"images per UNet for --fd (default {UNET_FD_SAMPLES})",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    unet_options = ("samples", "sampling_steps", "sampling_repeats", "fd_samples")
    if is_diffusion(args):
        if args.baseline == "folded":
            raise LayerMergeError(
                "--baseline folded: a diffusion UNet has no BatchNorm to fold; its baseline is "
                "the module as built"
            )
        defaults = (UNET_SAMPLES, UNET_SAMPLING_STEPS, UNET_SAMPLING_REPEATS, UNET_FD_SAMPLES)
        for name, default in zip(unet_options, defaults, strict=True):
            if getattr(args, name) is None:
                setattr(args, name, default)
        return diffusion_cmd.bench(args)
    for name in unet_options:
        if getattr(args, name) is not None:
            raise LayerMergeError(f"--{name.replace('_', '-')} applies to diffusion UNets only")
    if args.fd:
        raise LayerMergeError("--fd applies to diffusion UNets only")
    args.backend = args.backend or "both"
    args.baseline = args.baseline or "folded"
    for name in ("batch", "rounds", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LayerMergeError(f"--{name} must be a positive integer, got {value}")
    heap = use_heap_allocator() if args.allocator == "heap" else False
    bundle, chain, solution = prepare(args)
    if args.compressed:
        compressed = export.load(args.compressed)
        if tuple(compressed.input_shape) != tuple(chain.input_shape):
            raise LayerMergeError(
                f"{args.compressed} takes {tuple(compressed.input_shape)} inputs, the model "
                f"{tuple(chain.input_shape)}; pass the same --input-size"
            )
    else:
        compressed = merge_model(bundle.model, chain, solution)
    original = folded_original(bundle.model, chain) if args.baseline == "folded" else bundle.model
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    rows = compare(
        original,
        compressed,
        input_shape=chain.input_shape,
        batch=args.batch,
        backends=backends,
        rounds=args.rounds,
        threads=args.threads,
    )
    predicted = None
    if args.tables:
        meta = read_meta(args.tables)
        predicted = predicted_from_meta(meta, solution)
    return {
        "model": bundle.name,
        "weights": bundle.weights_note,
        "solution": str(args.solution),
        "method": solution.method,
        "compressed": args.compressed,
        "baseline": "original, BN folded" if args.baseline == "folded" else "original module",
        "input_shape": list(chain.input_shape),
        "allocator": "heap" if heap else "default",
        "original_depth": original.depth() if hasattr(original, "depth") else len(chain.convs),
        "compressed_depth": compressed.depth(),
        "results": [row.to_dict() for row in rows],
        "predicted": predicted,
    }


def format_text(result: dict[str, Any]) -> str:
    if result.get("kind") == "diffusion":
        return diffusion_cmd.format_bench(result)
    shape = "x".join(str(v) for v in result["input_shape"])
    lines = [
        f"{result['model']} ({result['method']}, {result['solution']}) at {shape}: depth "
        f"{result['original_depth']} -> {result['compressed_depth']}; baseline: "
        f"{result['baseline']}",
    ]
    lines += speed_table_lines(result["results"])
    predicted = result["predicted"]
    if predicted:
        lines.append(
            f"  predicted by the table: {predicted['speedup']:.2f}x (table {predicted['table_latency_ms']:.3f}"
            f" of {predicted['original_table_latency_ms']:.3f} ms)"
        )
    lines.append(
        f"  medians over alternating rounds; ratios come from the same run; allocator: "
        f"{result['allocator']}"
    )
    return "\n".join(lines)


def predicted_from_meta(meta: dict[str, Any], solution: Solution) -> dict[str, Any]:
    """What the tables predict for ``solution``: table latencies and the predicted speed-up."""
    original_table = float(meta.get("original_table_latency_ms", 0.0))
    network = meta.get("network_latency_ms")
    return {
        "table_latency_ms": solution.latency_ms,
        "original_table_latency_ms": original_table,
        "network_latency_ms": network,
        "speedup": predicted_speedup(
            solution.latency_ms,
            original_table,
            network_latency_ms=float(network) if network else None,
        ),
        "table_batch": meta.get("batch"),
        "table_backend": meta.get("backend"),
        "table_threads": meta.get("threads"),
    }


def speed_table_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The side-by-side timing rows (CNN and UNet benches alike), one line per backend."""
    lines = [
        f"  {'backend':<12} {'batch':>5} {'original ms':>12} {'compressed ms':>14} "
        f"{'speed-up':>9} {'rounds':>7} {'threads':>7}"
    ]
    for row in rows:
        lines.append(
            f"  {row['backend']:<12} {row['batch']:>5} {row['original_ms']:>12.3f} "
            f"{row['compressed_ms']:>14.3f} {row['speedup']:>8.2f}x {row['rounds']:>7} "
            f"{row['threads']:>7}"
        )
    return lines
