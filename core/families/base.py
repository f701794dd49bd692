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
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError
from core.families.options import refuse
from core.files import read_untrusted_checkpoint
from core.segments import Segment
from core.solution import Solution
from core.speed import StructureCost

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
    "checkpoint_formats",
    "FinetuneReport",
    "FinetuneRun",
    "FinetunedWeights",
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


class FinetuneReport(Protocol):
    """What every family's finetune loop reports after each step (its own dataclass has more)."""

    step: int  # steps done, over every resume
    total_steps: int

    @property
    def eta_s(self) -> float | None: ...  # estimated seconds left

    def readout(self) -> str:
        """The figures a progress bar shows after ``step/total`` ("loss 0.1234 acc 93.1%")."""
        ...


@dataclass(frozen=True)
class FinetuneRun:
    """How a family's finetune loop ended, in the terms every family shares.

    The loops themselves (``core.finetune.finetune``, ``core.families.unet.finetune.finetune_unet``)
    return richer results; :meth:`ModelFamily.finetune` reduces them to this, which is all the
    finetune workflow needs.
    """

    network: nn.Module  # the finetuned training form: a new module or the one given, CPU, eval
    status: str  # "completed" or "cancelled"
    step: int  # steps done, over every resume
    total_steps: int
    resumed_from: int  # the step this call started from (0 when fresh)
    loss: float  # the last mean training loss (nan when no step was ever taken)
    elapsed_s: float  # seconds this call ran
    device: str
    figures: Mapping[str, float | None]  # more training figures the summary shows, by key

    @classmethod
    def of(
        cls, result: Any, *, network: nn.Module, device: str, figures: Mapping[str, float | None]
    ) -> FinetuneRun:
        """The run a loop's own result describes (it has ``status``, ``step``, ``total_steps``,
        ``resumed_from``, ``loss`` and ``elapsed_s``), with what only the family knows."""
        return cls(
            network=network,
            status=result.status,
            step=result.step,
            total_steps=result.total_steps,
            resumed_from=result.resumed_from,
            loss=result.loss,
            elapsed_s=result.elapsed_s,
            device=device,
            figures=figures,
        )


