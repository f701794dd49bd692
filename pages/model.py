"""Model: choose the network, its weights and its data; see its chain of convs."""

from __future__ import annotations

import hashlib

import streamlit as st

from core.errors import LayerMergeError
from core.families.unet.unet import is_unet_name
from core.models import default_input_size, get_model_info, list_models, load_state_dict_bytes
from core.segments import count_table_entries, find_segments
from pages import _shared as shared
from pages._shared import diffusion, figures

shared.frame_guard()

CUSTOM = "module:function…"
FOLDER = "diffusers folder…"
DATA_KINDS = {
    "digits": "Digits demo (bundled)",
    "folder": "Image folder",
    "cifar10": "CIFAR-10 folder",
}


def apply_form() -> None:
    """Build what the form describes; switch the session to it only if everything loads."""
    state = st.session_state
    name = state.model_function.strip() if state.model_name == CUSTOM else state.model_name
    if state.model_name == FOLDER:
        name = diffusion.folder_model_name(state.unet_folder)
    if is_unet_name(name):  # a diffusion UNet: its config fixes size and width
        new = diffusion.unet_choice(name, upload=state.weights_upload, data_kind=state.data_kind)
        shared.set_choice(new, None)
        return
    if not name:
        raise LayerMergeError(
            "name your architecture as module:function, e.g. mypkg.nets:small_cnn"
        )
    size = int(state.model_input_size) if state.model_input_size else default_input_size(name)
    kind = state.data_kind
    path = state.data_path.strip()
    if kind != "digits" and not path:
        raise LayerMergeError(f"give the path of the {DATA_KINDS[kind].lower()}")
    spec = "digits" if kind == "digits" else f"{kind}:{path}"
    upload = state.weights_upload
    state_dict, weights_key, label = None, "default", "default"
    if upload is not None:
        data = upload.getvalue()
        state_dict = load_state_dict_bytes(data, upload.name)  # weights_only: never unpickles code
        weights_key, label = hashlib.sha256(data).hexdigest()[:16], upload.name
    new = shared.ModelChoice(name, float(state.model_width), size, weights_key, label, spec)
    state.state_dict, previous = state_dict, state.state_dict  # bundle() reads it while building
    try:
        shared.bundle(new)
        shared.chain(new)
        if kind != "digits":  # the demo always loads; a folder is checked now, not mid-finetune
            shared.data_splits(spec, size)
    except LayerMergeError:
        state.state_dict = previous
        raise
    shared.set_choice(new, state_dict)


st.title("Model")
current = shared.choice()
names = list(dict.fromkeys([*list_models(), diffusion.DEMO_UNET_NAME]))
folder = current.name.partition(":")[2] if current.name.startswith("diffusers:") else ""
if current.name in names:
    index = names.index(current.name)
else:
    index = len(names) + (1 if folder else 0)
with st.form("model_form"):
    left, right = st.columns(2)
    left.selectbox(
        "Architecture",
        [*names, FOLDER, CUSTOM],
        key="model_name",
        index=index,
        help="digits_unet and diffusers folders are diffusion UNets (diffusers UNet2DModel)",
    )
    left.text_input(
        "Your own architecture (module:function)",
        key="model_function",
        value="" if current.name in names or folder else current.name,
        placeholder="mypkg.nets:small_cnn",
    )
    left.text_input(
        "Diffusers UNet2DModel folder (config.json + safetensors)",
        key="unet_folder",
        value=folder,
        placeholder="/path/to/ddpm-cifar10/unet",
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
    right.radio(
        "Data",
        list(DATA_KINDS),
        format_func=DATA_KINDS.get,
        key="data_kind",
        index=list(DATA_KINDS).index(current.data_spec.partition(":")[0]),
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
        st.session_state.model_flash = f"Now using {shared.choice().label}."
        st.rerun()
if "model_flash" in st.session_state:
    st.success(st.session_state.pop("model_flash"))

current = shared.choice()
bundle, chain = shared.bundle(), shared.chain()
st.subheader(f"{current.label}")
st.caption(bundle.weights_note)
if diffusion.is_unet():
    diffusion.model_overview()
    st.stop()
if current.name in names and get_model_info(current.name).demo:
    st.caption("A demo model: small enough that every step answers in seconds on a CPU.")
cols = st.columns(5)
cols[0].metric("Convs on the main path", len(chain.convs))
cols[1].metric("Prunable convs", len(chain.reducible_convs))
cols[2].metric("Residual blocks", len(chain.residuals))
cols[3].metric("Valid segments", len(find_segments(chain)))
cols[4].metric("Table entries", count_table_entries(chain))
st.plotly_chart(figures.chain_figure(chain, height=320), key="chain_chart")
st.caption(
    "Boxes are the main-path convs (kernel size, 'dw' depthwise, '/2' stride 2); dots are the "
    "activation after each position; arcs are residual spans; dashed lines are breaks no merged "
    "segment may cross. Orange convs are prunable: same channels in and out, stride 1, so "
    "LayerMerge may replace them by identity inside a merged segment."
)
