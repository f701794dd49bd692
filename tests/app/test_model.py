"""The Model page: bad input gets one clear message and never a traceback; good input is used."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from tests.app.support import open_page


class _Evil:
    """Unpickling this would create a file: weights must never be unpickled as code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.path}",))


# These tests read the session's choice: what the sidebar shows is tested in test_pages.py.


def submit(at: AppTest) -> AppTest:
    at.button(key="use_model").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    return at


def test_garbage_weights_are_refused_with_a_message() -> None:
    at = open_page()  # the Model page is the default one
    at.file_uploader(key="weights_upload").upload("weights.pt", b"\x00not a checkpoint" * 10)
    submit(at)
    assert at.error and "weights.pt" in at.error[0].value
    assert at.session_state["choice"].name == "digits_resnet"  # still the previous model


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"state_dict": _Evil(str(marker))}, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    at = open_page()  # the Model page is the default one
    at.file_uploader(key="weights_upload").upload("evil.pt", buffer.getvalue())
    submit(at)
    assert at.error, "an unsafe file was accepted"
    assert not marker.exists(), "the pickle's payload ran"


def test_weights_of_another_architecture_are_explained() -> None:
    state_dict = torch.nn.Linear(3, 4).state_dict()
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    at = open_page()  # the Model page is the default one
    at.file_uploader(key="weights_upload").upload("linear.pt", buffer.getvalue())
    submit(at)
    assert at.error and "do not fit" in at.error[0].value


def test_a_wrong_folder_path_is_refused_with_a_message(tmp_path: Path) -> None:
    at = open_page()  # the Model page is the default one
    at.radio(key="data_kind").set_value("folder")
    at.text_input(key="data_path").input(str(tmp_path / "no-such-folder"))
    submit(at)
    assert at.error and "no-such-folder" in at.error[0].value
    assert at.session_state["choice"].data_spec == "digits"


def test_a_missing_cifar_folder_is_refused(tmp_path: Path) -> None:
    at = open_page()  # the Model page is the default one
    at.radio(key="data_kind").set_value("cifar10")
    at.text_input(key="data_path").input(str(tmp_path))
    submit(at)
    assert at.error


def test_an_unknown_module_function_is_refused() -> None:
    at = open_page()  # the Model page is the default one
    at.selectbox(key="model_name").set_value("module:function…")
    at.text_input(key="model_function").input("no_such_module_xyz:net")
    submit(at)
    assert at.error and "no_such_module_xyz" in at.error[0].value


def test_a_users_own_architecture_is_traced() -> None:
    at = open_page()  # the Model page is the default one
    at.selectbox(key="model_name").set_value("module:function…")
    at.text_input(key="model_function").input("tests.helpers:resnet20")
    at.number_input(key="model_input_size").set_value(32)
    submit(at)
    assert at.success, at.error[0].value if at.error else ""
    assert at.session_state["choice"].name == "tests.helpers:resnet20"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Convs on the main path"] == "19"  # stem + 9 blocks of two


def test_switching_model_resets_the_solution() -> None:
    at = open_page()  # the Model page is the default one
    before = at.session_state["solution"]  # digits_resnet's, at the default budget
    at.selectbox(key="model_name").set_value("digits_mobilenet")
    submit(at)
    assert at.success
    assert at.session_state["choice"].name == "digits_mobilenet"
    after = at.session_state["solution"]  # the new model's own, from its own tables
    assert after is None or after.tables_digest != before.tables_digest


def test_a_research_checkpoint_under_a_th_name_is_loaded_and_used() -> None:
    """``{'state_dict': ...}`` with ``module.`` keys (DataParallel) as a ``.th`` file: the content
    decides, not the file name, and the weights in use are the file's."""
    from core.models import build_model

    model = build_model("digits_resnet").model  # the shipped weights, then changed: the
    generator = torch.Generator().manual_seed(5)  # test can tell the file's weights apart
    state = {
        f"module.{k}": v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point()
        else v
        for k, v in model.state_dict().items()
    }  # fmt: skip
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "epoch": 200, "best_prec1": 91.7}, buffer)
    at = open_page()  # the Model page is the default one
    at.file_uploader(key="weights_upload").upload("model_best.th", buffer.getvalue())
    submit(at)
    assert not at.error, at.error[0].value
    assert at.success and "model_best.th" in at.success[0].value
    choice = at.session_state["choice"]
    assert choice.name == "digits_resnet" and choice.weights_label == "model_best.th"
    used = at.session_state["state_dict"]
    assert used.keys() == {k.removeprefix("module.") for k in state}
    assert all(torch.equal(used[k.removeprefix("module.")], v) for k, v in state.items())
