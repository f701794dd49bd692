"""The classifier family's part in the workflows: finetune settings and loop, finetuned weights.

``ClassifierFamily`` hands these to ``core.workflows`` (and so to the CLI verbs and the app's
jobs): how the CLI's finetune options become a :class:`~core.finetune.FinetuneConfig`, how the
loop of :mod:`core.finetune` runs and reports, and how ``compress --finetuned`` reads back the
finetune checkpoint, which is at once the resumable run state and the finetuned training form.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError
from core.families.base import FinetunedWeights, FinetuneReport, FinetuneRun
from core.families.options import refuse, value_or
from core.files import jsonable
from core.finetune import (
    FinetuneConfig,
    evaluate,
    finetune,
    load_finetune_checkpoint,
    network_from_finetune_checkpoint,
)
from core.models import ModelBundle
from core.network import StepNetwork

__all__ = [
    "STATE_NAME",
    "INTERIM_TEST_IMAGES",
    "finetune_config",
    "finetune_steps",
    "run_finetune",
    "interim_network",
    "interim_figures",
    "load_finetuned",
    "summary",
]

STATE_NAME = "checkpoint.pt"  # the finetune checkpoint inside a finetune output folder
INTERIM_TEST_IMAGES = 2000  # test images an evaluation mid-finetune reads (the final one: all)
_DEFAULTS = FinetuneConfig()
_MODELS = "classifiers"


def finetune_config(options: Mapping[str, Any]) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from the CLI's finetune options (``None``: the default).

    Raises:
        LayerMergeError: a UNet-only option, or a value out of range (``FinetuneConfigError``).
    """
    refuse(
        options,
        {
            "ema_decay": "",
            "eval_every": "",
            "cosine": "their learning rate always follows a cosine",
        },
        models=_MODELS,
    )
    return FinetuneConfig(
        optimizer=value_or(options, "optimizer", _DEFAULTS.optimizer),
        lr=value_or(options, "lr", _DEFAULTS.lr),
        weight_decay=value_or(options, "weight_decay", _DEFAULTS.weight_decay),
        momentum=value_or(options, "momentum", _DEFAULTS.momentum),
        epochs=value_or(options, "epochs", _DEFAULTS.epochs),
        steps=options.get("steps"),
        batch_size=value_or(options, "batch_size", _DEFAULTS.batch_size),
        warmup_fraction=value_or(options, "warmup", _DEFAULTS.warmup_fraction),
        label_smoothing=value_or(options, "label_smoothing", _DEFAULTS.label_smoothing),
        distill_alpha=value_or(options, "distill", _DEFAULTS.distill_alpha),
        distill_temperature=value_or(options, "temperature", _DEFAULTS.distill_temperature),
        grad_clip=options.get("grad_clip"),
        seed=value_or(options, "seed", _DEFAULTS.seed),
        device=value_or(options, "device", _DEFAULTS.device),
        checkpoint_every=value_or(options, "checkpoint_every", _DEFAULTS.checkpoint_every),
    )


def run_finetune(
    bundle: ModelBundle,
    training: StepNetwork,
    data: Any,
    config: FinetuneConfig,
    *,
    checkpoint: Path | None,
    metadata: Mapping[str, Any],
    progress: Callable[[FinetuneReport], None] | None,
    cancel: threading.Event | None,
) -> FinetuneRun:
    """:func:`core.finetune.finetune` on the finetune split, reduced to a :class:`FinetuneRun`.

    The checkpoint's metadata names the model first (name, width, input size, weights), then
    what the workflow adds (the solution, the figures measured before training).
    """
    result = finetune(
        training,
        data.finetune,
        config=config,
        teacher=bundle.model if config.distill_alpha > 0 else None,
        checkpoint_path=checkpoint,
        metadata={
            "model": bundle.name,
            "width": bundle.width,
            "input_size": bundle.input_size,
            "weights": bundle.weights_note,
            "weights_digest": bundle.weights_digest,
            **metadata,
        },
        progress=progress,
        cancel=cancel,
    )
    accuracy = result.accuracy if math.isfinite(result.accuracy) else None
    return FinetuneRun.of(
        result, network=result.network, device=result.device, figures={"train_accuracy": accuracy}
    )


def finetune_steps(config: FinetuneConfig, data: Any) -> int:
    """Steps the loop runs: ``config.steps``, else its epochs over the finetune split."""
    return config.steps or config.epochs * math.ceil(len(data.finetune) / config.batch_size)


def interim_network(state: Path, step: int) -> nn.Module | None:
    """The training form of the finetune checkpoint at ``state``, if written at ``step``.

    None when there is no readable checkpoint there yet or it holds another step (the loop wrote
    none at ``step``): an evaluation mid-run is a view, never a reason to stop the run.
    """
    try:
        saved = load_finetune_checkpoint(state)
    except LayerMergeError:
        return None
    if saved["step"] != step:
        return None
    return network_from_finetune_checkpoint(saved)


def interim_figures(network: nn.Module, data: Any) -> dict[str, float]:
    """Test accuracy and loss of a network mid-finetune, on the first INTERIM_TEST_IMAGES."""
    result = evaluate(network, data.test, limit=INTERIM_TEST_IMAGES)
    return {"accuracy": result.accuracy, "loss": result.loss}


def load_finetuned(source: str | Path, training: StepNetwork) -> FinetunedWeights:
    """The finetune checkpoint of a finetune folder (or the file), loaded into ``training``.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe or not a finetune checkpoint.
        LayerMergeError: it was made for another model or solution than ``training``'s.
    """
    path = Path(source)
    path = path / STATE_NAME if path.is_dir() else path
    checkpoint = load_finetune_checkpoint(path)
    if checkpoint["spec"] != jsonable(training.spec):
        raise LayerMergeError(
            f"finetune checkpoint {path} was made for another model or solution than the ones "
            "given; pass the same MODEL, --width, --input-size and --solution as to finetune"
        )
    training.load_state_dict(checkpoint["state_dict"], strict=True)
    metadata = checkpoint["metadata"]
    metrics = metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {}
    return FinetunedWeights(
        network=training,
        path=path,
        status=f"{checkpoint['status']} at step {checkpoint['step']}/{checkpoint['total_steps']}",
        metrics={
            "finetune_steps": checkpoint["step"],
            "finetune_total_steps": checkpoint["total_steps"],
            **json.loads(json.dumps(metrics)),
        },
    )


def summary(network: nn.Module, chain: Chain) -> dict[str, int]:
    """Parameters, conv layers and depth; an unmerged original's depth is its chain's convs."""
    from core.families.classifier.checkpoint import network_metrics

    metrics = network_metrics(network)
    if not isinstance(network, StepNetwork):
        metrics["depth"] = len(chain.convs)
    return metrics
