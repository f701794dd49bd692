"""The control of a finetune: the uncompressed original, finetuned with the same recipe, cached.

A compressed network's "gain" after finetuning may be partly the finetune's own: training on a
slightly different data distribution can raise the original itself by points. The honest
comparison is against the original finetuned the same way — same data, steps, learning rate,
batch and seed. This module runs that control through the family protocol alone: the original's
training form is the family's training form of the keep-everything solution (every conv and
activation kept), trained by the family's own finetune loop and scored by its own evaluation, so
a classifier's accuracy and a UNet's ε-loss are compared alike.

A control costs as much as the finetune itself, so it is kept in a cache folder under a key made
of the original (model, chain and weights digests), the data (canonical spec and digest) and the
recipe (the finetune settings, without the checkpoint interval, which does not change the
result). Finetuning another solution of the same model with the same recipe reuses it; a
cancelled control resumes from its run state there.

Example:
    >>> control = finetune_control(model, data, config, cache="runs/controls")  # doctest: +SKIP
    >>> control.figures["accuracy"], control.reused  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.errors import LayerMergeError
from core.families import FinetuneReport, ModelFamily
from core.files import atomic_write_text, jsonable
from core.segments import keep_everything_solution
from core.workflows.model import LoadedModel
from core.workflows.outputs import output_dir

__all__ = [
    "CONTROL_RESULT_NAME",
    "CONTROL_FIGURE",
    "ControlOutcome",
    "control_key",
    "default_control_cache",
    "finetune_control",
    "compressed_vs_control",
    "compare_figures",
]

CONTROL_RESULT_NAME = "control.json"  # a completed control's figures, inside its cache folder
CONTROL_FIGURE = "{}_control"  # the metrics key of a control figure ({} is the figure's name)
# settings that change neither batches nor weights: left out of the cache key
_RESULT_NEUTRAL = frozenset({"checkpoint_every"})
_KEY_LENGTH = 16


@dataclass(frozen=True)
class ControlOutcome:
    """The original finetuned with a finetune's recipe: its figures, and where it is kept."""

    key: str  # the cache key (original + data + recipe)
    folder: Path  # its cache folder: run state and control.json
    status: str  # "completed" or "cancelled"
    step: int
    total_steps: int
    reused: bool  # read from the cache: no training ran in this call
    train_seconds: float  # this call's training time (0 when reused)
    figures: Mapping[str, float]  # the family's evaluation of the finetuned original
    network: nn.Module | None  # the finetuned original; None when reused or cancelled

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: what the finetune summary and metrics.json record of the control."""
        return {
            "key": self.key,
            "folder": str(self.folder),
            "status": self.status,
            "step": self.step,
            "total_steps": self.total_steps,
            "reused": self.reused,
            "train_seconds": round(self.train_seconds, 2),
            "figures": dict(self.figures),
        }


def default_control_cache(out: str | Path) -> Path:
    """Where controls are kept by default: ``controls/`` beside a finetune output folder.

    Finetunes of several solutions written side by side (``runs/ft-a``, ``runs/ft-b``) share it,
    which is what lets one control serve them all.
    """
    return Path(out).expanduser().resolve().parent / "controls"


def control_key(model: LoadedModel, data: Any, config: Any) -> str:
    """The cache key of a control: the original's digests, the data's, and the recipe."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in _RESULT_NEUTRAL}
    fields = {
        "family": model.family.name,
        "model": model.bundle.name,
        "width": getattr(model.bundle, "width", None),
        "input_size": getattr(model.bundle, "input_size", None),
        "weights_digest": model.bundle.weights_digest,
        "chain_digest": model.traced.digest(),
        "data": data.name,
        "data_digest": data.digest,
        "recipe": jsonable(recipe, what="the finetune settings"),
    }
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_KEY_LENGTH]


