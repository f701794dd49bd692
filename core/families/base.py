"""The model-family protocol and its registry (import from :mod:`core.families`).

Model families: what differs between a classification CNN and a diffusion UNet, and nothing else.

A family is a plug-in (DESIGN.md, "Model families"). It says how to build or load a model, trace
it to a LayerMerge :class:`~core.chain.Chain`, make the training form of a solution, merge it,
measure the merge error, write and read a checkpoint of plain tensors, which inputs an ONNX export
takes, and which task the model serves (data, loss, evaluation, and the panel a page shows).
Everything else — tables, the DP, finetuning, export, the CLI verbs and the pages — is written once
against :class:`ModelFamily`, and asks :func:`family_for` instead of testing names itself.

A new family is one folder plus one registration::

    @register_family
    class AutoencoderFamily(ClassifierFamily):
        name = "autoencoder"
        def claims(self, model: str) -> bool:
            return model == "tiny_autoencoder"

Families are asked in reverse order of registration, so a family registered later (a user's, a
test's) can claim a name before the built-in classifier family, which claims everything else
(registry names and ``module:function``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from core.chain import Chain
from core.segments import Segment
from core.solution import Solution

__all__ = [
    "ModelFamily",
    "TaskInfo",
    "TableNotes",
    "register_family",
    "unregister_family",
    "family_for",
    "family_named",
    "list_families",
    "family_model_names",
    "list_models",
    "family_for_checkpoint",
]


@dataclass(frozen=True)
class TaskInfo:
    """What a family's models are for, in the words pages and the CLI show.

    ``quality`` names the figure its evaluation leads with (``accuracy``, ``ε-loss``);
    ``higher_is_better`` says which way it improves; ``panel`` names the page panel that shows a
    network's quality (an accuracy panel, a sample grid), looked up by the pages' panel registry.
    """

    name: str
    quality: str
    higher_is_better: bool
    panel: str


@dataclass(frozen=True)
class TableNotes:
    """Family-specific words in the tables' outputs (CLI text, pages): data, never a branch.

    ``model`` follows a model's name (``diffusion UNet``); ``network`` names what the whole-network
    timing runs (``UNet``); ``latency`` says what that timing is and what the latency table leaves
    out of it.
    """

    model: str = ""
    network: str = "network"
    latency: str = ""


class ModelFamily(abc.ABC):
    """The protocol one family implements. Instances are stateless singletons.

    ``bundle`` is whatever :meth:`load` returns (it has ``model``, ``name``, ``input_size``,
    ``weights_note`` and ``weights_digest``); ``traced`` is whatever :meth:`trace` returns (it
    has ``digest()``, and :meth:`chain_of` gives its LayerMerge chain). Generic code passes both
    back to the family without looking inside.
    """

    name: ClassVar[str]
    task: ClassVar[TaskInfo]
    checkpoint_format: ClassVar[str]  # the "format" field of this family's compressed checkpoints

    # ------------------------------------------------------------------ models
    @abc.abstractmethod
    def claims(self, model: str) -> bool:
        """True when this family handles the MODEL spelling ``model``."""

    def model_names(self) -> list[str]:
        """Registry names this family adds to :func:`core.models.list_models` (none by default)."""
        return []

    @abc.abstractmethod
    def load(
        self,
        model: str,
        *,
        weights: str | Path | Mapping[str, torch.Tensor] | None = None,
        width: float = 1.0,
        input_size: int | None = None,
    ) -> Any:
        """Build ``model`` with its weights read safely; bad input raises ``LayerMergeError``."""

    # ------------------------------------------------------------------ structure
    @abc.abstractmethod
    def trace(self, bundle: Any) -> Any:
        """Trace the bundle's model into this family's traced form."""

    @abc.abstractmethod
    def chain_of(self, traced: Any) -> Chain:
        """The LayerMerge chain inside ``traced`` (what segments, tables and the DP use)."""

    @abc.abstractmethod
    def segments(self, traced: Any) -> tuple[Segment, ...]:
        """The valid segments and kernel options of ``traced`` (one per latency-table group)."""

    @abc.abstractmethod
    def training_form(self, model: nn.Module, traced: Any, solution: Solution) -> nn.Module:
        """A new module: ``model`` with the solution's activations and convs removed (trainable)."""

    @abc.abstractmethod
    def merge(self, training: nn.Module, traced: Any, solution: Solution) -> nn.Module:
        """A new module: the training form with each segment merged into one conv (eval mode)."""

    @abc.abstractmethod
    def merge_error(self, training: nn.Module, merged: nn.Module, traced: Any) -> float:
        """Largest relative difference between the two networks' outputs on a seeded input."""

    # ------------------------------------------------------------------ checkpoints and export
    @abc.abstractmethod
    def checkpoint(
        self, network: nn.Module, traced: Any, solution: Solution, **metadata: Any
    ) -> dict[str, Any]:
        """A compressed checkpoint of ``network``: plain tensors and JSON-able values only."""

    @abc.abstractmethod
    def from_checkpoint(
        self, checkpoint: Mapping[str, Any], *, name: str = "checkpoint"
    ) -> nn.Module:
        """Rebuild the network of a checkpoint this family wrote (validated, nothing unpickled)."""

    @abc.abstractmethod
    def onnx_inputs(self, traced: Any) -> dict[str, torch.Tensor]:
        """Named example inputs for an ONNX export of this family's networks."""

    # ------------------------------------------------------------------ task
    @abc.abstractmethod
    def load_data(self, spec: str, bundle: Any, traced: Any, *, seed: int = 0) -> Any:
        """The data ``spec`` names, shaped for ``bundle``'s model (train/holdout/test splits)."""

    @abc.abstractmethod
    def evaluate(self, network: nn.Module, data: Any) -> dict[str, float]:
        """The task's figures for ``network`` on the held-out test split (``task.quality`` first)."""

    # ------------------------------------------------------------------ tables
    # What the latency and importance tables need to know about a family; the table store, the
    # entry runner and the tables workflow are written once against these.
    table_notes: ClassVar[TableNotes] = TableNotes()
    latency_devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # where its tables are timed

    @abc.abstractmethod
    def table_fields(self, bundle: Any, traced: Any) -> dict[str, Any]:
        """What a table's meta.json records about the model (JSON-able).

        At least ``model``, ``width``, ``input_size``, ``input_shape`` and ``activation`` (what
        every timed entry ends with: part of the latency cache key), plus any family extras.
        """

    def scored_segments(self, traced: Any) -> tuple[Segment, ...]:
        """The segments and options the importance table scores; by default :meth:`segments`.

        A family whose layer-only baseline removes single convs adds those removals here.
        """
        return self.segments(traced)

    @abc.abstractmethod
    def latency_geometry(self, traced: Any, segment: Segment, option: Any) -> dict[str, Any]:
        """What the merged network runs for one table entry that is not a removal, as JSON.

        Entries with equal geometries are timed once: the geometry is the timing's cache key,
        and all a worker needs to build the module (:meth:`latency_module`). A removal option
        of :meth:`segments` is an identity segment: nothing runs, its latency is 0.
        """

    @abc.abstractmethod
    def latency_module(self, geometry: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
        """The module ``geometry`` describes, with seeded random weights, in eval mode, and the
        shape of one input sample (the batch is the latency config's)."""

    def timed_network(self, model: nn.Module) -> nn.Module:
        """The whole network as the latency table times it: one tensor in, one tensor out."""
        return model

    @abc.abstractmethod
    def importance_config(self, **options: Any) -> Any:
        """This family's importance settings from the generic options (None: its default).

        Options are named as :class:`core.importance.ImportanceConfig`'s fields (``mode``,
        ``steps``, ``lr``, ``batch_size``, ``normalization``, ``reinit_single``,
        ``eval_images``, ``calibration_images``, ``seed``, ``data_seed``, ...).

        Raises:
            LayerMergeError: an option that does not apply to this family, or a bad value.
        """

    @abc.abstractmethod
    def importance_estimator(self, mode: str) -> type:
        """The :class:`core.importance.ImportanceEstimator` subclass that scores ``mode``."""

    @abc.abstractmethod
    def recipe(self, bundle: Any, *, portable: bool = False) -> Any:
        """What a worker process needs to rebuild ``bundle``: small, picklable, with ``build()``
        (which checks the weights digest). ``portable`` carries the weights as bytes, for
        workers that cannot read this machine's files."""


_FAMILIES: dict[str, ModelFamily] = {}
F = TypeVar("F", bound=type[ModelFamily])


def register_family(cls: F) -> F:
    """Register a :class:`ModelFamily` subclass (a class decorator); one instance serves all.

    Raises:
        ValueError: a family of that name is already registered.
    """
    name = cls.name
    if name in _FAMILIES:
        raise ValueError(f"model family {name!r} is already registered")
    _FAMILIES[name] = cls()
    return cls


def unregister_family(name: str) -> None:
    """Remove a family (tests that register a toy family clean up with this)."""
    _FAMILIES.pop(name, None)


def list_families() -> list[str]:
    """Registered family names, in registration order."""
    return list(_FAMILIES)


def family_named(name: str) -> ModelFamily:
    """The family registered as ``name`` (a ``ValueError`` names the registered ones)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_for(model: str) -> ModelFamily:
    """The family that handles the MODEL spelling ``model`` (the latest registered claim wins)."""
    for family in reversed(list(_FAMILIES.values())):
        if family.claims(model):
            return family
    raise ValueError(f"no model family claims {model!r}")  # the classifier family claims all


def family_model_names() -> list[str]:
    """Registry names that families other than the classifier add to the model list."""
    names: list[str] = []
    for family in _FAMILIES.values():
        names.extend(family.model_names())
    return names


def family_for_checkpoint(checkpoint_format: Any) -> ModelFamily | None:
    """The family whose compressed checkpoints carry ``format == checkpoint_format`` (or None)."""
    return next((f for f in _FAMILIES.values() if f.checkpoint_format == checkpoint_format), None)


def list_models() -> list[str]:
    """Every registry name of every family, sorted: what ``MODEL`` may be besides a path."""
    from core.models import list_models as classifier_models

    return sorted({*classifier_models(), *family_model_names()})
