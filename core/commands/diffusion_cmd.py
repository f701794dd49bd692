"""Commands for a diffusion MODEL (``digits_unet`` or ``diffusers:PATH``): the UNet variants.

``profile`` and ``importance`` no longer come here: they run every family through
:mod:`core.workflows.tables`. The other command modules hand a UNet here; the arguments are the
command's own (DESIGN.md, "Contracts"), and an option that has no meaning for a UNet (the
classifier's SGD settings, ...) is refused in one line rather than ignored. The results carry
``"kind": "diffusion"``, which is how each module's ``format_text`` tells them apart.

What differs from the classification path:

- ``--weights`` of ``digits_unet`` is a diffusers folder; a ``diffusers:PATH`` folder holds its own.
- ``--data`` is ``digits`` only (:func:`core.families.unet.data.load_diffusion_data`), and the
  scores are ε-prediction losses on the holdout split, not accuracies.
- ``finetune`` writes ``finetuned.pt`` (the training form, ``core.families.unet.export``), the merged
  ``compressed.pt`` and ``metrics.json``; it has no resumable checkpoint (runs are minutes).
- ``bench`` compares one denoising step (both networks alternately, ``core.benchmark``) and the
  wall time of DDIM sampling (alternating repeats), and optionally the digits Fréchet distance.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError, TableMismatchError, UnsafeCheckpointError
from core.families.unet.onnx_export import export_unet_onnx, merge_error
from core.families.unet.unet import is_unet_name

__all__ = [
    "is_diffusion",
    "chain",
    "finetune",
    "compress",
    "bench",
    "format_chain",
    "format_finetune",
    "format_compress",
    "format_bench",
    "FINETUNED_NAME",
]

FINETUNED_NAME = "finetuned.pt"
RUN_STATE_NAME = "finetune-state.pt"  # the resumable run state inside a finetune --out directory  # the training-form checkpoint inside a finetune --out directory
COMPRESSED_NAME = "compressed.pt"
ONNX_NAME = "compressed.onnx"
METRICS_NAME = "metrics.json"
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


def load_solution_for(uchain: Any, path: str) -> Any:
    """The solution file, checked against the UNet's chain (one line when it does not fit)."""
    from core.segments import validate_solution
    from core.solution import load_solution

    solution = load_solution(path)
    validate_solution(uchain.chain, solution)
    return solution


def read_unet_checkpoint(path: str | Path, *, what: str) -> tuple[dict[str, Any], nn.Module]:
    """A compressed or training-form UNet checkpoint file: its dict and the UNet it rebuilds."""
    from core.families.unet.export import unet_from_checkpoint
    from core.safe_load import safe_torch_load

    path = Path(path)
    if not path.is_file():
        raise UnsafeCheckpointError(f"{what} {path} does not exist")
    with path.open("rb") as handle:
        loaded = safe_torch_load(handle, f"{what} {path}")
    return loaded, unet_from_checkpoint(loaded, name=f"{what} {path}")


def _check_same_unet(loaded: dict[str, Any], bundle: Any, path: Path, what: str) -> None:
    if _clean_config(loaded.get("config", {})) != _clean_config(bundle.config):
        raise LayerMergeError(
            f"{what} {path} holds another UNet architecture than {bundle.name}; pass the MODEL "
            "it was made from"
        )


# --------------------------------------------------------------------------- chain


def chain(args: argparse.Namespace) -> dict[str, Any]:
    from core.families.unet.chain import unet_segments, unet_table_entries

    bundle = load_unet(args)
    uchain = trace(bundle)
    c = uchain.chain
    segments = unet_segments(uchain)
    roles = _conv_roles(uchain)
    return {
        "kind": KIND,
        "model": bundle.name,
        "width": 1.0,
        "input_size": bundle.input_size,
        "input_shape": list(c.input_shape),
        "in_channels": bundle.in_channels,
        "weights": bundle.weights_note,
        "chain_digest": uchain.digest(),
        "positions": c.last_position + 1,
        "last_position": c.last_position,
        "convs": [
            {
                "position": conv.index,
                "name": conv.name,
                "role": roles[conv.index],
                "kernel": conv.kernel,
                "stride": conv.stride,
                "groups": conv.groups,
                "in_channels": conv.in_channels,
                "out_channels": conv.out_channels,
                "input_shape": list(conv.input_shape),
                "activation": c.activations[conv.index],
                "reducible": conv.index > 0 and conv.reducible,
            }
            for conv in c.convs
        ],
        # The skip of each ResnetBlock2D spans (conv1 - 1, conv2]; the breaks confine segments
        # to one block, so the chain itself lists no residual spans.
        "residual_spans": [
            {"start": b.conv1 - 1, "end": b.conv2, "shortcut": b.shortcut} for b in uchain.blocks
        ],
        "resnet_blocks": [asdict(b) for b in uchain.blocks],
        "upsample_convs": list(uchain.upsample_convs),
        "downsample_convs": list(uchain.downsample_convs),
        "attention_blocks": list(uchain.attention_blocks),
        "breaks": sorted(c.breaks),
        "valid_segments": [[s.start, s.end] for s in segments],
        "table_entries": unet_table_entries(uchain),
    }


