"""The whole LayerMerge flow in one call: tables and a budget in, a merged network out.

``compress`` is the torchao-style single verb (STYLE.md §3) over the steps that each live in their
own module: trace the chain (core.chain), solve the DP (core.dp), build the training form
(core.surgery) and merge it (core.merge). It returns new modules and never touches the model it is
given, which may be shared (the app caches one model for every session).

Example:
    >>> bundle = build_model("digits_resnet")
    >>> result = compress(bundle.model, read_tables("cached_tables/digits_resnet"),
    ...                   budget_fraction=0.5, input_size=bundle.input_size)  # doctest: +SKIP
    >>> result.merged_network.depth() < len(result.chain.convs)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.chain import Chain, trace_chain
from core.dp import solve
from core.errors import TableMismatchError
from core.merge import merge
from core.network import StepNetwork
from core.solution import Solution
from core.surgery import build_training_network
from core.tables import Tables

__all__ = ["CompressionResult", "compress", "apply_solution"]


@dataclass(frozen=True)
class CompressionResult:
    """The outcome of :func:`compress`: the chosen solution and the two networks it defines."""

    solution: Solution
    training_network: StepNetwork  # the form to finetune (train mode, like the input model)
    merged_network: StepNetwork  # the deployable network (eval mode), equal in eval mode
    chain: Chain


def compress(
    model: nn.Module,
    tables: Tables,
    *,
    budget_ms: float | None = None,
    budget_fraction: float | None = None,
    method: str = "layermerge",
    input_size: int,
) -> CompressionResult:
    """Trace, solve, cut and merge ``model`` for a latency budget in one call.

    Args:
        model: the original network (left untouched).
        tables: latency and importance tables measured for this model (core.tables).
        budget_ms: the latency budget in ms (give this or ``budget_fraction``).
        budget_fraction: the budget as a fraction of the tables' original latency.
        method: ``layermerge``, ``depth`` (Kim23) or ``layer`` (layer pruning only).
        input_size: the side of the square input the tables were measured at.

    Returns:
        The solution with its training-form and merged networks (new modules) and the chain.

    Raises:
        TableMismatchError: the tables were made for another chain (model, width or input size).
        InfeasibleBudgetError: no solution fits the budget.
        UnsupportedLayerError: the model holds an op LayerMerge cannot handle.
    """
    chain = trace_chain(model, input_size)
    recorded = tables.meta.get("chain_digest")
    if recorded and recorded != chain.digest():
        raise TableMismatchError(
            f"the tables were measured on another chain (digest {recorded}, this model at "
            f"{input_size}x{input_size} has {chain.digest()}): another model, width or input size?"
        )
    solution = solve(tables, budget_ms=budget_ms, budget_fraction=budget_fraction, method=method)
    return apply_solution(model, chain, solution)


def apply_solution(model: nn.Module, chain: Chain, solution: Solution) -> CompressionResult:
    """Build the training-form and merged networks of a given solution (no DP).

    Raises:
        InvalidSolutionError: the solution is not valid for ``chain``.
    """
    training = build_training_network(model, chain, solution)
    merged = merge(training.eval(), chain, solution)
    training.train(model.training)
    return CompressionResult(
        solution=solution, training_network=training, merged_network=merged, chain=chain
    )