@dataclass(frozen=True)
class FinetunedWeights:
    """A finetuned training form read back from a finetune run (``compress --finetuned``)."""

    network: nn.Module  # the training form holding the finetuned weights
    path: Path  # the file read
    status: str | None  # how the run stood, for people ("completed at step 4/4")
    metrics: Mapping[str, Any]  # the run's figures, carried into the compressed checkpoint


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
    def states_input_size(self, model: str) -> bool:
        """Whether ``model`` fixes its own input size; if not, the size follows the data."""
        return True

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
        self,
        network: nn.Module,
        bundle: Any,
        traced: Any,
        solution: Solution,
        *,
        metrics: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A compressed checkpoint of ``network`` (the solution's merged network): plain tensors
        and JSON-able values only, so ``torch.load(weights_only=True)`` reads it back."""

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
        """The data ``spec`` names, shaped for ``bundle``'s model: its splits (train/holdout/test,
        as the family's estimators and evaluation read them), ``name`` (the canonical spec) and
        ``digest`` (a content digest that table cache keys hold)."""

    @abc.abstractmethod
    def evaluate(self, network: nn.Module, data: Any) -> dict[str, float]:
        """The task's figures for ``network`` on the held-out test split (``task.quality`` first)."""

    # ------------------------------------------------------------------ the workflows' parts
    # What core.workflows and the CLI verbs ask of a family beyond the core protocol. Each default
    # suits a family whose networks take one image tensor, so a family overrides what differs.

    def trace_model(self, model: nn.Module, *, input_size: int | None = None) -> Any:
        """Trace a bare module of this family (``core.flow.compress`` has no bundle)."""
        raise LayerMergeError(f"the {self.name} family cannot trace a bare module")

    def describe_chain(
        self, bundle: Any, traced: Any, description: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``chain`` verb's JSON-able description, with this family's own fields added."""
        return description

    def result_fields(self) -> dict[str, Any]:
        """Fields every CLI result about this family's models carries (none by default)."""
        return {}

    def network_summary(self, network: nn.Module, traced: Any) -> dict[str, int]:
        """Parameters, conv layers and main-path depth of an original, training or merged network."""
        convs = sum(isinstance(m, nn.Conv2d) for m in network.modules())
        params = sum(p.numel() for p in network.parameters())
        return {"params": int(params), "conv_count": int(convs), "depth": int(convs)}

    def figures(self) -> dict[str, tuple[str, str]]:
        """The figures :meth:`evaluate` returns, in its order: name -> (label, format spec)."""
        return {}

    def metric_names(self, job: str) -> dict[str, str]:
        """Where ``job`` (``"compress"`` or ``"finetune"``) records each network's figures.

        Stages: ``original`` (the model given), ``surgery`` (the training form before
        finetuning), ``finetuned`` (after it) and ``merged``, each mapped to a metrics key
        template whose ``{}`` is a figure name of :meth:`evaluate`. A stage left out is not
        evaluated. The keys are part of metrics.json and the checkpoints, so they never change.
        """
        if job == "finetune":
            return {"original": "{}_before", "surgery": "{}_after_surgery", "merged": "{}_after"}
        return {"original": "{}_before", "merged": "{}_after"}

    def export_onnx(self, network: nn.Module, path: Path, traced: Any) -> Path:
        """Write ``network`` as ONNX (inputs named as :meth:`onnx_inputs`), checked against ORT."""
        raise LayerMergeError(f"the {self.name} family has no ONNX export")

    def finetune_state_path(self, out: Path) -> Path:
        """The resumable run state inside a finetune output folder ``out``."""
        return out / "checkpoint.pt"

    def finetune_config(self, options: Mapping[str, Any], data: Any) -> Any:
        """This family's finetune settings from the CLI's options (``core.families.options``).

        The result has ``to_dict()`` (recorded in metrics.json) and goes to :meth:`finetune`.

        Raises:
            LayerMergeError: an option that does not apply, or a value out of range.
        """
        raise LayerMergeError(f"the {self.name} family has no finetune")

    def finetune(
        self,
        bundle: Any,
        traced: Any,
        training: nn.Module,
        data: Any,
        config: Any,
        *,
        checkpoint: Path | None,
        metadata: Mapping[str, Any],
        progress: Callable[[FinetuneReport], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> FinetuneRun:
        """Finetune the training form on ``data``, resuming from ``checkpoint`` when it exists.

        The loop writes its run state to ``checkpoint`` as it goes, reports each step to
        ``progress``, and stops cleanly (state saved, status ``"cancelled"``) once ``cancel`` is
        set. ``metadata`` (JSON-able) is stored with the state where the format keeps it.
        """
        raise LayerMergeError(f"the {self.name} family has no finetune")

    # What a view needs to watch a finetune while it runs (the app's curves): by default one
    # training loss per step, and no evaluation beyond the loop's own.
    def curve_point(self, report: FinetuneReport) -> tuple[dict[str, float | None], bool]:
        """One point of a finetune's live curves: figures by name, and whether it is a measured one.

        A measured point (a held-out loss the loop computed at this step) is one a view keeps
        when it thins the ordinary per-step points of a long run.
        """
        loss = getattr(report, "loss", None)
        return {"loss": float(loss) if isinstance(loss, int | float) else None}, False

    def finetune_steps(self, config: Any, data: Any) -> int | None:
        """Steps a finetune with ``config`` runs on ``data``, for a family that evaluates its run
        states while it trains (:meth:`interim_network`); None for one that does not.

        The finetune workflow then writes the run state at the evaluations' interval (the
        config's ``checkpoint_every``, which changes neither batches nor weights).
        """
        return None

    def interim_network(self, state: Path, step: int) -> nn.Module | None:
        """The training form the run state ``state`` holds, if the loop wrote it at ``step``."""
        return None

    def interim_figures(self, network: nn.Module, data: Any) -> dict[str, float]:
        """Quick figures of a network mid-finetune (by default the full :meth:`evaluate`)."""
        return self.evaluate(network, data)

    def save_finetuned(
        self,
        network: nn.Module,
        bundle: Any,
        traced: Any,
        solution: Solution,
        out: Path,
        *,
        metrics: Mapping[str, Any],
    ) -> Path:
        """Keep the finetuned training form in ``out`` for ``compress --finetuned``; its path.

        By default the run state of :meth:`finetune` already holds it, so nothing is written.
        """
        return self.finetune_state_path(out)

    def load_finetuned(
        self, source: str | Path, training: nn.Module, bundle: Any, traced: Any, solution: Solution
    ) -> FinetunedWeights:
        """The finetuned training form of a finetune output folder (or its file), checked to fit.

        Raises:
            UnsafeCheckpointError: unreadable or unsafe.
            LayerMergeError: made for another model or solution.
        """
        raise LayerMergeError(f"the {self.name} family has no finetune")

    def speed_baseline(
        self, bundle: Any, traced: Any, baseline: str | None
    ) -> tuple[nn.Module, str]:
        """The original network a speed-up is measured against, and how to call it.

        ``baseline`` is the bench's ``--baseline`` (None: the family's default).
        """
        if baseline not in (None, "module"):
            raise LayerMergeError(f"--baseline {baseline} does not apply to {self.name} models")
        return bundle.model, "original module"

    def bench_backends(self) -> tuple[str, ...]:
        """The backends a bench times on by default."""
        return ("torch", "onnxruntime")

    def timing_module(self, network: nn.Module) -> nn.Module:
        """``network`` as a module of one tensor in, one out, which the benchmark can time."""
        return network

    def load_compressed(self, source: str | Path, bundle: Any, traced: Any) -> nn.Module:
        """A compressed checkpoint of this family, checked to fit ``bundle``'s model.

        Raises:
            UnsafeCheckpointError: unreadable, unsafe or of another family's format.
            LayerMergeError: a checkpoint of another model.
        """
        loaded, name = read_untrusted_checkpoint(source)
        return self.from_checkpoint(loaded, name=name)

    def measure_config(self, options: Mapping[str, Any], bundle: Any) -> Any:
        """The settings of this family's extra bench measurements, from the CLI's options.

        Raises:
            LayerMergeError: an option that does not apply, or a value out of range.
        """
        refuse(options, dict.fromkeys(options, ""), models=f"{self.name} models")
        return None

    def measure_extra(
        self, config: Any, original: nn.Module, compressed: nn.Module, *, threads: int | None
    ) -> dict[str, Any]:
        """Measurements beside the speed table (a UNet's sampling time), as JSON-able fields."""
        return {}

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

    # ------------------------------------------------------------------ speed
    # What the speed model (core.speed) needs beyond the table: the costs of the network that
    # a merge changes outside the table's entries, timed at profile time (core.latency).
    structure_complete: ClassVar[bool] = False  # the costs and the table cover the whole network

    def structure_costs(self, traced: Any) -> tuple[StructureCost, ...]:
        """The structure costs of ``traced`` (:class:`core.speed.StructureCost`).

        By default none: every entry times exactly what the network runs at its segment, and
        what lies outside the table never changes (it cancels in the prediction). A family whose
        merges absorb residual adds, or whose entries time an activation the network may not
        run, lists those costs here; with ``structure_complete`` it also lists the fixed ones
        (stem, head), so the keep-everything sum can be checked against the measured network.
        """
        return ()

    # ------------------------------------------------------------------ training data
    def data_problem(self, spec: str, bundle: Any) -> str | None:
        """Why the data ``spec`` cannot train ``bundle``'s model (importance, finetuning), or None.

        Asked before a long job starts (the app's forms, :func:`core.workflows.tables.importance`)
        so a mismatch is one line up front, not an error minutes into a run. By default None: a
        family whose ``load_data`` shapes any data for its models needs no check.
        """
        return None


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


def checkpoint_formats() -> list[str]:
    """The ``format`` of each registered family's compressed checkpoints (for error messages)."""
    return [f.checkpoint_format for f in _FAMILIES.values()]


def list_models() -> list[str]:
    """Every registry name of every family, sorted: what ``MODEL`` may be besides a path."""
    from core.models import list_models as classifier_models

    return sorted({*classifier_models(), *family_model_names()})