def format_chain(result: dict[str, Any]) -> str:
    lines = [
        f"{result['model']} (diffusion UNet) at {_shape_text(result['input_shape'])}: "
        f"{len(result['convs'])} main-path convs, positions 0..{result['last_position']}",
        f"  {result['weights']}",
        f"  {'pos':>4} {'k':>2} {'s':>2} {'in':>5} {'out':>5} {'input':>12} {'role':>6} "
        f"{'act':>14}  name",
    ]
    for c in result["convs"]:
        shape = "x".join(str(v) for v in c["input_shape"])
        mark = "*" if c["reducible"] else " "
        lines.append(
            f"  {c['position']:>4} {c['kernel']:>2} {c['stride']:>2} {c['in_channels']:>5} "
            f"{c['out_channels']:>5} {shape:>12} {c['role']:>6} {c['activation'] or '-':>14}"
            f"{mark} {c['name']}"
        )
    lines.append("  * = reducible conv; groupnorm_silu = the removable activation of a block")
    lines.append(f"ResnetBlock2Ds ({len(result['resnet_blocks'])}):")
    for b in result["resnet_blocks"]:
        lines.append(
            f"  ({b['conv1'] - 1},{b['conv2']}]  {b['in_channels']}->{b['out_channels']}"
            f"{' +shortcut conv' if b['shortcut'] else ''}"
            f"{' +time embedding' if b['time_embedding'] else ''}  {b['name']}"
        )
    lines += [
        f"upsample convs (may become identity): {result['upsample_convs'] or 'none'}",
        f"attention blocks (kept): {len(result['attention_blocks'])}",
        f"breaks: {result['breaks']}",
        f"valid segments: {len(result['valid_segments'])}",
        f"table entries (segment, kernel option): {result['table_entries']}",
    ]
    return "\n".join(lines)


def _conv_roles(uchain: Any) -> dict[int, str]:
    roles = {0: "in"}
    for block in uchain.blocks:
        roles[block.conv1], roles[block.conv2] = "conv1", "conv2"
    roles.update({p: "up" for p in uchain.upsample_convs})
    roles.update({p: "down" for p in uchain.downsample_convs})
    return {c.index: roles.get(c.index, "other") for c in uchain.chain.convs}


