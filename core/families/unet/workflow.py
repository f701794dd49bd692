"""The UNet family's part in the workflows: chain fields, finetune settings, files, bench extras.

``UNetFamily`` hands these to ``core.workflows`` (and so to the CLI verbs and the app's jobs):

- the chain description's UNet fields (ResnetBlock2Ds, up/downsample convs, conv roles);
- how the CLI's finetune options become :class:`~core.families.unet.finetune.UNetFinetuneSettings`
  (Adam on the ε-loss: the classifier's SGD options are refused) and how the loop runs;
- the finetuned training form (``finetuned.pt``, a UNet checkpoint with ``"merged": False``) and
  compressed checkpoints read back, checked to be of the same UNet;
- the bench's extras: DDIM sampling timed side by side, and the digits Fréchet distance.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError
from core.families.base import FinetunedWeights, FinetuneReport, FinetuneRun
from core.families.options import flag, given, refuse, value_or
from core.families.unet.chain import UNetChain
from core.families.unet.export import count_convs, unet_from_checkpoint
from core.families.unet.finetune import (
    DEFAULT_CHECKPOINT_EVERY,
    UNetFinetuneConfig,
    UNetFinetuneSettings,
    finetune_unet,
)
from core.families.unet.surgery import structure_from_solution
from core.families.unet.unet import UNetBundle
from core.files import jsonable, read_untrusted_checkpoint
from core.finetune import resolve_device
from core.solution import Solution

__all__ = [
    "FINETUNED_NAME",
    "STATE_NAME",
    "UNetMeasureConfig",
    "describe_chain",
    "summary",
    "finetune_config",
    "run_finetune",
    "load_finetuned",
    "load_compressed",
    "measure_config",
    "measure_extra",
]

FINETUNED_NAME = "finetuned.pt"  # the finetuned training form inside a finetune output folder
STATE_NAME = "finetune-state.pt"  # the resumable run state inside a finetune output folder
_MODELS = "diffusion UNets"
_DEFAULTS = UNetFinetuneConfig()
# bench extras: DDIM sampling timed side by side, and the sample-quality check (--fd)
SAMPLES = 64
SAMPLING_STEPS = 20
SAMPLING_REPEATS = 3
FD_SAMPLES = 256


@dataclass(frozen=True)
class UNetMeasureConfig:
    """What a bench measures beside one denoising step."""

    samples: int = SAMPLES  # images per timed DDIM sampling run
    sampling_steps: int = SAMPLING_STEPS  # DDIM steps per run (and per --fd sample)
    sampling_repeats: int = SAMPLING_REPEATS  # alternating timed runs per UNet; 0 skips
    fd: bool = False  # also the digits Fréchet distance of both UNets' samples
    fd_samples: int = FD_SAMPLES


# --------------------------------------------------------------------------- structure


def describe_chain(
    bundle: UNetBundle, uchain: UNetChain, description: dict[str, Any]
) -> dict[str, Any]:
    """The generic chain description with the UNet's fields, in reading order.

    Each conv gains its ``role`` (in, conv1, conv2, up, down, other); the residual spans are the
    ResnetBlock2Ds' skips, (conv1 - 1, conv2]: the breaks confine segments to one block, so the
    chain itself lists no residual spans.
    """
    roles = _conv_roles(uchain)
    out: dict[str, Any] = {}
    for key, value in description.items():
        if key == "convs":
            value = [_with_role(conv, roles[conv["position"]]) for conv in value]
        if key == "residual_spans":
            value = [
                {"start": b.conv1 - 1, "end": b.conv2, "shortcut": b.shortcut}
                for b in uchain.blocks
            ]
        out[key] = value
        if key == "model":
            out["width"] = 1.0
        elif key == "input_size":
            out["input_shape"] = list(uchain.chain.input_shape)
            out["in_channels"] = bundle.in_channels
        elif key == "residual_spans":
            out["resnet_blocks"] = [asdict(b) for b in uchain.blocks]
            out["upsample_convs"] = list(uchain.upsample_convs)
            out["downsample_convs"] = list(uchain.downsample_convs)
            out["attention_blocks"] = list(uchain.attention_blocks)
    return out


def summary(network: nn.Module, uchain: UNetChain) -> dict[str, int]:
    """Params, conv layers and main-path depth (every conv but the shortcut convs and conv_out)."""
    convs = count_convs(network)
    fixed = sum(b.shortcut for b in uchain.blocks) + 1  # shortcut convs and conv_out
    return {
        "params": sum(p.numel() for p in network.parameters()),
        "conv_count": convs,
        "depth": convs - fixed,
    }


# --------------------------------------------------------------------------- finetune


def finetune_config(options: Mapping[str, Any], data: Any) -> UNetFinetuneSettings:
    """UNet finetune settings from the CLI's options; ``--epochs`` counts ``data.train`` passes.

    Raises:
        LayerMergeError: a classifier-only option, or a value out of range.
    """
    refuse(
        options,
        {
            "optimizer": "UNets train with Adam",
            "weight_decay": "UNets train with Adam, without weight decay",
            "momentum": "",
            "label_smoothing": "",
            "distill": "",
            "temperature": "",
        },
        models=_MODELS,
    )
    batch = value_or(options, "batch_size", _DEFAULTS.batch_size)
    if batch < 1:
        raise LayerMergeError(f"--batch-size must be a positive integer, got {batch}")
    device = resolve_device(value_or(options, "device", "auto"))
    if given(options, "steps"):
        steps = options["steps"]
    elif given(options, "epochs"):
        if options["epochs"] < 1:
            raise LayerMergeError(f"--epochs must be a positive integer, got {options['epochs']}")
        steps = options["epochs"] * math.ceil(len(data.train) / batch)
    else:
        steps = _DEFAULTS.steps
    warmup = value_or(options, "warmup", 0.0)
    if not 0 <= warmup < 1:
        raise LayerMergeError(f"--warmup must be a fraction in [0, 1), got {warmup}")
    config = UNetFinetuneConfig(
        steps=steps,
        lr=value_or(options, "lr", _DEFAULTS.lr),
        batch_size=batch,
        seed=value_or(options, "seed", _DEFAULTS.seed),
        ema_decay=options.get("ema_decay"),
        eval_every=value_or(options, "eval_every", max(1, min(_DEFAULTS.eval_every, steps))),
        warmup_steps=int(warmup * steps) if isinstance(steps, int) and steps > 0 else 0,
        cosine=bool(options.get("cosine")),
        grad_clip=options.get("grad_clip"),
    )
    return UNetFinetuneSettings(
        config=config,
        device=device,
        checkpoint_every=value_or(options, "checkpoint_every", DEFAULT_CHECKPOINT_EVERY),
    )


def run_finetune(
    training: nn.Module,
    data: Any,
    settings: UNetFinetuneSettings,
    *,
    checkpoint: Path | None,
    progress: Callable[[FinetuneReport], None] | None,
    cancel: threading.Event | None,
) -> FinetuneRun:
    """:func:`finetune_unet` on ``settings.device``, reduced to a :class:`FinetuneRun`."""
    result = finetune_unet(
        training.to(settings.device),
        data,
        settings.config,
        progress=progress,
        cancel=cancel,
        checkpoint=checkpoint,
        checkpoint_every=settings.checkpoint_every,
    )
    return FinetuneRun.of(
        result, network=result.network.cpu().eval(), device=settings.device, figures={}
    )


def load_finetuned(
    source: str | Path, bundle: UNetBundle, uchain: UNetChain, solution: Solution
) -> FinetunedWeights:
    """The training form a finetune folder's ``finetuned.pt`` (or the file) holds, checked to fit.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe or not a UNet checkpoint.
        LayerMergeError: another UNet, a merged checkpoint, or another solution.
    """
    path = Path(source)
    path = path / FINETUNED_NAME if path.is_dir() else path
    loaded, _ = read_untrusted_checkpoint(path)
    what = f"finetuned checkpoint {path}"
    network = unet_from_checkpoint(loaded, name=what)
    _check_same_unet(loaded, bundle, what)
    if loaded["structure"].get("merged"):
        raise LayerMergeError(
            f"{path} is a merged (compressed) checkpoint; --finetuned takes the training form "
            f"that finetune wrote ({FINETUNED_NAME})"
        )
    if loaded["structure"] != jsonable(structure_from_solution(uchain, solution)):
        raise LayerMergeError(
            f"{what} was made for another solution than the one given; pass the --solution it "
            "was finetuned for"
        )
    metrics = {
        k: v
        for k, v in loaded["metrics"].items()
        if k.startswith(("eps_loss", "finetune_")) and k != "eps_loss_merged"
    }
    return FinetunedWeights(network, path, metrics.get("finetune_status"), metrics)


def load_compressed(source: str | Path, bundle: UNetBundle) -> nn.Module:
    """A compressed (merged) UNet checkpoint of ``bundle``'s architecture.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe or not a UNet checkpoint.
        LayerMergeError: another UNet, or a training-form checkpoint.
    """
    loaded, _ = read_untrusted_checkpoint(source)
    what = f"compressed checkpoint {source}"
    network = unet_from_checkpoint(loaded, name=what)
    _check_same_unet(loaded, bundle, what)
    if not loaded["structure"].get("merged"):
        raise LayerMergeError(
            f"{source} is a training-form checkpoint; merge it first (compress --finetuned) or "
            "pass the compressed.pt next to it"
        )
    return network


# --------------------------------------------------------------------------- bench extras


def measure_config(options: Mapping[str, Any], bundle: UNetBundle) -> UNetMeasureConfig:
    """What the bench measures beside one denoising step, from the CLI's options.

    Raises:
        LayerMergeError: a count below 1 (``--sampling-repeats`` below 0), or ``--fd`` on a
            UNet that does not draw one-channel digits.
    """
    for name in ("samples", "sampling_steps", "fd_samples"):
        if given(options, name) and options[name] < 1:
            raise LayerMergeError(f"{flag(name)} must be a positive integer")
    if given(options, "sampling_repeats") and options["sampling_repeats"] < 0:
        raise LayerMergeError("--sampling-repeats must be 0 (skip) or a positive integer")
    config = UNetMeasureConfig(
        samples=value_or(options, "samples", SAMPLES),
        sampling_steps=value_or(options, "sampling_steps", SAMPLING_STEPS),
        sampling_repeats=value_or(options, "sampling_repeats", SAMPLING_REPEATS),
        fd=bool(options.get("fd")),
        fd_samples=value_or(options, "fd_samples", FD_SAMPLES),
    )
    if config.fd and bundle.in_channels != 1:
        raise LayerMergeError("--fd measures digits; it needs a one-channel UNet")
    return config


def measure_extra(
    config: UNetMeasureConfig, original: nn.Module, compressed: nn.Module, *, threads: int | None
) -> dict[str, Any]:
    """DDIM sampling timed side by side and, with ``config.fd``, both UNets' digits FD."""
    sampling = None
    if config.sampling_repeats:
        sampling = _sampling_side_by_side(original, compressed, config, threads)
    quality = None
    if config.fd:
        from core.families.unet.quality import digits_fd
        from core.families.unet.sampling import ddim_sample
        from core.latency import torch_threads

        with torch_threads(threads):
            scores = {
                name: digits_fd(ddim_sample(net, config.fd_samples, steps=config.sampling_steps))
                for name, net in (("original", original), ("compressed", compressed))
            }
        quality = {
            "samples": config.fd_samples,
            "sampling_steps": config.sampling_steps,
            "original_fd": scores["original"],
            "compressed_fd": scores["compressed"],
            "kind": "Fréchet distance in digits_resnet features to the digits test split "
            "(not Inception FID)",
        }
    return {"sampling": sampling, "quality": quality}


