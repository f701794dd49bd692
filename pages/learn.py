"""Learn: how LayerMerge works, in pictures drawn from the model you loaded."""

from __future__ import annotations

import streamlit as st

from pages._shared import caches, frame, panels, state
from pages._shared import learn_figures as pictures
from pages._shared.budget_state import solution_or_default
from pages._shared.chain_figure import chain_figure
from pages._shared.tables_in_use import budget_ms, dp_states, tables_in_use

frame.frame_guard()

st.title("How LayerMerge works")
which, model, chain = state.choice(), caches.bundle().model, caches.chain()
solution = solution_or_default()
st.caption(
    f"Every picture below is computed from {which.label}, its tables and your current "
    "solution (Budget page)."
)
note = panels.current().learn_note
if note:
    st.info(note)

st.header("1 · Two convs with nothing between them are one conv")
pair = pictures.first_pair(chain)
if pair is None:
    st.info("This model has no two neighbouring convs that may merge.")
else:
    first, second = chain.convs[pair], chain.convs[pair + 1]
    st.markdown(
        f"Take convs {pair} and {pair + 1} of your model ({first.kernel}×{first.kernel} then "
        f"{second.kernel}×{second.kernel}). Remove the activation between them and the pair is "
        "linear, so it equals **one** conv. Its kernel is the full convolution of the two: "
        f"size {first.kernel} + {second.kernel} − 1 = **{first.kernel + second.kernel - 1}**, "
        "because an output pixel sees every input pixel some path of the two kernels reaches "
        "(the receptive field; the last panel counts those paths). The merged weights below are "
        "your model's, with BN folded in, computed exactly as `core.merge` does."
    )
    st.plotly_chart(pictures.merge_pair_figure(model, chain, pair), key="learn_pair")

st.header("2 · Why merged kernels grow (depth compression, Kim23)")
st.markdown(
    "Removing more activations merges longer runs of convs, and each 3×3 conv adds 2 to the "
    "kernel: four 3×3 convs become one 9×9, which can be slower than the four it replaces. Kim "
    "et al. (2023) could only keep every conv of a merged run, so they had to stop merging "
    "early. Below: for every segment (i, j] your model allows, the merged kernel when every "
    "conv is kept."
)
used = tables_in_use()
st.plotly_chart(
    pictures.growth_figure(chain, used.tables if used is not None else None), key="learn_growth"
)
if used is not None:
    st.caption(
        "Hover a point for that merged conv's time in your latency table: bigger kernels "
        "cost more, which is why Kim23 stops merging early."
    )

st.header("3 · Pruning a conv keeps the kernel small (LayerMerge)")
st.markdown(
    "LayerMerge may also **prune** convs inside a segment: a conv with as many channels in as "
    "out and stride 1 can become the identity, and then adds nothing to the kernel. So a long "
    "segment can merge into a small kernel (the orange points above). The DP chooses jointly "
    "which activations to remove and which convs to prune."
)
if solution is None:
    st.info("Pick a budget on the Budget page to see which convs your solution prunes.")
else:
    st.plotly_chart(chain_figure(chain, solution, height=260), key="learn_chain")
    if any(s.end - s.start > 1 or s.kernel == 0 for s in solution.segments):
        st.plotly_chart(pictures.pruning_figure(chain, solution), key="learn_pruning")
    else:
        st.caption("Your current solution merges nothing: every segment is one conv.")

st.header("4 · The DP: a best path through the (position, latency) grid")
if used is None:
    st.info("This picture needs the latency and importance tables (Tables page).")
    st.stop()
method = solution.method if solution is not None else "layermerge"
budget = budget_ms(used, state.budget_percent())  # the Budget slider's, or its starting value
st.markdown(
    "A solution is a path from position 0 to the last one; each step is a segment (i, j] with a "
    "kernel option, costing its table latency and earning its importance. At each position the "
    "DP keeps only the paths no other path beats on both latency and importance: the dots. The "
    f"answer is the most important path that ends below the budget line ({method})."
)
st.plotly_chart(
    pictures.dp_grid_figure(
        dp_states(used, method), solution, budget_ms=budget, original_ms=used.original_ms
    ),
    key="learn_dp",
)
