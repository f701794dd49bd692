"""What the pages say when input is refused: one line naming the problem and what is accepted.

Core's errors are written for the command line and sometimes carry what a library said on the way
("(RuntimeError: PytorchStreamReader failed ...)", or torch's advice to allow-list a class with
``add_safe_globals``). The pages never pass that on: :func:`explain` keeps core's own sentence,
drops the appended exception text, and replaces an unsafe-file refusal by the formats the app
accepts. Model files are untrusted: they are only ever read with ``weights_only=True``.
"""

from __future__ import annotations

import re

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.families import list_models

__all__ = [
    "ACCEPTED_WEIGHTS",
    "EXAMPLE_FUNCTION",
    "explain",
    "unknown_model",
]

ACCEPTED_WEIGHTS = (
    "a state_dict saved with torch.save(model.state_dict(), path), under any file name: tensors "
    "only, plain or nested in a checkpoint dict (torchvision's weight files work)"
)
EXAMPLE_FUNCTION = "torchvision.models:resnet18"  # a module:function that builds and traces
# "(KeyError: 101)", "(RuntimeError: PytorchStreamReader failed ...)", ": ModuleNotFoundError: ..."
_EXCEPTION_TEXT = re.compile(
    r"\s*\((?:[A-Za-z_.]*(?:Error|Exception|Warning)|StopIteration|KeyboardInterrupt)\b[^()]*"
    r"(?:\([^()]*\)[^()]*)*\)"
    r"|:\s*[A-Za-z_.]*(?:Error|Exception)\b:?.*$"
)
_PICKLED = re.compile(r"GLOBAL ([\w.]+)")
_WEIGHTS_FILE = re.compile(r"(?:refused to load )?weights ")  # core's name for a weights file
_FUNCTION_PROBLEM = re.compile(r"cannot import module |module '[^']*' has no function ")


def explain(exc: LayerMergeError) -> str:
    """``exc`` as one line for a page: core's sentence, without library text or unsafe advice."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, UnsafeCheckpointError) and _WEIGHTS_FILE.match(message):
        return _unsafe_file(message)
    if message.startswith("unknown model "):
        return unknown_model(message.split("'")[1] if "'" in message else "")
    text = _EXCEPTION_TEXT.sub("", message)
    if _FUNCTION_PROBLEM.match(text):
        text += f"; give module:function of an importable module, e.g. {EXAMPLE_FUNCTION}"
    return text


def unknown_model(name: str) -> str:
    """The unknown-model message, listing every registered model of every family."""
    return (
        f"Unknown model {name!r}: choose one of {', '.join(list_models())}, or give your own "
        f"architecture as module:function (e.g. {EXAMPLE_FUNCTION})."
    )


def _unsafe_file(message: str) -> str:
    """A refused or unreadable file: what it seems to be, and what the app accepts instead."""
    found = re.match(r"(?:refused to load )?(?:weights )?(.+?)(?: is not| hold| holds|:)", message)
    name = found.group(1) if found else "the file"
    pickled = _PICKLED.search(message)
    refused = "; loading that could run code, so it is refused"
    if pickled:
        what = f"it holds a pickled {pickled.group(1)} (a saved object, not only tensors){refused}"
    elif "Weights only load failed" in message:
        what = f"it holds pickled Python objects, not only tensors{refused}"
    elif "unsafe unpickling" in message or "is not a readable torch checkpoint" in message:
        what = "it is not a torch file (empty, cut short, or another format)"
    else:  # core's own sentence (an empty state_dict, a value that is not a tensor, ...)
        return f"{_EXCEPTION_TEXT.sub('', message)}. Accepted: {ACCEPTED_WEIGHTS}."
    return f"{name} was not used: {what}. Accepted: {ACCEPTED_WEIGHTS}."
