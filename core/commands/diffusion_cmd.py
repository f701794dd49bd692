"""The profile and importance commands for a diffusion MODEL (``digits_unet`` or ``diffusers:PATH``).

What is left of the UNet's second copy of every command: ``profile_cmd`` and ``importance_cmd``
still hand a UNet here (their move onto the family protocol is another change). ``chain``,
``finetune``, ``compress`` and ``bench`` are written once for every family
(``core.workflows``); the UNet's differences there are ``UNetFamily`` methods.

What differs from the classification path here:

- ``--weights`` of ``digits_unet`` is a diffusers folder; a ``diffusers:PATH`` folder holds its own.
- ``--data`` is ``digits`` only (:func:`core.families.unet.data.load_diffusion_data`), and the
  scores are ε-prediction losses on the holdout split, not accuracies.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import LayerMergeError, TableMismatchError
from core.families.unet.unet import is_unet_name

__all__ = [
    "is_diffusion",
    "profile",
    "importance",
    "format_profile",
    "format_importance",
]

KIND = "diffusion"


def is_diffusion(args: argparse.Namespace) -> bool:
    """True when the command's MODEL names a diffusion UNet."""
    return isinstance(getattr(args, "model", None), str) and is_unet_name(args.model)


# --------------------------------------------------------------------------- loading


def load_unet(args: argparse.Namespace) -> Any:
    """The UNetBundle MODEL names, with the classifier-only options refused."""
    from core.families.unet.unet import DIFFUSERS_FOLDER_PREFIX, build_unet

    width = getattr(args, "width", 1.0)
    if width != 1.0:
        raise LayerMergeError(
            f"--width {width} applies to MobileNetV2 only; a diffusion UNet has no width option"
        )
    weights = getattr(args, "weights", None)
    if weights is not None and args.model.startswith(DIFFUSERS_FOLDER_PREFIX):
        raise LayerMergeError(
            f"{args.model} takes its weights from its own folder; drop --weights (or use "
            "digits_unet --weights FOLDER)"
        )
    if weights is not None and not Path(weights).is_dir():
        raise LayerMergeError(
            f"--weights {weights} is not a folder: for digits_unet, --weights takes a diffusers "
            "folder (config.json and diffusion_pytorch_model.safetensors)"
        )
    with _runtime_errors(f"cannot build {args.model}"):
        bundle = build_unet(args.model, weights=weights)
    size = getattr(args, "input_size", None)
    if size is not None and size != bundle.input_size:
        raise LayerMergeError(
            f"--input-size {size}: {bundle.name} runs at its config's sample_size "
            f"{bundle.input_size}; drop --input-size"
        )
    return bundle


def trace(bundle: Any) -> Any:
    """The UNet's chain; a UNet that cannot run on its own sample size fails in one line."""
    from core.families.unet.chain import trace_unet

    with _runtime_errors(f"cannot run {bundle.name} on a sample of its config's sample_size"):
        return trace_unet(bundle.model)


def load_data(spec: str, bundle: Any, uchain: Any, *, seed: int = 0) -> Any:
    """Diffusion images for ``bundle``: digits upscaled to its sample size, one channel."""
    from core.families.unet.data import load_diffusion_data

    data = load_diffusion_data(spec, size=bundle.input_size, seed=seed)
    shape = tuple(uchain.chain.input_shape)
    if tuple(data.train.shape[1:]) != shape:
        raise LayerMergeError(
            f"{data.name} images are {_shape_text(data.train.shape[1:])} but {bundle.name} takes "
            f"{_shape_text(shape)} samples"
        )
    return data


def _shape_text(shape: Any) -> str:
    return "x".join(str(int(v)) for v in shape)


# --------------------------------------------------------------------------- profile


