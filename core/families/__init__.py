"""Model families, with the built-in ones registered: ``classifier`` (CNNs) and ``unet`` (diffusion).

The protocol and registry live in :mod:`core.families.base`; importing this package registers the
built-in families, so ``from core.families import family_for`` always sees them. Family modules
import :mod:`core.families.base` only, never this package, which keeps imports acyclic.
"""

from __future__ import annotations

from core.families import classifier, unet  # noqa: F401  (registration side effects)
from core.families.base import (
    FinetunedWeights,
    FinetuneReport,
    FinetuneRun,
    ModelFamily,
    TableNotes,
    TaskInfo,
    checkpoint_formats,
    family_for,
    family_for_checkpoint,
    family_model_names,
    family_named,
    list_families,
    list_models,
    register_family,
    unregister_family,
)

__all__ = [
    "checkpoint_formats",
    "ModelFamily",
    "TaskInfo",
    "TableNotes",
    "register_family",
    "unregister_family",
    "family_for",
    "family_for_checkpoint",
    "family_named",
    "list_families",
    "family_model_names",
    "list_models",
    "FinetuneReport",
    "FinetuneRun",
    "FinetunedWeights",
]
