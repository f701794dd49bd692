"""The family's task evaluation of a network, and the figures a job records at each stage.

A classifier is scored by test accuracy and loss, a diffusion UNet by its holdout ε-loss: which
figures, and under which metrics keys each job records them, is the family's to say
(``ModelFamily.evaluate``, ``ModelFamily.metric_names``); this module only asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from core.families import ModelFamily
from core.workflows.model import LoadedModel

__all__ = ["TaskEvaluation", "evaluate", "stage_metrics"]


@dataclass(frozen=True)
class TaskEvaluation:
    """A network's figures on its task, the family's quality figure first."""

    figures: Mapping[str, float]  # e.g. {"accuracy": 97.2, "loss": 0.09} or {"eps_loss": 31.4}
    quality: str  # what the first figure is called ("accuracy", "ε-loss")
    higher_is_better: bool

    @property
    def value(self) -> float:
        """The quality figure."""
        return next(iter(self.figures.values()))


def evaluate(model: LoadedModel, data: Any, network: nn.Module | None = None) -> TaskEvaluation:
    """Score ``network`` (by default the model itself) on ``data``'s held-out split.

    Args:
        model: the loaded model, whose family defines the task.
        data: the family's data (``core.workflows.model.load_data``).
        network: the original, a training form or a merged network of ``model``; it is only
            read (evaluated in eval mode, on a copy where its mode would change).
    """
    network = model.bundle.model if network is None else network
    task = model.family.task
    return TaskEvaluation(
        figures=dict(model.family.evaluate(network, data)),
        quality=task.quality,
        higher_is_better=task.higher_is_better,
    )


def stage_metrics(
    family: ModelFamily, job: str, stage: str, network: nn.Module, data: Any
) -> dict[str, float]:
    """``network``'s figures under the keys ``job`` records them at ``stage`` (none if unused).

    Args:
        family: the model's family, which names the keys (``ModelFamily.metric_names``).
        job: ``"compress"`` or ``"finetune"``.
        stage: ``"original"``, ``"surgery"``, ``"finetuned"`` or ``"merged"``.
        network: the network of that stage.
        data: the family's data.
    """
    template = family.metric_names(job).get(stage)
    if template is None:
        return {}
    return {template.format(name): value for name, value in family.evaluate(network, data).items()}