def profile(args: argparse.Namespace) -> dict[str, Any]:
    from core.commands.common import progress_printer
    from core.commands.profile_cmd import slowest_rows
    from core.families.unet.latency import measure_unet_latency
    from core.latency import LatencyConfig, get_backend

    if args.device != "cpu":
        raise LayerMergeError(
            f"--device {args.device} is not supported for diffusion UNets yet (the whole-UNet "
            "timing builds its timesteps on the CPU); use --device cpu"
        )
    config = LatencyConfig(
        batch=args.batch,
        backend=args.backend,
        device=args.device,
        threads=args.threads,
        min_run_time=args.min_run_time,
        network=not args.no_network,
    )
    get_backend(config.backend).check(config)  # an unknown backend fails before any work
    bundle = load_unet(args)
    uchain = trace(bundle)
    out = _out_dir(args.out)
    started = time.perf_counter()
    entries, meta = measure_unet_latency(
        bundle, uchain, config, out=out, progress=progress_printer("profile")
    )
    return {
        "kind": KIND,
        "out": args.out,
        "model": bundle.name,
        "width": 1.0,
        "input_size": bundle.input_size,
        "input_shape": list(uchain.chain.input_shape),
        "batch": meta["batch"],
        "backend": meta["backend"],
        "device": meta["device"],
        "threads": meta["threads"],
        "cpu": meta.get("cpu"),
        "entries": len(entries),
        "computed": len(entries),
        "cached": 0,
        "identity_entries": sum(e.is_removal for e in entries),
        "measured_geometries": meta.get("latency_measured_geometries"),
        "seconds": round(time.perf_counter() - started, 2),
        "original_table_latency_ms": meta.get("original_table_latency_ms"),
        "network_latency_ms": meta.get("network_latency_ms"),
        "additivity_error": meta.get("additivity_error"),
        "slowest": slowest_rows(entries),
    }