def finetune_control(
    model: LoadedModel,
    data: Any,
    config: Any,
    *,
    cache: str | Path,
    progress: Callable[[FinetuneReport], None] | None = None,
    cancel: threading.Event | None = None,
) -> ControlOutcome:
    """Finetune the original with ``config`` and evaluate it, or reuse the cached result.

    Args:
        model: the original model (only read: its training form is a new module).
        data: the family's data, the same the compressed network was finetuned on.
        config: the family's finetune settings, the same the compressed network used.
        cache: the folder controls are kept in (created); each control has its own subfolder.
        progress: called after every step of the control's loop (never when reused).
        cancel: once set, the loop stops before its next step with its state saved.

    Raises:
        LayerMergeError: a run state of other options in the cache folder, a folder not
            writable, a family without finetune.
    """
    family, bundle, traced = model.family, model.bundle, model.traced
    key = control_key(model, data, config)
    folder = output_dir(Path(cache) / key)
    cached = _read_result(folder / CONTROL_RESULT_NAME, key)
    if cached is not None:
        return ControlOutcome(
            key=key,
            folder=folder,
            status="completed",
            step=cached["step"],
            total_steps=cached["total_steps"],
            reused=True,
            train_seconds=0.0,
            figures=cached["figures"],
            network=None,
        )
    keep = keep_everything_solution(model.chain)
    training = family.training_form(bundle.model, traced, keep)
    run = family.finetune(
        bundle,
        traced,
        training,
        data,
        config,
        checkpoint=family.finetune_state_path(folder),
        metadata={"control": True, "solution": keep.to_dict(), "control_key": key},
        progress=progress,
        cancel=cancel,
    )
    figures: dict[str, float] = {}
    if run.status == "completed":
        figures = dict(family.evaluate(run.network, data))
        result = {
            "key": key,
            "model": bundle.name,
            "weights_digest": bundle.weights_digest,
            "data": data.name,
            "config": config.to_dict(),
            "step": run.step,
            "total_steps": run.total_steps,
            "figures": figures,
        }
        text = json.dumps(jsonable(result, what="the control's figures"), indent=2)
        atomic_write_text(folder / CONTROL_RESULT_NAME, text, what="the control's figures")
    return ControlOutcome(
        key=key,
        folder=folder,
        status=run.status,
        step=run.step,
        total_steps=run.total_steps,
        reused=False,
        train_seconds=run.elapsed_s,
        figures=figures,
        network=run.network if run.status == "completed" else None,
    )


def compressed_vs_control(family: ModelFamily, metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """:func:`compare_figures` of a finetune's metrics, read under the family's keys.

    The original's figures, the compressed network's (merged, else finetuned) and, when a
    control ran, its figures (:data:`CONTROL_FIGURE`), as ``ModelFamily.metric_names`` names
    them. None when one of the first two is missing (a cancelled run).
    """
    names = family.metric_names("finetune")
    stage = "merged" if "merged" in names else "finetuned"
    if stage not in names or "original" not in names:
        return None

    def stage_figures(template: str) -> dict[str, Any]:
        return {name: metrics.get(template.format(name)) for name in family.figures()}

    return compare_figures(
        family,
        original=stage_figures(names["original"]),
        compressed=stage_figures(names[stage]),
        control=stage_figures(CONTROL_FIGURE),
    )


def compare_figures(
    family: ModelFamily,
    *,
    original: Mapping[str, Any],
    compressed: Mapping[str, Any],
    control: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The compressed network's quality figure against the original's and the control's.

    The figures are the family's evaluation (``ModelFamily.evaluate``) of each network; the
    quality figure is the first of ``ModelFamily.figures``. Returns None when the family names
    no figures or the original's or compressed network's figure is missing.

    The ``line`` reads, for a classifier: "test accuracy: compressed 96.10% = original 98.30%
    −2.20%; control (original finetuned the same way) 98.90% → −2.80% vs control".
    """
    shown = family.figures()
    if not shown:
        return None
    quality = next(iter(shown))
    label, spec = shown[quality]
    before = _number(original.get(quality))
    after = _number(compressed.get(quality))
    if before is None or after is None:
        return None
    reference = None if control is None else _number(control.get(quality))
    better = "" if family.task.higher_is_better else " (lower is better)"
    line = (
        f"{label}{better}: compressed {spec.format(after)} = original "
        f"{spec.format(before)} {_signed(after - before, spec)}"
    )
    if reference is not None:
        line += (
            f"; control (original finetuned the same way) {spec.format(reference)} → "
            f"{_signed(after - reference, spec)} vs control"
        )
    return {
        "figure": quality,
        "label": label,
        "higher_is_better": family.task.higher_is_better,
        "original": before,
        "compressed": after,
        "vs_original": after - before,
        "control": reference,
        "vs_control": None if reference is None else after - reference,
        "line": line,
    }


def _signed(delta: float, spec: str) -> str:
    """``delta`` in the figure's format with its sign (a true minus sign)."""
    return ("+" if delta >= 0 else "−") + spec.format(abs(delta))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _read_result(path: Path, key: str) -> dict[str, Any] | None:
    """A completed control's figures, when ``path`` holds them under ``key`` (else None)."""
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LayerMergeError(f"the control's figures {path} cannot be read: {exc}") from exc
    if not isinstance(loaded, dict) or loaded.get("key") != key:
        return None
    figures = loaded.get("figures")
    step, total = loaded.get("step"), loaded.get("total_steps")
    if (
        not isinstance(figures, dict)
        or not all(_number(v) is not None for v in figures.values())
        or not isinstance(step, int)
        or not isinstance(total, int)
    ):
        return None
    return {
        "figures": {k: float(v) for k, v in figures.items()},
        "step": step,
        "total_steps": total,
    }