# --------------------------------------------------------------------------- helpers


def _sampling_side_by_side(
    original: nn.Module, compressed: nn.Module, config: UNetMeasureConfig, threads: int | None
) -> dict[str, Any]:
    """DDIM sampling wall time of both UNets, alternating which goes first in each repeat."""
    from core.benchmark import alternate
    from core.families.unet.sampling import time_sampling
    from core.latency import torch_threads

    def timed(net: nn.Module) -> Callable[[], float]:
        return lambda: time_sampling(
            net, count=config.samples, steps=config.sampling_steps, repeats=1
        )

    with torch_threads(threads):
        times = alternate(
            {"original": timed(original), "compressed": timed(compressed)},
            repeats=config.sampling_repeats,
        )
    original_s = statistics.median(times["original"])
    compressed_s = statistics.median(times["compressed"])
    return {
        "samples": config.samples,
        "steps": config.sampling_steps,
        "repeats": config.sampling_repeats,
        "threads": threads or torch.get_num_threads(),
        "original_s": original_s,
        "compressed_s": compressed_s,
        "original_runs_s": times["original"],
        "compressed_runs_s": times["compressed"],
        "speedup": original_s / compressed_s,
    }


def _conv_roles(uchain: UNetChain) -> dict[int, str]:
    roles = {0: "in"}
    for block in uchain.blocks:
        roles[block.conv1], roles[block.conv2] = "conv1", "conv2"
    roles.update({p: "up" for p in uchain.upsample_convs})
    roles.update({p: "down" for p in uchain.downsample_convs})
    return {c.index: roles.get(c.index, "other") for c in uchain.chain.convs}


def _with_role(conv: dict[str, Any], role: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in conv.items():
        out[key] = value
        if key == "name":
            out["role"] = role
    return out


def _check_same_unet(loaded: Mapping[str, Any], bundle: UNetBundle, what: str) -> None:
    if _clean_config(loaded.get("config", {})) != _clean_config(bundle.config):
        raise LayerMergeError(
            f"{what} holds another UNet architecture than {bundle.name}; pass the MODEL it was "
            "made from"
        )


def _clean_config(config: Any) -> Any:
    if not isinstance(config, dict):
        return {}
    return jsonable({k: v for k, v in sorted(config.items()) if not str(k).startswith("_")})
