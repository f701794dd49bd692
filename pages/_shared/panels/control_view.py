"""What a finetune job's results say of its control: the compressed figure against it, in words.

Shared by the accuracy and samples panels (and their export views): the job's result holds the
control (``core.workflows.control.ControlOutcome``, or None) and ``comparison``
(``core.workflows.control.compare_figures``), the same line the CLI prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from pages._shared.numbers import count

__all__ = ["control_notes", "comparison_line"]


def comparison_line(result: Mapping[str, Any]) -> str | None:
    """The compressed figure against the original's (and the control's), or None."""
    comparison = result.get("comparison")
    return comparison["line"] if comparison else None


def control_notes(result: Mapping[str, Any]) -> None:
    """The comparison line, and how the control stands (trained, reused, or stopped)."""
    line = comparison_line(result)
    control = result.get("control")
    if control is None:
        if line:
            st.caption(
                f"{line[0].upper()}{line[1:]}. No control ran: part of a gain may be the "
                "finetune's own (tick the control box to finetune the original the same way)."
            )
        return
    if control.status != "completed":
        st.warning(
            f"The control stopped at step {count(control.step)}/{count(control.total_steps)}: "
            "resume the job to finish it (it continues from its own checkpoint)."
        )
    how = "reused from an earlier job with the same settings" if control.reused else "trained"
    if line:
        st.info(f"{line[0].upper()}{line[1:]}.")
    if control.status == "completed":
        st.caption(
            f"Control: the original finetuned {count(control.step)} steps with the same recipe, "
            f"{how} (kept in {control.folder})."
        )
