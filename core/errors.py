"""One error hierarchy for LayerMerge Studio, and the command line's exit codes.

Every error a user can cause derives from :class:`LayerMergeError`. The command line maps it to exit
code 2 with one line on stderr (:func:`user_error_message` is that one mapping, used by
``core.__main__``), and the app shows it with ``st.error``; anything else is a bug. The operating
system's refusals to write (a full disk, a read-only folder, no permission) are the user's
environment, not a bug: writers raise :class:`OutputWriteError` for them, and the mapping also
turns any that slip through into the same one line.

Exit codes of ``python -m core``: 0 done; 2 bad input (one line on stderr); 130 interrupted or
cancelled (Ctrl-C, or a finetune that stopped before its last step): its state is saved, and
running the same command again resumes it.
"""

from __future__ import annotations

import errno

__all__ = [
    "EXIT_OK",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "user_error_message",
    "LayerMergeError",
    "OutputWriteError",
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


class OutputWriteError(LayerMergeError):
    """An output cannot be written where asked: a missing folder, a directory or a device in the
    way, a read-only folder, a full disk. Names the path and the reason; nothing was replaced."""


EXIT_OK = 0
EXIT_BAD_INPUT = 2  # one line on stderr
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C: saved, rerun to resume

# Refusals of the operating system that a user causes or fixes (never a bug of ours).
_USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,  # no space left on device
        errno.EDQUOT,  # disk quota exceeded
        errno.EROFS,  # read-only file system
        errno.EACCES,  # permission denied
        errno.EPERM,  # operation not permitted
        errno.EFBIG,  # file too large
    }
)


def user_error_message(exc: BaseException) -> str | None:
    """The one line a user-caused error is reported with, or None when ``exc`` is a bug.

    A :class:`LayerMergeError` is reported by its message; an ``OSError`` the user's environment
    causes (a full disk, a read-only folder, a permission) by its path and reason.
    """
    if isinstance(exc, LayerMergeError):
        return " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in _USER_ERRNOS:
        where = f"cannot write {exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return None
