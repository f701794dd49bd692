"""Cached core calls shared by all sessions: models, traced chains, data, tables, frontiers.

The one place with ``st.cache_resource`` around core (STYLE.md convention 1). Every call on a
model goes through its family (``core.families.family_for``), so nothing here asks which family
a model is. Entries are singletons keyed by content (registry name, width, input size, weights
digest, table digest) and are never modified: core's builders return new modules, and a module a
caller would change is deep-copied first (:func:`private_model`).
"""

from __future__ import annotations

import copy
from typing import Any

import streamlit as st
import torch
from torch import nn

from core.chain import Chain
from core.dp import FrontierPoint, frontier
from core.families import ModelFamily, family_for, family_named
from core.solution import Solution
from core.tables import Tables, read_tables
from pages._shared import state
from pages._shared.state import ModelChoice

__all__ = [
    "family",
    "bundle",
    "private_model",
    "traced",
    "chain",
    "data",
    "read",
    "frontier_of",
    "prefix_states",
    "merged",
]

Weights = dict[str, torch.Tensor] | None


@st.cache_resource(show_spinner="Building the model…", max_entries=8)
def _load(key: tuple[str, float, int | None, str], _weights: Weights) -> Any:
    name, width, input_size, _ = key
    return family_for(name).load(name, weights=_weights, width=width, input_size=input_size)


@st.cache_resource(show_spinner="Tracing the chain…", max_entries=16)
def _trace(key: tuple[str, float, int | None, str], _bundle: Any) -> Any:
    return family_for(key[0]).trace(_bundle)


@st.cache_resource(show_spinner="Loading the data…", max_entries=4)
def _data(family_name: str, spec: str, input_size: int, _bundle: Any, _traced: Any) -> Any:
    return family_named(family_name).load_data(spec, _bundle, _traced)


@st.cache_resource(show_spinner="Reading the tables…", max_entries=16)
def read(directory: str, stamp: tuple[int, ...]) -> Tables:
    """The tables in ``directory``, read again only when a file changed (``stamp``: mtimes)."""
    return read_tables(directory)


@st.cache_resource(show_spinner="Computing the frontiers…", max_entries=32)
def frontier_of(key: str, method: str, _tables: Tables) -> list[FrontierPoint]:
    """The exact frontier of ``method`` on tables whose content ``key`` names."""
    return frontier(_tables, method=method)


@st.cache_resource(show_spinner="Walking the DP grid…", max_entries=8)
def prefix_states(key: str, method: str, _tables: Tables) -> list[tuple[int, float, float]]:
    """Every Pareto-optimal (position j, latency, importance) state of the DP: its live grid cells.

    The frontier of the tables cut at j is the set of best paths from 0 to j, which is exactly what
    the DP keeps at position j.
    """
    states: list[tuple[int, float, float]] = []
    for end in range(1, _tables.last_position + 1):
        prefix = Tables(
            entries=tuple(e for e in _tables.entries if e.end <= end),
            meta=dict(_tables.meta),
            digest=f"{_tables.digest}:{end}",
        )
        states.extend((end, p.latency_ms, p.importance) for p in frontier(prefix, method=method))
    return states


@st.cache_resource(show_spinner="Merging…", max_entries=16)
def _merged(
    model_key: tuple, solution_key: str, _solution: Solution, _which: ModelChoice
) -> nn.Module:
    owner = family(_which)
    found = traced(_which)
    training = owner.training_form(bundle(_which).model, found, _solution)
    return owner.merge(training, found, _solution)


def family(which: ModelChoice | None = None) -> ModelFamily:
    """The family of the session's model (or of ``which``)."""
    return family_for((which or state.choice()).name)


def bundle(which: ModelChoice | None = None, *, weights: Weights = None) -> Any:
    """The built model and where its weights came from (shared: never modify ``.model``).

    ``weights`` are a state_dict not yet in the session (the Model page checks a new choice before
    switching to it); without them, the session's uploaded weights are used when ``which`` has any.
    """
    which = which or state.choice()
    if weights is None and which.weights_key != "default":
        weights = state.weights()
    return _load(which.key, weights)


def private_model(which: ModelChoice | None = None) -> nn.Module:
    """A deep copy of the session's model, safe to change (train, finetune, load weights)."""
    return copy.deepcopy(bundle(which).model)


def traced(which: ModelChoice | None = None, *, weights: Weights = None) -> Any:
    """The family's traced form of the model (what its family methods take back)."""
    which = which or state.choice()
    return _trace(which.key, bundle(which, weights=weights))


def chain(which: ModelChoice | None = None, *, weights: Weights = None) -> Chain:
    """The LayerMerge chain of the model: what segments, tables, the DP and the figures read."""
    return family(which).chain_of(traced(which, weights=weights))


def data(which: ModelChoice | None = None, *, weights: Weights = None) -> Any:
    """The model's data (train/holdout/test splits), loaded once per (family, spec, input size).

    Raises:
        DataError: the spec names no usable dataset (the message says which and why).
    """
    which = which or state.choice()
    found = bundle(which, weights=weights)
    return _data(
        family(which).name, which.data_spec, which.input_size, found, traced(which, weights=weights)
    )


def merged(value: Solution, which: ModelChoice | None = None) -> nn.Module:
    """The merged network of ``value`` without finetuning (shared: read it, never change it)."""
    which = which or state.choice()
    return _merged(which.key, state.solution_key(value), value, which)
