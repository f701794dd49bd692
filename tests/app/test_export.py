"""The Export page on every family's demo model: its checkpoint and ONNX files are the network the
page describes (the merged, not finetuned, solution), as core's family builds it."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch

from core.export import load
from core.families import family_for
from core.tables import read_manifest
from tests.app.support import open_page, record_downloads, texts

DEMO_MODELS = sorted({entry["model"] for entry in read_manifest()})


def as_array(output: Any) -> np.ndarray:
    """A network's output as an array (a diffusers UNet wraps its tensor in ``.sample``)."""
    return getattr(output, "sample", output).detach().numpy()


@pytest.mark.parametrize("model", DEMO_MODELS)
def test_the_downloads_hold_the_merged_network(model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    deferred = record_downloads(monkeypatch)  # what each download serves on click
    at = open_page()
    if model != at.session_state["choice"].name:
        at.selectbox(key="model_name").set_value(model)
        at.button(key="use_model").click().run()
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert "merged without finetuning" in texts(at)
    solution = at.session_state["solution"]

    checkpoint = deferred[at.download_button(key="download_checkpoint").proto.deferred_file_id]()
    network = load(checkpoint)
    family = family_for(model)
    bundle = family.load(model)
    traced = family.trace(bundle)
    expected = family.merge(family.training_form(bundle.model, traced, solution), traced, solution)
    inputs = family.onnx_inputs(traced, batch=2)
    with torch.no_grad():
        want = as_array(expected(*inputs.values()))
        got = as_array(network(*inputs.values()))
    scale = float(np.abs(want).max())
    assert float(np.abs(want - got).max()) <= 1e-5 * scale

    onnx = deferred[at.download_button(key="download_onnx").proto.deferred_file_id]()
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    ran = session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]
    assert float(np.abs(want - ran).max()) <= 1e-4 * scale


def test_the_onnx_file_is_timed_against_the_original_and_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Export page times the ONNX download against the original's ONNX export on request,
    shows the line and the tables' prediction, and records it in the checkpoint."""
    deferred = record_downloads(monkeypatch)  # what each download serves on click
    at = open_page("export")
    assert at.session_state["choice"].name == "digits_resnet"
    assert "onnxruntime: merged" not in texts(at)
    # the shipped tables were timed with torch: the page says its prediction is torch's
    assert "made with the torch latency backend" in texts(at)
    at.button(key="export_onnx_measure").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    shown = texts(at)
    assert "onnxruntime: merged" in shown and "(torch eager predicted" in shown
    assert [m.label for m in at.metric if "ONNX Runtime" in m.label]

    checkpoint = deferred[at.download_button(key="download_checkpoint").proto.deferred_file_id]()
    recorded = torch.load(io.BytesIO(checkpoint), weights_only=True)
    speed = recorded["metrics"]["onnx_speed"]
    assert speed["backend"] == "onnxruntime" and speed["predicted_backend"] == "torch"
    assert speed["original_ms"] > 0 and speed["compressed_ms"] > 0
    assert (speed["speedup"] < 1) == ("slower than the original" in shown)