# --------------------------------------------------------------------------- finetune


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    from core.commands.finetune_cmd import _cancel_on_interrupt
    from core.families.unet.export import save_unet
    from core.families.unet.finetune import UNetFinetuneConfig, finetune_unet
    from core.families.unet.flow import apply_unet_solution
    from core.families.unet.loss import epsilon_loss
    from core.families.unet.merge import merge_unet
    from core.finetune import resolve_device

    _refuse_options(
        args,
        [
            ("optimizer", None, "--optimizer: UNets train with Adam"),
            ("weight_decay", None, "--weight-decay: UNets train with Adam, without weight decay"),
            ("momentum", None, "--momentum"),
            ("label_smoothing", None, "--label-smoothing"),
            ("distill", None, "--distill"),
            ("temperature", None, "--temperature"),
        ],
    )
    if args.threads is not None:
        if args.threads < 1:
            raise LayerMergeError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise LayerMergeError(f"--batch-size must be a positive integer, got {args.batch_size}")
    device = resolve_device(args.device)
    bundle = load_unet(args)
    uchain = trace(bundle)
    solution = load_solution_for(uchain, args.solution)
    data = load_data(args.data, bundle, uchain)
    defaults = UNetFinetuneConfig()
    if args.steps is not None:
        steps = args.steps
    elif args.epochs is not None:
        if args.epochs < 1:
            raise LayerMergeError(f"--epochs must be a positive integer, got {args.epochs}")
        steps = args.epochs * math.ceil(len(data.train) / args.batch_size)
    else:
        steps = defaults.steps
    warmup = 0 if args.warmup is None else args.warmup
    if not 0 <= warmup < 1:
        raise LayerMergeError(f"--warmup must be a fraction in [0, 1), got {warmup}")
    config = UNetFinetuneConfig(
        steps=steps,
        lr=defaults.lr if args.lr is None else args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        ema_decay=args.ema_decay,
        eval_every=args.eval_every or max(1, min(defaults.eval_every, steps)),
        warmup_steps=int(warmup * steps) if isinstance(steps, int) and steps > 0 else 0,
        cosine=args.cosine,
        grad_clip=args.grad_clip,
    )
    out = _out_dir(args.out)
    compression = apply_unet_solution(bundle.model, uchain, solution)
    training = compression.training_network.to(device)
    loss_original = epsilon_loss(bundle.model, data.holdout)
    state = out / RUN_STATE_NAME  # resumed when present: Ctrl-C or a kill loses nothing
    if args.restart:
        state.unlink(missing_ok=True)
    resuming = state.is_file()
    cancel = threading.Event()
    with _cancel_on_interrupt(cancel):
        result = finetune_unet(
            training,
            data,
            config,
            progress=_ProgressBar(),
            should_stop=cancel.is_set,
            checkpoint=state,
            checkpoint_every=args.checkpoint_every or 50,
        )
    training = result.unet.cpu().eval()
    status = "cancelled" if result.stopped else "completed"
    metrics: dict[str, Any] = {
        "data": data.name,
        "eps_loss_original": loss_original,
        "eps_loss_after_surgery": result.holdout_loss_before,
        "eps_loss_after": result.holdout_loss_after,
        "finetune_steps": result.steps_done,
        "finetune_total_steps": config.steps,
        "finetune_status": status,
        "finetune_resumed": resuming,
        "finetune_state": str(state),
        "predicted_latency_ms": solution.latency_ms,
    }

    def save(network: nn.Module, name: str, structure: dict[str, Any]) -> Path:
        path = out / name
        return _write(
            lambda: save_unet(
                network,
                path,
                config=bundle.config,
                structure=structure,
                solution=solution,
                model_name=bundle.name,
                metrics=metrics,
            ),
            path,
        )

    finetuned = save(training, FINETUNED_NAME, compression.structure)
    merged = merge_unet(training)
    error = merge_error(training, merged, uchain.chain.input_shape)
    metrics["merge_max_relative_error"] = error
    metrics["eps_loss_merged"] = epsilon_loss(merged, data.holdout)
    metrics["original"] = network_summary(bundle.model, uchain)
    metrics["compressed"] = network_summary(merged, uchain)
    compressed = save(merged, COMPRESSED_NAME, compression.merged_structure)
    onnx_path = None
    if args.onnx:
        onnx_path = _write(
            lambda: export_unet_onnx(merged, out / ONNX_NAME, uchain.chain.input_shape), out
        )
    summary = {
        "kind": KIND,
        "model": bundle.name,
        "weights": bundle.weights_note,
        "solution": str(args.solution),
        "method": solution.method,
        "status": status,
        "step": result.steps_done,
        "total_steps": config.steps,
        "resumed_from": None,
        "device": device,
        "train_seconds": round(result.elapsed_s, 2),
        "train_loss": result.history[-1].train_loss if result.history else None,
        "finetuned": str(finetuned),
        "checkpoint": str(finetuned),
        "compressed": str(compressed),
        "onnx": str(onnx_path) if onnx_path else None,
        "config": asdict(config),
        "metrics": metrics,
    }
    _write(
        lambda: (out / METRICS_NAME).write_text(json.dumps(summary, indent=2, default=str)),
        out / METRICS_NAME,
    )
    return summary


