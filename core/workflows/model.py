"""A model ready for the workflows: its family, its bundle (model and weights) and traced form.

Every workflow takes a :class:`LoadedModel`, so none of them asks which family a model belongs
to: :func:`load_model` asks the registry once (``core.families.family_for``), and the family does
the rest. The app, which caches bundles and traced forms, wraps its own with :func:`loaded`.

What a workflow is handed with the model is checked to belong to it here, once, in one line
naming both sides: a solution (:func:`load_solution`), a compressed checkpoint
(:func:`load_compressed`: made from this model, for this solution), the metadata of a table
directory (:func:`tables_meta_for`: tables of this network, the ones the solution was solved on),
and the figures a job starts from (:func:`check_finite_figures`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError, TableMismatchError, UnsafeCheckpointError
from core.families import ModelFamily, family_for
from core.files import read_untrusted_checkpoint
from core.models import check_finite_weights
from core.segments import validate_solution
from core.solution import Solution
from core.solution import load_solution as read_solution
from core.tables import read_meta, tables_digest

__all__ = [
    "LoadedModel",
    "load_model",
    "loaded",
    "load_solution",
    "load_data",
    "load_compressed",
    "tables_meta_for",
    "check_finite_figures",
]


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
        UnsafeCheckpointError: the model's weights hold NaN or infinity.
        LayerMergeError: tracing fails on the model's own input (a shape it cannot take).
    """
    family = family or family_for(bundle.name)
    weights = getattr(bundle, "weights_path", None)
    check_finite_weights(bundle.model, source=str(weights) if weights else f"of {bundle.name}")
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


def load_compressed(model: LoadedModel, solution: Solution, source: str | Path) -> nn.Module:
    """A compressed checkpoint made from ``model`` for ``solution``, read safely.

    The checkpoint records the model it was made from and the solution it was merged for; either
    differing would make a measurement compare the wrong networks, so it is refused before
    anything is built from the file.

    Raises:
        UnsafeCheckpointError: unreadable, unsafe, damaged or of another family's format.
        LayerMergeError: made from another model (name, width or input size), or for another
            solution; the message names both sides.
    """
    loaded_file, name = read_untrusted_checkpoint(source)
    if isinstance(loaded_file, dict):
        _check_checkpoint_model(loaded_file, model, source)
        _check_checkpoint_solution(loaded_file, solution, source)
    return model.family.load_compressed(source, model.bundle, model.traced)


def tables_meta_for(
    model: LoadedModel, directory: str | Path, solution: Solution | None = None
) -> dict[str, Any]:
    """The meta.json of a table directory, checked to describe ``model``'s network (and to be
    the tables ``solution`` was solved on).

    Raises:
        TableMismatchError: meta.json is missing or damaged, records another model or network
            (chain digest), records none, or the tables are not those the solution was solved
            on (their content digest differs); the message names both sides.
    """
    meta = read_meta(directory)
    where = Path(directory) / "meta.json"
    recorded_model = meta.get("model")
    if isinstance(recorded_model, str) and recorded_model and recorded_model != model.name:
        raise TableMismatchError(
            f"{where} describes tables of {recorded_model}, not of {model.name}; pass the "
            "tables made for this model"
        )
    digest = model.traced.digest()
    recorded = meta.get("chain_digest")
    if recorded is None:
        raise TableMismatchError(
            f"{where} records no chain digest, so its tables cannot be matched to {model.name}; "
            "rebuild them with python -m core profile"
        )
    if recorded != digest:
        raise TableMismatchError(
            f"{where} describes another network (chain digest {recorded}) than {model.name} at "
            f"this width and input size (chain digest {digest}); pass the tables made for it"
        )
    if solution is not None and solution.tables_digest:
        actual = tables_digest(directory)
        if actual != solution.tables_digest:
            raise TableMismatchError(
                f"the solution was solved on other tables (digest {solution.tables_digest}) than "
                f"those in {directory} (digest {actual}); pass the tables it was solved on, or "
                "solve again"
            )
    return meta


def check_finite_figures(figures: Mapping[str, Any], *, what: str) -> None:
    """Refuse a job whose starting figures are not finite (a NaN loss scores nothing).

    Args:
        figures: the figures of the network a job starts from (``stage_metrics``'s).
        what: how to name that network and data in the message ("the original network on
            digits").

    Raises:
        LayerMergeError: naming the first non-finite figure.
    """
    for name, value in figures.items():
        if isinstance(value, int | float) and not math.isfinite(value):
            raise LayerMergeError(
                f"{what} has a non-finite {name} ({value}): its weights or the data are "
                "degenerate (values overflow to NaN or infinity); nothing was computed from it"
            )


def _check_checkpoint_model(checkpoint: dict[str, Any], model: LoadedModel, source: Any) -> None:
    """A registry model's name and width must match; a user's ``file.py:function`` may be spelt
    differently from another folder, so its checkpoint is matched by its solution and shapes."""
    recorded = checkpoint.get("model")
    if not isinstance(recorded, dict):
        return  # the family's own validation names a missing or malformed field
    name = recorded.get("name")
    if isinstance(name, str) and name and ":" not in name + model.name and name != model.name:
        raise LayerMergeError(
            f"compressed checkpoint {source} was made from {name}, not from {model.name}; "
            "pass the MODEL it was made from"
        )
    theirs, mine = recorded.get("width"), getattr(model.bundle, "width", None)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (theirs, mine))
    if numbers and not math.isclose(float(theirs), float(mine)):
        raise LayerMergeError(
            f"compressed checkpoint {source} was made from {model.name} at width {theirs}, not "
            f"{mine}; pass the same --width"
        )


def _check_checkpoint_solution(checkpoint: dict[str, Any], solution: Solution, source: Any) -> None:
    recorded = checkpoint.get("solution")
    if recorded is None:
        return  # a checkpoint written without its solution: nothing to compare
    try:
        theirs = Solution.from_dict(recorded)
    except LayerMergeError as exc:
        raise UnsafeCheckpointError(
            f"compressed checkpoint {source}: the solution it records is malformed ({exc})"
        ) from exc
    if _structure(theirs) != _structure(solution):
        raise LayerMergeError(
            f"compressed checkpoint {source} was merged for another solution "
            f"({_describe(theirs)}) than --solution ({_describe(solution)}); pass the solution "
            "it was made for"
        )


def _structure(solution: Solution) -> tuple[Any, ...]:
    """What makes two solutions the same network: their segments and kept activations."""
    segments = tuple(sorted((*s.key, s.kept_convs) for s in solution.segments))
    return segments, tuple(sorted(solution.kept_activations))


def _describe(solution: Solution) -> str:
    return (
        f"{solution.method}, {len(solution.segments)} segments, {solution.latency_ms:.3f} ms, "
        f"kept activations {list(solution.kept_activations)}"
    )
