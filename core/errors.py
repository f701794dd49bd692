"""One error hierarchy for LayerMerge Studio.

Every error a user can cause derives from :class:`LayerMergeError`. The command line maps it to exit
code 2 with one line on stderr, and the app shows it with ``st.error``; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "LayerMergeError",
    "UnsupportedLayerError",
    "InvalidSolutionError",
    "InfeasibleBudgetError",
    "TableMismatchError",
    "UnsafeCheckpointError",
    "DataError",
]


class LayerMergeError(Exception):
    """Base class of every error caused by user input (a model, a file, a budget)."""


class UnsupportedLayerError(LayerMergeError, ValueError):
    """A traced model holds a module or op the method cannot handle; names the module path."""


class InvalidSolutionError(LayerMergeError, ValueError):
    """A solution (kept activations, kept convs) is not valid for the chain it is applied to."""


class InfeasibleBudgetError(LayerMergeError, ValueError):
    """No solution fits the latency budget; the message states the smallest achievable latency."""


class TableMismatchError(LayerMergeError, ValueError):
    """A table file is corrupt, foreign (another chain or weights) or missing entries."""


class UnsafeCheckpointError(LayerMergeError, ValueError):
    """A weights or checkpoint file is unreadable, or would need unsafe unpickling to load."""


class DataError(LayerMergeError, ValueError):
    """A dataset specification or folder cannot be used."""
