"""Options that only some families use: given or not, and a one-line refusal for the others.

The CLI declares every family's options on one parser (a finetune's ``--momentum``, a bench's
``--fd``) and hands them to the family as a mapping of option names (argparse ``dest`` names) to
values, ``None`` or ``False`` meaning "not given". A family builds its settings from the ones it
uses and refuses the rest here, so an option meant for another kind of model is never silently
ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.errors import LayerMergeError

__all__ = ["flag", "given", "value_or", "refuse"]


def flag(name: str) -> str:
    """The command-line spelling of option ``name`` (``weight_decay`` -> ``--weight-decay``)."""
    return "--" + name.replace("_", "-")


def given(options: Mapping[str, Any], name: str) -> bool:
    """True when option ``name`` was given (a value other than ``None`` or ``False``; 0 counts)."""
    value = options.get(name)
    return value is not None and value is not False


def value_or(options: Mapping[str, Any], name: str, default: Any) -> Any:
    """Option ``name``'s value, or ``default`` when it was not given."""
    return options[name] if given(options, name) else default


def refuse(options: Mapping[str, Any], refusals: Mapping[str, str], *, models: str) -> None:
    """Raise for the first option of ``refusals`` that was given.

    Args:
        options: option names to values.
        refusals: option names to why they do not apply ("" for no reason).
        models: what the family's models are called in the message ("diffusion UNets").

    Raises:
        LayerMergeError: ``--flag is not supported for MODELS[: why]``.
    """
    for name, why in refusals.items():
        if given(options, name):
            reason = f": {why}" if why else ""
            raise LayerMergeError(f"{flag(name)} is not supported for {models}{reason}")
