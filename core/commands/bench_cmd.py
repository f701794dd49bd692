"""``python -m core bench MODEL --solution FILE``: original vs compressed, measured side by side.

The measure workflow (``core.workflows.measure``), the same for every model family: both networks
run in this one process, alternating round by round, on torch eager and/or ONNX Runtime; the
medians and their ratio are reported, beside the latency table's prediction when ``--tables`` is
given (the speed model of ``core.speed``); with ``--tables``, the batch, thread count and
allocator setting default to the tables' own, so the two compare. The family names the baseline (a classifier's original with BNs folded, as the paper
measures; a UNet's module as built), what one forward pass is (a UNet: one denoising step), and
what else it measures: for a diffusion UNet, the wall time of DDIM sampling (``--samples`` images
x ``--sampling-steps`` steps, alternating repeats), and with ``--fd`` the digits Fréchet distance
of both UNets' samples.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.benchmark import ALLOCATORS, BACKENDS, DEFAULT_ROUNDS, TimingSettings
from core.commands.common import add_model_arguments, load, options_of, require_positive
from core.families.unet.workflow import FD_SAMPLES, SAMPLES, SAMPLING_REPEATS, SAMPLING_STEPS
from core.tables import read_meta
from core.workflows.measure import measure
from core.workflows.model import load_compressed, load_solution, tables_meta_for

__all__ = ["add_parser", "run", "format_text"]

# The options whose meaning belongs to the model's family (ModelFamily.measure_config); the
# defaults --help names are the UNet family's, the one family that uses them.
FAMILY_OPTIONS = ("samples", "sampling_steps", "sampling_repeats", "fd", "fd_samples")


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
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="images per forward pass (default: the --tables' batch, else 1)",
    )
    parser.add_argument(
        "--backend",
        default=None,
        choices=(*BACKENDS, "both"),
        help="default: both (diffusion UNets: torch)",
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds each")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads (default: the --tables' count, else 1)",
    )
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
        default=None,
        choices=ALLOCATORS,
        help="heap: keep freed memory in glibc's heap, so large activations cost no page "
        "faults (see core.benchmark.use_heap_allocator); default: glibc as the process starts "
        "(default: the --tables' setting, else heap)",
    )
    unet = parser.add_argument_group("diffusion UNets only")
    unet.add_argument(
        "--samples",
        type=int,
        default=None,
        help=f"images per timed DDIM sampling run (default {SAMPLES})",
    )
    unet.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help=f"DDIM steps per sampling run (default {SAMPLING_STEPS})",
    )
    unet.add_argument(
        "--sampling-repeats",
        type=int,
        default=None,
        help=f"alternating timed sampling runs per UNet; 0 skips (default {SAMPLING_REPEATS})",
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
        help=f"images per UNet for --fd (default {FD_SAMPLES})",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    require_positive(args, ["batch", "rounds", "threads"])
    meta = read_meta(args.tables) if args.tables else None
    settings = TimingSettings.from_meta(meta) if meta is not None else TimingSettings()
    allocator = args.allocator or settings.allocator
    in_effect = TimingSettings(allocator=allocator).apply().allocator
    model = load(args)
    extra = model.family.measure_config(options_of(args, FAMILY_OPTIONS), model.bundle)
    solution = load_solution(model, args.solution)
    if args.tables:
        tables_meta_for(model, args.tables, solution)  # refuses tables of another model or chain
    done = measure(
        model,
        solution,
        compressed=load_compressed(model, solution, args.compressed) if args.compressed else None,
        baseline=args.baseline,
        backends=_backends(args.backend),
        batch=args.batch,
        rounds=args.rounds,
        threads=args.threads or (None if meta is not None else settings.threads),
        tables_meta=meta,
        extra=extra,
    )
    return {
        **model.family.result_fields(),
        "model": model.name,
        "weights": model.bundle.weights_note,
        "solution": str(args.solution),
        "method": solution.method,
        "compressed": args.compressed,
        "baseline": done.baseline,
        "input_shape": list(done.input_shape),
        "allocator": in_effect,
        "settings_note": done.settings_note,
        "original_depth": done.original["depth"],
        "compressed_depth": done.compressed["depth"],
        "original_params": done.original["params"],
        "compressed_params": done.compressed["params"],
        "results": [row.to_dict() for row in done.comparisons],
        **done.extra,
        "predicted": done.predicted,
    }


def format_text(result: dict[str, Any]) -> str:
    shape = "x".join(str(v) for v in result["input_shape"])
    kind = f"{result['kind']}, " if "kind" in result else ""
    lines = [
        f"{result['model']} ({kind}{result['method']}, {result['solution']}) at {shape}: depth "
        f"{result['original_depth']} -> {result['compressed_depth']}, params "
        f"{result['original_params']:,} -> {result['compressed_params']:,}; baseline: "
        f"{result['baseline']}",
        f"  {'backend':<12} {'batch':>5} {'original ms':>12} {'compressed ms':>14} "
        f"{'speed-up':>9} {'rounds':>7} {'threads':>7}",
    ]
    for row in result["results"]:
        lines.append(
            f"  {row['backend']:<12} {row['batch']:>5} {row['original_ms']:>12.3f} "
            f"{row['compressed_ms']:>14.3f} {row['speedup']:>8.2f}x {row['rounds']:>7} "
            f"{row['threads']:>7}"
        )
    sampling = result.get("sampling")
    if sampling:
        lines.append(
            f"  DDIM sampling, {sampling['samples']} images x {sampling['steps']} steps: "
            f"original {sampling['original_s']:.3f} s, compressed {sampling['compressed_s']:.3f} "
            f"s, speed-up {sampling['speedup']:.2f}x (median of {sampling['repeats']} "
            "alternating repeats)"
        )
    quality = result.get("quality")
    if quality:
        lines.append(
            f"  digits FD of {quality['samples']} samples: original {quality['original_fd']:.3f}, "
            f"compressed {quality['compressed_fd']:.3f} ({quality['kind']})"
        )
    predicted = result["predicted"]
    if predicted:
        if predicted["predicted_ms"] is not None:
            how = (
                f"measured original {predicted['network_ms']:.3f} ms ({predicted['basis']}) "
                f"{predicted['table_change_ms']:+.3f} ms in the table"
            )
            if predicted["complete"]:
                how += (
                    f", {predicted['residual_change_ms']:+.3f} ms residual adds, "
                    f"{predicted['activation_change_ms']:+.3f} ms activations"
                )
            scale = predicted.get("overhead_scale") or 1.0
            if scale != 1.0:
                how += f", changes ×{scale:.3f} (what the table does not see, per its ms)"
            how += f" -> {predicted['predicted_ms']:.3f} ms"
        else:
            how = (
                f"table {predicted['table_latency_ms']:.3f} of "
                f"{predicted['original_table_latency_ms']:.3f} ms"
            )
        lines.append(f"  predicted by the speed model: {predicted['speedup']:.2f}x ({how})")
    if result.get("settings_note"):
        lines.append(f"  note: {result['settings_note']}")
    lines.append(
        f"  medians over alternating rounds; ratios come from the same run; allocator: "
        f"{result['allocator']}"
    )
    return "\n".join(lines)


def _backends(choice: str | None) -> tuple[str, ...] | None:
    """``--backend``: one backend, both, or None for the family's default."""
    if choice is None:
        return None
    return BACKENDS if choice == "both" else (choice,)
