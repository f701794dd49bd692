"""The whole LayerMerge flow in one call: tables and a budget in, a merged network out.

``compress`` is the torchao-style single verb (STYLE.md §3) over the steps that each live in their
own place: trace the model, solve the DP (core.dp), build the training form and merge it. It is
written once for every model family: the family that made the tables (their meta.json names the
model) traces the module and cuts and merges it (``core.families``). It returns new modules and
never touches the model it is given, which may be shared (the app caches one model for every
session).

Example:
    >>> bundle = build_model("digits_resnet")
    >>> result = compress(bundle.model, read_tables("cached_tables/digits_resnet"),
    ...                   budget_fraction=0.5, input_size=bundle.input_size)  # doctest: +SKIP
    >>> result.merged_network.depth() < len(result.chain.convs)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from core.chain import Chain
from core.dp import solve
from core.errors import TableMismatchError
from core.families import ModelFamily, family_for
from core.solution import Solution
from core.tables import Tables

__all__ = ["CompressionResult", "compress", "apply_solution"]


@dataclass(frozen=True)
class CompressionResult:
    """The outcome of :func:`compress`: the chosen solution and the two networks it defines."""

    solution: Solution
    training_network: nn.Module  # the form to finetune (in the input model's mode)
    merged_network: nn.Module  # the deployable network (eval mode), equal in eval mode
    chain: Chain  # the LayerMerge chain the solution indexes
    traced: Any = None  # the family's traced form (a classifier's is ``chain`` itself)


def compress(
    model: nn.Module,
    tables: Tables,
    *,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    method: str = "layermerge",
    input_size: int | None = None,
    model_name: str | None = None,
) -> CompressionResult:
    """Trace, solve, cut and merge ``model`` for a latency budget in one call.

    Args:
        model: the original network (left untouched): a classifier or a diffusion UNet.
        tables: latency and importance tables measured for this model (core.tables).
        budget_ms: the latency budget in ms (give this or ``budget_fraction``).
        budget_fraction: the budget as a fraction of the tables' original latency.
        method: ``layermerge``, ``depth`` (Kim23) or ``layer`` (layer pruning only).
        input_size: the side of the square input the tables were measured at (classifiers; a
            UNet runs at its config's sample size).
        model_name: the MODEL the family is chosen by; by default the tables' ``model``.

    Returns:
        The solution with its training-form and merged networks (new modules) and the chain.

    Raises:
        TableMismatchError: the tables were made for another chain (model, width or input size).
        InfeasibleBudgetError: no solution fits the budget.
        UnsupportedLayerError: the model holds an op LayerMerge cannot handle.
    """
    family = family_for(model_name or str(tables.meta.get("model") or ""))
    traced = family.trace_model(model, input_size=input_size)
    recorded = tables.meta.get("chain_digest")
    if recorded and recorded != traced.digest():
        size = f" at {input_size}x{input_size}" if input_size else ""
        raise TableMismatchError(
            f"the tables were measured on another chain (digest {recorded}, this model{size} "
            f"has {traced.digest()}): another model, width or input size?"
        )
    solution = solve(tables, budget_ms=budget_ms, budget_fraction=budget_fraction, method=method)
    return apply_solution(model, traced, solution, family=family)


def apply_solution(
    model: nn.Module, traced: Any, solution: Solution, *, family: ModelFamily
) -> CompressionResult:
    """Build the training-form and merged networks of a given solution (no DP).

    Args:
        model: the original network (left untouched).
        traced: ``family.trace(...)`` of it (a classifier's :class:`Chain`, a UNet's chain).
        solution: the kept activations and convs.
        family: the model's family (``core.families.family_for``).

    Raises:
        InvalidSolutionError: the solution is not valid for the traced model.
    """
    training = family.training_form(model, traced, solution)
    merged = family.merge(training, traced, solution)
    training.train(model.training)
    return CompressionResult(
        solution=solution,
        training_network=training,
        merged_network=merged,
        chain=family.chain_of(traced),
        traced=traced,
    )
