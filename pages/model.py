"""Model: choose the network, its weights and its data; see its chain of convs."""

from __future__ import annotations

import streamlit as st

from core.errors import LayerMergeError
from core.families import family_for, list_models
from pages._shared import caches, frame, panels, state

frame.frame_guard()


def requested_name() -> str:
    """The MODEL spelling the form names: a registry name, or what a source makes of its text."""
    values = st.session_state
    for source in panels.model_sources():
        if values.model_name == source.option:
            return source.to_name(values[source.key])
    return values.model_name


def apply_form() -> None:
    """Build what the form describes; switch the session to it only if everything loads."""
    values = st.session_state
    name = requested_name()
    request = panels.ModelRequest(
        name=name,
        width=float(values.model_width),
        input_size=int(values.model_input_size) if values.model_input_size else None,
        upload=values.weights_upload,
        data_kind=values.data_kind,
        data_path=values.data_path,
    )
    new, weights = panels.panel_for(family_for(name)).choose(request)
    state.set_choice(new, weights)


st.title("Model")
current = state.choice()
names = list_models()
sources = panels.model_sources()
owner = panels.source_of(current.name)
options = [*names, *(source.option for source in sources)]
if owner is not None:
    index = options.index(owner.option)
else:
    index = names.index(current.name) if current.name in names else 0
with st.form("model_form"):
    left, right = st.columns(2)
    left.selectbox(
        "Architecture",
        options,
        key="model_name",
        index=index,
        help="A registry model, or: " + "; ".join(source.help for source in sources),
    )
    for source in sources:
        left.text_input(
            source.label,
            key=source.key,
            value=source.text_of(current.name) if source is owner else "",
            placeholder=source.placeholder,
        )
    left.number_input(
        "Width multiplier (mobilenet_v2 and the digits CNNs)",
        min_value=0.25,
        max_value=4.0,
        step=0.25,
        value=current.width,
        key="model_width",
    )
    left.number_input(
        "Input size in pixels (empty: the model's default)",
        min_value=8,
        max_value=1024,
        step=8,
        value=None,
        key="model_input_size",
    )
    right.file_uploader(
        "Weights: a state_dict file (.pt/.pth; torchvision's files work)",
        type=["pt", "pth", "bin", "ckpt"],
        key="weights_upload",
    )
    kinds = list(panels.DATA_KINDS)
    right.radio(
        "Data",
        kinds,
        format_func=panels.DATA_KINDS.get,
        key="data_kind",
        index=kinds.index(current.data_spec.partition(":")[0]),
        horizontal=True,
    )
    right.text_input(
        "Folder path (image folder, or CIFAR-10's cifar-10-batches-py)",
        key="data_path",
        value=current.data_spec.partition(":")[2],
    )
    submitted = st.form_submit_button("Use this model", key="use_model", type="primary")
if submitted:
    try:
        with st.spinner("Loading the weights, tracing the chain…"):
            apply_form()
    except LayerMergeError as exc:
        st.error(str(exc))
    else:  # rerun so the sidebar frame, drawn before this page, shows the new model
        st.session_state.model_flash = f"Now using {state.choice().label}."
        st.rerun()
if "model_flash" in st.session_state:
    st.success(st.session_state.pop("model_flash"))

st.subheader(state.choice().label)
st.caption(caches.bundle().weights_note)
panels.current().model_summary()