def format_finetune(result: dict[str, Any]) -> str:
    m = result["metrics"]
    lines = [
        f"{result['model']} (diffusion UNet) finetuned for {result['method']} "
        f"({result['solution']}): {result['status']} at step {result['step']}/"
        f"{result['total_steps']} on {result['device']} in {result['train_seconds']:.1f} s",
        f"  {result['weights']}",
        f"  holdout ε-loss: original {m['eps_loss_original']:.4f}, after surgery "
        f"{m['eps_loss_after_surgery']:.4f}, finetuned {m['eps_loss_after']:.4f} (merged "
        f"{m['eps_loss_merged']:.4f})",
        f"  depth {m['original']['depth']} -> {m['compressed']['depth']} main-path convs, params "
        f"{m['original']['params']:,} -> {m['compressed']['params']:,}; merged == training form "
        f"to {m['merge_max_relative_error']:.1e} (relative)",
        f"finetuned training form written to {result['finetuned']}",
        f"compressed checkpoint written to {result['compressed']}",
    ]
    if result["onnx"]:
        lines.append(f"ONNX (inputs sample, timestep) written to {result['onnx']}")
    if result["status"] == "cancelled":
        lines.insert(2, "  stopped early: the files hold the weights of the steps done")
    return "\n".join(lines)