def format_profile(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} (diffusion UNet) at {_shape_text(result['input_shape'])}, batch "
        f"{result['batch']}, "
        f"{result['backend']} on {result['device']} with {result['threads']} threads "
        f"({result['cpu']})",
        f"  {result['entries']} entries ({result['identity_entries']} identity upsamples, 0 ms) "
        f"from {result['measured_geometries']} distinct modules, in {result['seconds']:.1f} s",
        f"  keep-everything table latency: {result['original_table_latency_ms']:.3f} ms",
    ]
    network = result.get("network_latency_ms")
    if network is not None:
        lines.append(
            f"  whole UNet measured (one denoising step): {network:.3f} ms; additivity error "
            f"{result['additivity_error']:+.1%} (table sum vs whole UNet; the table leaves out "
            "attention, norm1, skips, the time MLP and conv_in/conv_out)"
        )
    for s in result["slowest"]:
        lines.append(
            f"  slowest ({s['start']},{s['end']}] kernel {s['kernel']} stride {s['stride']}: "
            f"{s['latency_ms']:.3f} ms"
        )
    lines.append(f"latency table written to {result['out']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- importance


def importance(args: argparse.Namespace) -> dict[str, Any]:
    from core.commands.common import progress_printer
    from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
    from core.latency import torch_threads
    from core.tables import read_meta

    _refuse_options(
        args,
        [
            ("cluster", None, "--cluster: diffusion importance runs in local --jobs processes"),
            ("mode", "finetune", "--mode distortion"),
            ("reinit_single", False, "--reinit-single"),
            ("calibration_images", 256, "--calibration-images: it belongs to distortion mode"),
        ],
    )
    if args.normalization not in (None, "loss"):
        raise LayerMergeError(
            f"--normalization {args.normalization} is not supported for diffusion UNets: their "
            "importance is normalized by the ε-loss (loss)"
        )
    if args.eval_images is not None and args.eval_images < 1:
        raise LayerMergeError(f"--eval-images must be a positive integer, got {args.eval_images}")
    if args.threads is not None and args.threads < 1:
        raise LayerMergeError(f"--threads must be a positive integer, got {args.threads}")
    defaults = UNetImportanceConfig()
    config = UNetImportanceConfig(
        steps=defaults.steps if args.steps is None else args.steps,
        lr=defaults.lr if args.lr is None else args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        holdout_images=args.eval_images,
    )
    bundle = load_unet(args)
    uchain = trace(bundle)
    data = load_data(args.data, bundle, uchain, seed=args.data_seed)
    out = _out_dir(args.out)
    if (out / "meta.json").is_file():
        recorded = read_meta(out).get("chain_digest")
        if recorded is not None and recorded != uchain.digest():
            raise TableMismatchError(
                f"{out} holds tables of another network (chain digest {recorded}, this UNet "
                f"{uchain.digest()}); use another --out"
            )
    started = time.perf_counter()
    threads = torch_threads(args.threads) if args.jobs == 1 else contextlib.nullcontext()
    with threads:
        entries, meta = estimate_unet_importance(
            bundle,
            uchain,
            data,
            config,
            out=out,
            jobs=args.jobs,
            progress=progress_printer("importance"),
        )
    ranked = sorted(entries, key=lambda e: e.importance)
    return {
        "kind": KIND,
        "out": args.out,
        "model": bundle.name,
        "weights": bundle.weights_note,
        "data": meta.get("data"),
        "mode": "finetune",
        "normalization": meta.get("importance_normalization"),
        "settings": meta.get("importance_config"),
        "runner": f"{args.jobs} local process{'es' if args.jobs > 1 else ''}",
        "entries": len(entries),
        "computed": len(entries),
        "cached": 0,
        "networks_trained": meta.get("importance_distinct_runs"),
        "seconds": round(time.perf_counter() - started, 2),
        "base_accuracy": None,
        "base_loss": meta.get("base_loss"),
        "finetuned_original_loss": meta.get("finetuned_original_loss"),
        "least_important": [_row(e) for e in ranked[:5]],
    }


def format_importance(result: dict[str, Any]) -> str:
    settings = result.get("settings") or {}
    lines = [
        f"{result['model']} (diffusion UNet) on {result['data']}: ε-loss importance, "
        f"{result['runner']}",
        f"  {result['weights']}",
        f"  {settings.get('steps')} Adam steps of batch {settings.get('batch_size')} at lr "
        f"{settings.get('lr')} per entry",
        f"  unmodified UNet: holdout ε-loss {result['base_loss']:.4f} (finetuned alike: "
        f"{result['finetuned_original_loss']:.4f})",
        f"  {result['entries']} entries from {result['networks_trained']} networks in "
        f"{result['seconds']:.1f} s",
    ]
    for r in result["least_important"]:
        lines.append(
            f"  least important ({r['start']},{r['end']}] kernel {r['kernel']}: importance "
            f"{r['importance']:.4f} (Δloss {r['delta_loss']:+.4f})"
        )
    lines.append(f"importance table written to {result['out']}")
    return "\n".join(lines)


def _row(entry: Any) -> dict[str, Any]:
    start, end, kernel, depthwise, stride = entry.key
    return {
        "start": start,
        "end": end,
        "kernel": kernel,
        "depthwise": depthwise,
        "stride": stride,
        "kept_convs": list(entry.kept_convs),
        "importance": entry.importance,
        "delta_loss": entry.delta_loss,
    }


# --------------------------------------------------------------------------- shared helpers


def _refuse_options(args: argparse.Namespace, options: list[tuple[str, Any, str]]) -> None:
    """Refuse options given (not at their default) that have no meaning for a UNet.

    Each option is ``(attribute, default, "--flag[: why]")``.
    """
    for name, default, text in options:
        if getattr(args, name, default) != default:
            flag, _, why = text.partition(": ")
            raise LayerMergeError(
                f"{flag} is not supported for diffusion UNets" + (f": {why}" if why else "")
            )


def _out_dir(path: str | Path) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise LayerMergeError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayerMergeError(f"cannot create {out}: {exc.strerror or exc}") from exc
    return out


@contextlib.contextmanager
def _runtime_errors(what: str) -> Iterator[None]:
    """torch and diffusers raise RuntimeError on shapes that do not fit: one line, exit 2."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, LayerMergeError):
            raise
        message = " ".join(str(exc).split())[:300]
        raise LayerMergeError(f"{what}: {type(exc).__name__}: {message}") from exc
