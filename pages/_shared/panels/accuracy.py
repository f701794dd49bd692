"""The accuracy panel: what the pages show of an image classifier (the classifier family's task).

Quality is test accuracy: the Budget page times the merged network beside its prediction, the
Finetune page trains with labels (and optional distillation) and reports accuracy before and
after, the Export page offers the checkpoint and ONNX with both accuracies.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st
import torch

import pages._shared.panels.accuracy_finetune as accuracy_finetune
import pages._shared.panels.accuracy_tables as accuracy_tables
from core.errors import LayerMergeError
from core.families import list_models
from core.models import default_input_size, get_model_info, load_state_dict_bytes
from core.segments import count_table_entries, find_segments
from core.solution import Solution
from pages._shared import caches, jobs_measure, state
from pages._shared.chain_figure import chain_figure
from pages._shared.jobs import Job
from pages._shared.messages import EXAMPLE_FUNCTION, unknown_model
from pages._shared.numbers import count, ms, speedup
from pages._shared.panels.accuracy_results import export_view
from pages._shared.panels.base import (
    DATA_KINDS,
    ExportView,
    ModelRequest,
    ModelSource,
    Panel,
    register_panel,
)
from pages._shared.state import ModelChoice
from pages._shared.tables_in_use import TablesInUse

__all__ = ["AccuracyPanel"]


def _custom_name(text: str) -> str:
    name = (text or "").strip()
    if not name:
        raise LayerMergeError(
            "name your architecture as module:function in the field under Advanced, e.g. "
            f"{EXAMPLE_FUNCTION}"
        )
    if ":" not in name and name not in list_models():
        raise LayerMergeError(unknown_model(name))
    return name


CUSTOM = ModelSource(
    option="module:function…",
    key="model_function",
    label="Your own architecture (module:function)",
    placeholder=EXAMPLE_FUNCTION,
    help=f"module:function builds your own CNN, e.g. {EXAMPLE_FUNCTION}",
    to_name=_custom_name,
    text_of=lambda name: "" if name in list_models() else name,
)


@register_panel
class AccuracyPanel(Panel):
    """Image classifiers: accuracy on the test split is what compression must keep."""

    name = "accuracy"
    sources = (CUSTOM,)
    tables_cancel_label = "Stop (finished entries are kept)"
    tables_stopped_note = "its finished work is saved."
    tables_saved_note = (
        "every finished entry is saved at once, so a stopped run resumes where it stopped"
    )

    def choose(self, request: ModelRequest) -> tuple[ModelChoice, dict[str, torch.Tensor] | None]:
        name, kind, path = request.name, request.data_kind, request.data_path.strip()
        size = request.input_size or default_input_size(name)
        if kind != "digits" and not path:
            raise LayerMergeError(f"give the path of the {DATA_KINDS[kind].lower()}")
        spec = "digits" if kind == "digits" else f"{kind}:{path}"
        weights, weights_key, label = None, "default", "default"
        if request.upload is None and request.kept is not None:
            weights, weights_key, label = request.kept
        if request.upload is not None:
            data = request.upload.getvalue()
            weights = load_state_dict_bytes(data, request.upload.name)  # never unpickles code
            weights_key, label = hashlib.sha256(data).hexdigest()[:16], request.upload.name
        new = ModelChoice(name, float(request.width), size, weights_key, label, spec)
        caches.chain(new, weights=weights)  # build and trace now: errors show on the Model page
        if kind != "digits":  # the demo always loads; a folder is checked now, not mid-finetune
            caches.data(new, weights=weights)
        return new, weights

    def model_summary(self) -> None:
        which, chain = state.choice(), caches.chain()
        if which.name in list_models() and get_model_info(which.name).demo:
            st.caption("A demo model: small enough that every step answers in seconds on a CPU.")
        cols = st.columns(5)
        cols[0].metric("Convs on the main path", len(chain.convs))
        cols[1].metric("Prunable convs", len(chain.reducible_convs))
        cols[2].metric("Residual blocks", len(chain.residuals))
        cols[3].metric("Valid segments", len(find_segments(chain)))
        cols[4].metric("Table entries", count_table_entries(chain))
        st.plotly_chart(chain_figure(chain, height=320), key="chain_chart")
        st.caption(
            "Boxes are the main-path convs (kernel size, 'dw' depthwise, '/2' stride 2); dots are "
            "the activation after each position; arcs are residual spans; dashed lines are breaks "
            "no merged segment may cross. Orange convs are prunable: same channels in and out, "
            "stride 1, so LayerMerge may replace them by identity inside a merged segment."
        )

    def tables_form(self) -> None:
        accuracy_tables.tables_form()

    def additivity_note(self, error: float) -> str:
        return (
            "The DP adds segment latencies. The table times each merged conv with its "
            "activation; it leaves out BN, residual adds, pooling and the classifier, and timing "
            f"pieces alone differs from timing them in sequence. Here the sum is off by "
            f"{error:+.1%} of the measured network: budgets are shares of the table sum, not of "
            "the measured time."
        )

    def quality_section(self, solution: Solution, used: TablesInUse) -> None:
        stored = state.measurement("speed", solution)
        if st.button(
            "Measure the merged network",
            key="measure",
            help="builds it with core.merge.merge_model and times it against the original, "
            "side by side",
        ):
            with st.spinner("Merging and timing…"):
                stored = jobs_measure.measure(solution, used)
            state.remember_measurement("speed", solution, stored)
        if stored is None:
            st.caption(
                "Prediction only: the table sum. Measure to see the real merged network's time."
            )
            return
        rows = [
            ("original (BN folded)", used.original_ms, "original_ms", "original_depth"),
            ("merged", solution.latency_ms, "merged_ms", "merged_depth"),
        ]
        frame = pd.DataFrame(
            {
                "network": name,
                "table sum (predicted)": ms(table_ms),
                "measured": ms(stored[measured]),
                "main-path convs": count(stored[depth]),
            }
            for name, table_ms, measured, depth in rows
        )
        st.dataframe(frame, hide_index=True, key="measure_table")
        st.markdown(
            f"Speed-up predicted **{speedup(stored['predicted_speedup'])}**, measured "
            f"**{speedup(stored['measured_speedup'])}** ({stored['how']}). The prediction counts the "
            "layers outside the table (pooling, classifier) as unchanged."
        )

    def finetune_form(self, solution: Solution) -> None:
        accuracy_finetune.finetune_form(solution)

    def finetune_view(self, job: Job) -> None:
        accuracy_finetune.finetune_view(job)

    def finetune_quality(self, result: dict) -> tuple[float | None, float | None]:
        return result["unfinetuned"].accuracy, result["after"].accuracy

    def export_view(self, solution: Solution, used: TablesInUse) -> ExportView:
        return export_view(solution, used)
