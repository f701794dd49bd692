"""Page panels, with the built-in ones registered: ``accuracy`` (classifiers), ``samples`` (UNets).

The protocol and registry live in :mod:`pages._shared.panels.base`; importing this package
registers the built-in panels, so pages import from here. Panel modules import the base module
only, never this package, which keeps imports acyclic (the same rule as ``core.families``).
"""

from __future__ import annotations

from core.families import ModelFamily, family_for
from pages._shared import state
from pages._shared.panels import accuracy, samples  # noqa: F401  (registration side effects)
from pages._shared.panels.base import (
    DATA_KINDS,
    ExportView,
    ModelRequest,
    ModelSource,
    Panel,
    list_panels,
    panel_named,
    register_panel,
)
from pages._shared.state import ModelChoice

__all__ = [
    "DATA_KINDS",
    "ExportView",
    "ModelRequest",
    "ModelSource",
    "Panel",
    "register_panel",
    "panel_named",
    "panel_for",
    "panel_of",
    "current",
    "model_sources",
    "source_of",
]


def panel_for(family: ModelFamily) -> Panel:
    """The panel ``family`` names for its task."""
    return panel_named(family.task.panel)


def panel_of(which: ModelChoice) -> Panel:
    """The panel of the model ``which`` names (a job's model, which may not be the session's)."""
    return panel_for(family_for(which.name))


def current() -> Panel:
    """The panel of the session's model."""
    return panel_of(state.choice())


def model_sources() -> list[ModelSource]:
    """Every panel's ways to name a model besides the registry, in registration order."""
    return [source for panel in list_panels() for source in panel.sources]


def source_of(name: str) -> ModelSource | None:
    """The source that made the MODEL spelling ``name``, or None (a registry name)."""
    return next((s for s in panel_for(family_for(name)).sources if s.text_of(name)), None)