class _ProgressBar:
    """``finetune [####....] step/total loss holdout ETA`` on stderr, a few times a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, report: Any) -> None:
        now = time.monotonic()
        done = report.step >= report.steps
        if not done and now - self._last < (0.25 if self._tty else 10.0):
            return
        self._last = now
        width = 24
        filled = int(width * report.step / max(report.steps, 1))
        remaining = report.elapsed_s / max(report.step, 1) * (report.steps - report.step)
        eta = f" ETA {remaining:4.0f}s" if not done else ""
        holdout = f" holdout {report.holdout_loss:.3f}" if report.holdout_loss is not None else ""
        line = (
            f"finetune [{'#' * filled}{'.' * (width - filled)}] {report.step}/{report.steps} "
            f"loss {report.train_loss:.4f}{holdout}{eta}"
        )
        print(line, end="\n" if done or not self._tty else "\r", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- compress


def compress(args: argparse.Namespace) -> dict[str, Any]:
    from core.families.unet.export import save_unet
    from core.families.unet.flow import apply_unet_solution
    from core.families.unet.merge import merge_unet

    bundle = load_unet(args)
    uchain = trace(bundle)
    solution = load_solution_for(uchain, args.solution)
    data = load_data(args.data, bundle, uchain) if args.data else None
    compression = apply_unet_solution(bundle.model, uchain, solution)
    training, merged = compression.training_network, compression.merged_network
    finetuned_from, finetuned_metrics = None, {}
    if args.finetuned:
        finetuned_from = _finetuned_path(args.finetuned)
        loaded, training = read_unet_checkpoint(finetuned_from, what="finetuned checkpoint")
        _check_same_unet(loaded, bundle, finetuned_from, "finetuned checkpoint")
        if loaded["structure"].get("merged"):
            raise LayerMergeError(
                f"{finetuned_from} is a merged (compressed) checkpoint; --finetuned takes the "
                f"training form that finetune wrote ({FINETUNED_NAME})"
            )
        if loaded["structure"] != _jsonable(compression.structure):
            raise LayerMergeError(
                f"finetuned checkpoint {finetuned_from} was made for another solution than "
                f"{args.solution}; pass the --solution it was finetuned for"
            )
        finetuned_metrics = {
            k: v
            for k, v in loaded["metrics"].items()
            if k.startswith(("eps_loss", "finetune_")) and k != "eps_loss_merged"
        }
        merged = merge_unet(training)
    error = merge_error(training, merged, uchain.chain.input_shape)
    metrics: dict[str, Any] = {
        "original": network_summary(bundle.model, uchain),
        "predicted_latency_ms": solution.latency_ms,
        "merge_max_relative_error": error,
        **finetuned_metrics,
    }
    if data is not None:
        from core.families.unet.loss import epsilon_loss

        metrics.update(
            data=data.name,
            eps_loss_before=epsilon_loss(bundle.model, data.holdout),
            eps_loss_after=epsilon_loss(merged, data.holdout),
        )
    metrics["compressed"] = network_summary(merged, uchain)
    out = _write(
        lambda: save_unet(
            merged,
            args.out,
            config=bundle.config,
            structure=compression.merged_structure,
            solution=solution,
            model_name=bundle.name,
            metrics=metrics,
        ),
        args.out,
    )
    onnx_path = None
    if args.onnx:
        onnx_path = _write(
            lambda: export_unet_onnx(merged, args.onnx, uchain.chain.input_shape), args.onnx
        )
    return {
        "kind": KIND,
        "model": bundle.name,
        "weights": bundle.weights_note,
        "finetuned": str(finetuned_from) if finetuned_from else None,
        "finetune_status": finetuned_metrics.get("finetune_status"),
        "solution": str(args.solution),
        "method": solution.method,
        "out": str(out),
        "onnx": str(onnx_path) if onnx_path else None,
        "metrics": metrics,
    }


def format_compress(result: dict[str, Any]) -> str:
    m = result["metrics"]
    original, compressed = m["original"], m["compressed"]
    lines = [
        f"{result['model']} (diffusion UNet) compressed with {result['method']} "
        f"({result['solution']})",
        f"  {result['weights']}",
    ]
    if result["finetuned"]:
        lines.append(
            f"  finetuned weights from {result['finetuned']} ({result['finetune_status']})"
        )
    lines += [
        f"  depth {original['depth']} -> {compressed['depth']} main-path convs; "
        f"{original['conv_count']} -> {compressed['conv_count']} conv layers; params "
        f"{original['params']:,} -> {compressed['params']:,}",
        f"  merged == training form to {m['merge_max_relative_error']:.1e} (relative)",
    ]
    if "eps_loss_after" in m and "eps_loss_before" in m:
        lines.append(
            f"  holdout ε-loss {m['eps_loss_before']:.4f} -> {m['eps_loss_after']:.4f} on "
            f"{m['data']}"
        )
    lines.append(f"compressed checkpoint written to {result['out']}")
    if result["onnx"]:
        lines.append(
            f"ONNX (inputs sample, timestep; output noise) written to {result['onnx']} (checked "
            "against ONNX Runtime)"
        )
    return "\n".join(lines)


def _finetuned_path(source: str) -> Path:
    path = Path(source)
    return path / FINETUNED_NAME if path.is_dir() else path


# --------------------------------------------------------------------------- bench


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from core.benchmark import compare
    from core.commands.bench_cmd import predicted_from_meta
    from core.families.unet.latency import UNetForward
    from core.families.unet.merge import merge_unet
    from core.families.unet.surgery import build_unet_training_network
    from core.latency import torch_threads
    from core.tables import read_meta

    for name in ("batch", "rounds", "threads", "samples", "sampling_steps", "fd_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LayerMergeError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.sampling_repeats < 0:
        raise LayerMergeError("--sampling-repeats must be 0 (skip) or a positive integer")
    if args.allocator != "default":
        raise LayerMergeError("--allocator heap is not supported for diffusion UNets")
    bundle = load_unet(args)
    uchain = trace(bundle)
    solution = load_solution_for(uchain, args.solution)
    if args.fd and bundle.in_channels != 1:
        raise LayerMergeError("--fd measures digits; it needs a one-channel UNet")
    if args.compressed:
        loaded, compressed = read_unet_checkpoint(args.compressed, what="compressed checkpoint")
        _check_same_unet(loaded, bundle, Path(args.compressed), "compressed checkpoint")
        if not loaded["structure"].get("merged"):
            raise LayerMergeError(
                f"{args.compressed} is a training-form checkpoint; merge it first (compress "
                "--finetuned) or pass the compressed.pt next to it"
            )
    else:
        training, _ = build_unet_training_network(bundle.model, uchain, solution)
        compressed = merge_unet(training)
    original = bundle.model.eval()
    backends = ("torch", "onnxruntime") if args.backend == "both" else (args.backend or "torch",)
    rows = compare(
        UNetForward(original),
        UNetForward(compressed),
        input_shape=uchain.chain.input_shape,
        batch=args.batch,
        backends=backends,
        rounds=args.rounds,
        threads=args.threads,
    )
    sampling = None
    if args.sampling_repeats:
        sampling = _time_sampling_side_by_side(
            original,
            compressed,
            count=args.samples,
            steps=args.sampling_steps,
            repeats=args.sampling_repeats,
            threads=args.threads,
        )
    quality = None
    if args.fd:
        from core.families.unet.quality import digits_fd
        from core.families.unet.sampling import ddim_sample

        with torch_threads(args.threads):
            scores = {
                name: digits_fd(ddim_sample(net, args.fd_samples, steps=args.sampling_steps))
                for name, net in (("original", original), ("compressed", compressed))
            }
        quality = {
            "samples": args.fd_samples,
            "sampling_steps": args.sampling_steps,
            "original_fd": scores["original"],
            "compressed_fd": scores["compressed"],
            "kind": "Fréchet distance in digits_resnet features to the digits test split "
            "(not Inception FID)",
        }
    predicted = None
    if args.tables:
        meta = read_meta(args.tables)
        if meta.get("chain_digest") not in (None, uchain.digest()):
            raise TableMismatchError(
                f"{args.tables} holds tables of another network (chain digest "
                f"{meta.get('chain_digest')}, this UNet {uchain.digest()})"
            )
        predicted = predicted_from_meta(meta, solution)
    original_summary = network_summary(original, uchain)
    compressed_summary = network_summary(compressed, uchain)
    return {
        "kind": KIND,
        "model": bundle.name,
        "weights": bundle.weights_note,
        "solution": str(args.solution),
        "method": solution.method,
        "compressed": args.compressed,
        "baseline": "original UNet2DModel (no BatchNorm to fold)",
        "input_shape": list(uchain.chain.input_shape),
        "allocator": "default",
        "original_depth": original_summary["depth"],
        "compressed_depth": compressed_summary["depth"],
        "original_params": original_summary["params"],
        "compressed_params": compressed_summary["params"],
        "results": [row.to_dict() for row in rows],
        "sampling": sampling,
        "quality": quality,
        "predicted": predicted,
    }


def format_bench(result: dict[str, Any]) -> str:
    from core.commands.bench_cmd import speed_table_lines

    shape = "x".join(str(v) for v in result["input_shape"])
    lines = [
        f"{result['model']} (diffusion UNet, {result['method']}, {result['solution']}) at "
        f"{shape}: depth {result['original_depth']} -> {result['compressed_depth']}, params "
        f"{result['original_params']:,} -> {result['compressed_params']:,}",
        "  one denoising step:",
    ]
    lines += speed_table_lines(result["results"])
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
    predicted = result.get("predicted")
    if predicted:
        lines.append(
            f"  predicted by the table: {predicted['speedup']:.2f}x (table "
            f"{predicted['table_latency_ms']:.3f} of {predicted['original_table_latency_ms']:.3f}"
            " ms)"
        )
    lines.append("  medians over alternating rounds; ratios come from the same run")
    return "\n".join(lines)


def _time_sampling_side_by_side(
    original: nn.Module,
    compressed: nn.Module,
    *,
    count: int,
    steps: int,
    repeats: int,
    threads: int | None,
) -> dict[str, Any]:
    """DDIM sampling wall time of both UNets, alternating which goes first in each repeat."""
    from core.families.unet.sampling import time_sampling
    from core.latency import torch_threads

    times: dict[str, list[float]] = {"original": [], "compressed": []}
    pair = [("original", original), ("compressed", compressed)]
    with torch_threads(threads):
        for index in range(repeats):
            for name, net in pair if index % 2 == 0 else reversed(pair):
                times[name].append(time_sampling(net, count=count, steps=steps, repeats=1))
    original_s = statistics.median(times["original"])
    compressed_s = statistics.median(times["compressed"])
    return {
        "samples": count,
        "steps": steps,
        "repeats": repeats,
        "threads": threads or torch.get_num_threads(),
        "original_s": original_s,
        "compressed_s": compressed_s,
        "original_runs_s": times["original"],
        "compressed_runs_s": times["compressed"],
        "speedup": original_s / compressed_s,
    }


# --------------------------------------------------------------------------- shared helpers


def network_summary(network: nn.Module, uchain: Any) -> dict[str, Any]:
    """Params, conv layers and main-path depth (every conv but the shortcut convs and conv_out)."""
    from core.families.unet.export import count_convs

    convs = count_convs(network)
    fixed = sum(b.shortcut for b in uchain.blocks) + 1  # shortcut convs and conv_out
    return {
        "params": sum(p.numel() for p in network.parameters()),
        "conv_count": convs,
        "depth": convs - fixed,
    }


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


def _write(action: Any, target: str | Path) -> Any:
    try:
        return action()
    except OSError as exc:
        raise LayerMergeError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _clean_config(config: Any) -> dict[str, Any]:
    if not isinstance(config, dict):
        return {}
    return _jsonable({k: v for k, v in config.items() if not str(k).startswith("_")})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


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
