"""A model ready for the workflows: its family, its bundle (model and weights) and traced form.

Every workflow takes a :class:`LoadedModel`, so none of them asks which family a model belongs
to: :func:`load_model` asks the registry once (``core.families.family_for``), and the family does
the rest. The app, which caches bundles and traced forms, wraps its own with :func:`loaded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.chain import Chain
from core.errors import LayerMergeError
from core.families import ModelFamily, family_for
from core.segments import validate_solution
from core.solution import Solution
from core.solution import load_solution as read_solution

__all__ = ["LoadedModel", "load_model", "loaded", "load_solution", "load_data"]


@dataclass(frozen=True)
class LoadedModel:
    """A model with its family and traced form: what every workflow starts from.

    ``bundle`` is what ``family.load`` returned (``model``, ``name``, ``input_size``,
    ``weights_note``, ``weights_digest``); ``traced`` is ``family.trace(bundle)``. The model may
    be shared (the app's cache): workflows only read it and build new modules from it.
    """

    family: ModelFamily
    bundle: Any
    traced: Any

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def chain(self) -> Chain:
        """The LayerMerge chain that solutions index."""
        return self.family.chain_of(self.traced)


def load_model(
    model: str,
    *,
    weights: str | Path | None = None,
    width: float = 1.0,
    input_size: int | None = None,
) -> LoadedModel:
    """Build MODEL (a registry name, ``module:function`` or a family's own spelling) and trace it.

    Raises:
        LayerMergeError: an unknown model, unsafe or unfitting weights, an op LayerMerge cannot
            handle, or a model that cannot run on its input.
    """
    family = family_for(model)
    bundle = family.load(model, weights=weights, width=width, input_size=input_size)
    return loaded(bundle, family=family)


def loaded(bundle: Any, traced: Any = None, *, family: ModelFamily | None = None) -> LoadedModel:
    """A bundle already built (and traced) elsewhere, as the workflows take it.

    Raises:
        LayerMergeError: tracing fails on the model's own input (a shape it cannot take).
    """
    family = family or family_for(bundle.name)
    if traced is None:
        try:
            traced = family.trace(bundle)
        except LayerMergeError:
            raise
        except (RuntimeError, ValueError) as exc:  # torch and diffusers on shapes that do not fit
            message = " ".join(str(exc).split())[:300]
            raise LayerMergeError(
                f"cannot run {bundle.name} on its input: {type(exc).__name__}: {message}"
            ) from exc
    return LoadedModel(family, bundle, traced)


def load_solution(model: LoadedModel, source: str | Path) -> Solution:
    """A solution file, checked against the model's chain before any work is done with it.

    Raises:
        LayerMergeError: unreadable, malformed, or not a valid solution for this model.
    """
    solution = read_solution(source)
    validate_solution(model.chain, solution)
    return solution


def load_data(model: LoadedModel, spec: str, *, seed: int = 0) -> Any:
    """The data ``spec`` names, shaped for the model by its family (its task's splits).

    Raises:
        LayerMergeError: an unknown spec, or data that does not fit the model.
    """
    return model.family.load_data(spec, model.bundle, model.traced, seed=seed)
