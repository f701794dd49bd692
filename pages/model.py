"""Model: choose the network, its weights and its data; see its chain of convs."""

from __future__ import annotations

import streamlit as st

from core.errors import LayerMergeError
from core.families import family_for, list_models
from pages._shared import caches, frame, panels, state
from pages._shared.messages import explain

frame.frame_guard()


def requested_name() -> str:
    """The MODEL spelling the form names: a registry name, or what a source makes of its text."""
    values = st.session_state
    for source in panels.model_sources():
        if values.model_name == source.option:
            return source.to_name(values[source.key])
    return values.model_name


def apply_form() -> str:
    """Build what the form describes; switch the session to it only if everything loads.

    Returns:
        What the success message says of the weights now in use.
    """
    values, current = st.session_state, state.choice()
    name = requested_name()
    width = float(values.model_width)
    same_net = (name, width) == (current.name, current.width)
    keep = same_net and state.weights() is not None and not values.get("default_weights")
    request = panels.ModelRequest(
        name=name,
        width=width,
        input_size=int(values.model_input_size) if values.model_input_size else None,
        upload=values.weights_upload,
        data_kind=values.data_kind,
        data_path=values.data_path,
        kept=(state.weights(), current.weights_key, current.weights_label) if keep else None,
    )
    new, weights = panels.panel_for(family_for(name)).choose(request)
    state.set_choice(new, weights)
    if values.weights_upload is not None:
        return f"with the weights of {values.weights_upload.name}"
    if keep:
        return f"still with your weights {current.weights_label}"
    note = f"with {frame.weights_words(new)}"
    if state.weights() is None and current.weights_key != "default" and not same_net:
        note += f" ({current.weights_label} was for {current.label} and is not used)"
    return note


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
advanced = owner is not None or current.width != 1.0
with st.form("model_form"):
    left, right = st.columns(2)
    left.selectbox(
        "Architecture",
        options,
        key="model_name",
        index=index,
        help="A registry model, or (under Advanced): " + "; ".join(s.help for s in sources),
    )
    folded = left.expander("Advanced: your own architecture, width, input size", advanced)
    for source in sources:
        folded.text_input(
            source.label,
            key=source.key,
            value=source.text_of(current.name) if source is owner else "",
            placeholder=source.placeholder,
            help=f"used when Architecture is '{source.option}'",
        )
    folded.number_input(
        "Width multiplier (mobilenet_v2 and the digits CNNs)",
        min_value=0.25,
        max_value=4.0,
        step=0.25,
        value=current.width,
        key="model_width",
    )
    folded.number_input(
        "Input size in pixels (empty: the model's default)",
        min_value=8,
        max_value=1024,
        step=8,
        value=None,
        key="model_input_size",
    )
    right.file_uploader(
        "Weights: a state_dict file, any name (.pt, .pth, .th, .tar, ...)",
        key="weights_upload",
        help="read with torch.load(weights_only=True): tensors only, never pickled code. The "
        "content decides, not the name: a plain state_dict, torchvision's files, or a research "
        "checkpoint nesting it under state_dict, model, net or model_state_dict, with or "
        "without DataParallel's module. prefix",
    )
    if state.weights() is not None:
        right.checkbox(
            f"Go back to the default weights (now: {current.weights_label})",
            key="default_weights",
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
            weights_note = apply_form()
    except LayerMergeError as exc:
        st.error(f"{explain(exc)} Still using {current.label} with {frame.weights_words(current)}.")
    else:  # rerun so the sidebar frame, drawn before this page, shows the new model
        st.session_state.model_flash = f"Now using {state.choice().label} {weights_note}."
        st.rerun()
if "model_flash" in st.session_state:
    st.success(st.session_state.pop("model_flash"))

st.subheader(state.choice().label)
st.caption(caches.bundle().weights_note)
panels.current().model_summary()
