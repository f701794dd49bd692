"""The panel protocol and registry: the one part of each page that differs per model family.

A model family names its panel (``family.task.panel``: ``"accuracy"`` for classifiers,
``"samples"`` for diffusion UNets); a page asks ``pages._shared.panels`` for the panel of its
model (``current()``, or ``panel_of(job's model)``) and renders through it, so no page ever asks
which family it has. Each panel draws the same slots: the model summary, the tables settings,
the quality section of the Budget page, the finetune form and its results, and the export view.
A new family with a new task is one more panel module (registered with :func:`register_panel`,
imported by ``panels/__init__.py``); a family whose task fits an existing panel names that one
and needs no page code.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pandas as pd
import torch
from torch import nn

from core.errors import LayerMergeError
from core.solution import Solution
from pages._shared import caches
from pages._shared.jobs import Job
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import TablesInUse
from pages._shared.views import solution_rows

__all__ = [
    "DATA_KINDS",
    "ModelRequest",
    "ModelSource",
    "ExportView",
    "Panel",
    "register_panel",
    "panel_named",
    "list_panels",
]

DATA_KINDS = {  # the Model page's data choices: kind -> what the radio shows
    "digits": "Digits demo (bundled)",
    "folder": "Image folder",
    "cifar10": "CIFAR-10 folder",
}


@dataclass(frozen=True)
class ModelRequest:
    """What the Model page's form asks for, before anything is built or checked."""

    name: str  # a MODEL spelling: registry name, module:function, diffusers:PATH
    width: float
    input_size: int | None  # None: the model's default
    upload: Any  # an uploaded weights file (st.file_uploader's value), or None
    data_kind: str  # a DATA_KINDS key
    data_path: str
    # The session's uploaded weights (state_dict, weights_key, label), kept when no new file is
    # given for the same architecture: a resubmitted form never silently drops a user's weights.
    kept: tuple[dict[str, torch.Tensor], str, str] | None = None


@dataclass(frozen=True)
class ModelSource:
    """A way to name a model besides the registry: an Architecture entry with a text field.

    ``to_name`` turns the typed text into a MODEL spelling (LayerMergeError when unusable);
    ``text_of`` gives back the text for a name this source made ("" for any other name), so the
    form shows what the session uses.
    """

    option: str  # the Architecture select box entry, e.g. "module:function…"
    key: str  # widget key of its text field
    label: str
    placeholder: str
    help: str  # one line for the select box's help
    to_name: Callable[[str], str]
    text_of: Callable[[str], str]


@dataclass(frozen=True)
class ExportView:
    """What the Export page offers for download, as the panel drew it."""

    network: nn.Module  # the compressed network the downloads hold
    metrics: dict[str, Any]  # recorded in the checkpoint beside the tensors
    onnx: Callable[[], bytes]  # runs on click, in a thread: must not touch the session
    onnx_label: str
    notes: str  # what the files are and how to load them
    tag: str = "merged"  # in the file names: "finetuned" or "merged" (straight from the original)


class Panel(abc.ABC):
    """The family-specific slots of the pages; one stateless instance per panel name."""

    name: ClassVar[str]
    sources: ClassVar[tuple[ModelSource, ...]] = ()
    learn_note: ClassVar[str | None] = None  # the Learn page's word on this kind of model
    tables_cancel_label: ClassVar[str]
    tables_stopped_note: ClassVar[str]  # what is kept of a stopped tables job
    tables_saved_note: ClassVar[str]  # how the tables job saves its work
    speed_measurement: ClassVar[str] = "speed"  # the measurement kind quality_section times under

    # ------------------------------------------------------------------ Model page
    @abc.abstractmethod
    def choose(self, request: ModelRequest) -> tuple[ModelChoice, dict[str, torch.Tensor] | None]:
        """Build and check what ``request`` names; the new choice and its uploaded weights.

        Raises:
            LayerMergeError: anything unusable, with one line saying what and why.
        """

    @abc.abstractmethod
    def model_summary(self) -> None:
        """The session's model in numbers and pictures (its chain, and its quality)."""

    # ------------------------------------------------------------------ Tables page
    @abc.abstractmethod
    def tables_form(self) -> None:
        """The settings of a tables job and its start button."""

    @abc.abstractmethod
    def additivity_note(self, error: float) -> str:
        """Why the table sum differs from the measured network by ``error`` (a fraction)."""

    # ------------------------------------------------------------------ Budget page
    def solution_rows(self, solution: Solution) -> pd.DataFrame:
        """The merged network's layers, one row per segment."""
        return solution_rows(solution, caches.chain())

    @abc.abstractmethod
    def quality_section(self, solution: Solution, used: TablesInUse) -> None:
        """On request, the merged network measured beside its prediction (and its quality)."""

    def finetune_quality(self, result: dict[str, Any]) -> tuple[float | None, float | None]:
        """A completed finetune job's quality (the task's figure): before and after finetuning."""
        return None, None

    # ------------------------------------------------------------------ Finetune page
    @abc.abstractmethod
    def finetune_form(self, solution: Solution) -> None:
        """The finetune settings for ``solution`` and the button that starts the job."""

    @abc.abstractmethod
    def finetune_view(self, job: Job) -> None:
        """A finetune job's curves so far and, once done, its results.

        The job is ``pages._shared.jobs_finetune``'s, the same for every family (core's finetune
        workflow); what the view shows beyond its shared figures, the panel's form asked for
        with its result hook. A cancelled job resumes with ``jobs_finetune.resume_finetune``.
        """

    # ------------------------------------------------------------------ Export page
    @abc.abstractmethod
    def export_view(self, solution: Solution, used: TablesInUse) -> ExportView:
        """Draw how the compressed network compares with the original; what to download."""


_PANELS: dict[str, Panel] = {}
P = TypeVar("P", bound=type[Panel])


def register_panel(cls: P) -> P:
    """Register a :class:`Panel` subclass (a class decorator); one instance serves all pages.

    Raises:
        ValueError: a panel of that name is already registered.
    """
    if cls.name in _PANELS:
        raise ValueError(f"page panel {cls.name!r} is already registered")
    _PANELS[cls.name] = cls()
    return cls


def panel_named(name: str) -> Panel:
    """The panel registered as ``name``.

    Raises:
        LayerMergeError: no panel of that name (a family names a panel the pages lack).
    """
    if name not in _PANELS:
        raise LayerMergeError(
            f"the pages have no {name!r} panel for this model's family; they have "
            f"{', '.join(_PANELS)}"
        )
    return _PANELS[name]


def list_panels() -> list[Panel]:
    """Registered panels, in registration order."""
    return list(_PANELS.values())
