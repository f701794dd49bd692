"""The pages on a diffusion UNet: the digits_unet demo and a diffusers folder, core not patched.

Samples stand in for accuracy: the Model page shows a grid of the UNet's samples, the Budget page
times the merged UNet and samples it on request, the Finetune page runs an ε-loss finetune in the
background and shows grids and the digits-FD, the Export page serves a checkpoint that
``core.export.load`` rebuilds. Tables are the shipped ones when they fit digits_unet's weights,
otherwise tiny ones computed here (no finetune per entry, 16 holdout images, short timings).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.export import load
from core.families.unet.chain import trace_unet
from core.families.unet.data import load_diffusion_data
from core.families.unet.importance import UNetImportanceConfig, estimate_unet_importance
from core.families.unet.latency import measure_unet_latency
from core.families.unet.unet import DEMO_UNET_CONFIG, build_unet, save_unet_folder, unet_from_config
from core.latency import LatencyConfig
from pages._shared.jobs import registry
from pages._shared.panels.samples_finetune import FD_LABEL
from tests.app.support import open_page, record_downloads, texts, wait_until

UNET = "digits_unet"
FOLDER = "diffusers folder…"
JOB_TIMEOUT = 400  # seconds; the test machine may be shared and busy


def submit(at: AppTest) -> AppTest:
    at.button(key="use_model").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    return at


def use_unet(at: AppTest | None = None) -> AppTest:
    """A session (fresh unless given) whose model is digits_unet, on the Model page."""
    at = at or open_page()
    at.selectbox(key="model_name").set_value(UNET)
    submit(at)
    assert at.session_state["choice"].name == UNET, texts(at)
    return at


def frame_with(at: AppTest, column: str) -> Any:
    """The first dataframe on the page with ``column``."""
    return next(f.value for f in at.dataframe if column in f.value.columns)


@pytest.fixture(scope="module")
def unet_tables() -> Path:
    """The tables the app uses for digits_unet: shipped ones if they fit, else computed here."""
    at = use_unet()
    at.switch_page("pages/tables.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    found = re.search(r"\(written to (.+)\)\.", texts(at))
    if found is None:  # tables are in use already (shipped, or computed by an earlier test)
        return Path()
    out = Path(found.group(1))
    bundle = build_unet(UNET)
    uchain = trace_unet(bundle.model)
    timing = LatencyConfig(batch=2, min_run_time=0.01, warmup_runs=0, network=True)
    measure_unet_latency(bundle, uchain, timing, out=out)
    importance = UNetImportanceConfig(steps=0, holdout_images=16)
    estimate_unet_importance(bundle, uchain, load_diffusion_data("digits"), importance, out=out)
    return out


def test_model_page_uses_digits_unet_and_shows_its_samples() -> None:
    at = use_unet()
    assert at.success and UNET in at.success[0].value
    assert len(at.image) == 1, "no sample grid"
    assert "samples" in at.image[0].captions[0]
    labels = {m.label for m in at.metric}
    assert {"Convs on the main path", "ResnetBlock2Ds", "Table entries"} <= labels
    assert at.get("plotly_chart"), "the chain picture is missing"
    assert not at.exception


def test_a_bad_diffusers_folder_keeps_the_previous_model(tmp_path: Path) -> None:
    at = open_page()
    for folder in (tmp_path / "no-such-folder", tmp_path):  # missing; a folder with no config
        at.selectbox(key="model_name").set_value(FOLDER)
        at.text_input(key="unet_folder").input(str(folder))
        submit(at)
        assert len(at.error) == 1, texts(at)
        message = at.error[0].value
        assert str(folder) in message and "\n" not in message
        assert at.session_state["choice"].name == "digits_resnet"  # still the previous model


def test_tables_budget_and_learn_pages_on_digits_unet(unet_tables: Path) -> None:
    at = use_unet()
    at.switch_page("pages/tables.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert len(at.get("plotly_chart")) == 2, texts(at)  # the latency and importance heatmaps
    at.switch_page("pages/budget.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    before = next(m.value for m in at.metric if m.label == "Predicted latency")
    at.slider(key="budget").set_value(90).run()
    assert not at.exception
    assert next(m.value for m in at.metric if m.label == "Predicted latency") != before
    assert not at.image  # samples wait for the button: the slider stays fast
    at.button(key="measure_unet").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert len(at.image) == 2, "original and compressed sample grids"
    table = frame_with(at, "UNet")
    assert list(table["UNet"]) == ["original", "merged"]
    assert all(float(cell.split()[0]) > 0 for cell in table["measured step"]), table
    # the speed model's merged step is the measured original's step over its predicted speed-up
    line = next(m.value for m in at.markdown if m.value.startswith("Speed-up of one denoising"))
    predicted = float(re.search(r"predicted \*\*([0-9.]+)×", line).group(1))
    original, merged = (float(cell.split()[0].replace(",", "")) for cell in table["predicted step"])
    assert original / merged == pytest.approx(predicted, abs=0.01), (line, table)
    at.switch_page("pages/learn.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.info and "diffusion UNet" in at.info[0].value


def test_finetune_job_completes_and_the_export_loads(
    unet_tables: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = use_unet()
    at.switch_page("pages/budget.py").run()
    at.slider(key="budget").set_value(80).run()
    at.switch_page("pages/finetune.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    for key, value in {
        "uft_steps": 2,
        "uft_eval": 2,
        "uft_batch": 16,
        "uft_fd": 16,
        "uft_sampling_steps": 2,
    }.items():
        at.number_input(key=key).set_value(value)
    at.checkbox(key="ft_control").check()  # the original finetuned the same way, beside it
    at.button(key="start_finetune").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["finetune"]
    wait_until(at, lambda _: registry().get(job_id).status != "running", timeout=JOB_TIMEOUT)
    job = registry().get(job_id)
    assert job.status == "done", job.error
    assert [h["step"] for h in job.history] == [1, 2] and job.history[-1]["holdout"] is not None
    at.run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    labels = {m.label for m in at.metric}
    control = job.result["control"]
    assert control.status == "completed" and control.step == 2
    assert {"digits-FD, finetuned", "Compressed, finetuned"} <= labels, texts(at)
    assert "Control: the original finetuned the same way" in labels, texts(at)
    comparison = job.result["comparison"]
    assert comparison["control"] == control.figures["eps_loss"] != job.result["holdout_original"]
    assert any("lower is better" in i.value and "vs control" in i.value for i in at.info)
    assert any(FD_LABEL in m.value for m in at.markdown)  # said plainly: not Inception FID
    assert len(at.image) == 3, "grids of the original, before and after finetuning"

    deferred = record_downloads(monkeypatch)  # what each download serves on click
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert f"finetuned 2 steps (job {job_id}), then merged" in texts(at)
    button = at.download_button(key="download_checkpoint")
    data = deferred[button.proto.deferred_file_id]()
    network = load(data)
    rows = {row[""]: row for row in frame_with(at, "compressed").to_dict("records")}
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in network.modules())
    shown = {side: int(rows["Conv2d modules"][side]) for side in ("original", "compressed")}
    assert convs == shown["compressed"] < shown["original"]
    sample = torch.zeros(2, 1, 16, 16)
    steps = torch.tensor([10, 500])
    with torch.no_grad():
        expected = network(sample, steps).sample
    assert expected.shape == sample.shape

    onnx_button = at.download_button(key="download_onnx")
    session = onnxruntime.InferenceSession(
        deferred[onnx_button.proto.deferred_file_id](), providers=["CPUExecutionProvider"]
    )
    got = session.run(None, {"sample": sample.numpy(), "timestep": steps.numpy()})[0]
    assert float(abs(expected.numpy() - got).max()) <= 1e-4 * float(abs(expected).max())


def test_tables_of_a_diffusers_folder_run_as_a_background_job(tmp_path: Path) -> None:
    folder = save_unet_folder(unet_from_config(DEMO_UNET_CONFIG, seed=1), tmp_path / "unet")
    at = open_page()
    at.selectbox(key="model_name").set_value(FOLDER)
    at.text_input(key="unet_folder").input(str(folder))
    submit(at)
    assert at.session_state["choice"].name == f"diffusers:{folder.resolve()}", texts(at)
    assert len(at.image) == 1
    at.switch_page("pages/tables.py").run()
    assert at.info and "No tables" in at.info[0].value, texts(at)
    at.number_input(key="unet_tables_batch").set_value(1)
    at.number_input(key="unet_tables_steps").set_value(0)
    at.number_input(key="unet_tables_holdout").set_value(2)
    at.button(key="compute_tables").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["tables"]
    wait_until(at, lambda _: registry().get(job_id).done > 0, timeout=JOB_TIMEOUT)
    assert at.get("progress")
    at.button(key="cancel_tables").click().run()
    wait_until(at, lambda _: registry().get(job_id).status != "running", timeout=JOB_TIMEOUT)
    assert registry().get(job_id).status == "cancelled"


def test_the_tables_form_says_why_an_rgb_unet_cannot_learn_from_the_digits(tmp_path: Path) -> None:
    rgb = unet_from_config({**DEMO_UNET_CONFIG, "in_channels": 3, "out_channels": 3}, seed=1)
    folder = save_unet_folder(rgb, tmp_path / "rgb")
    at = open_page()
    at.selectbox(key="model_name").set_value(FOLDER)
    at.text_input(key="unet_folder").input(str(folder))
    submit(at)
    at.switch_page("pages/tables.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    warning = " ".join(w.value for w in at.warning)
    assert "No tables can be computed here" in warning and "3-channel images" in warning, texts(at)
    assert not any(b.key == "compute_tables" for b in at.button)  # no job that would fail


def test_a_cancelled_unet_finetune_resumes_from_its_checkpoint(unet_tables: Path) -> None:
    at = use_unet()
    at.switch_page("pages/budget.py").run()
    at.slider(key="budget").set_value(80).run()
    at.switch_page("pages/finetune.py").run()
    settings = {"uft_steps": 40, "uft_eval": 40, "uft_batch": 8, "uft_fd": 0}
    for key, value in {**settings, "uft_sampling_steps": 2}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="start_finetune").click().run()
    first = registry().get(at.session_state["jobs"]["finetune"])
    wait_until(at, lambda _: first.done >= 3 or first.status != "running", timeout=JOB_TIMEOUT)
    at.button(key="cancel_finetune").click().run()
    wait_until(at, lambda _: first.status != "running", timeout=JOB_TIMEOUT)
    assert first.status == "cancelled", first.error
    stopped_at = first.history[-1]["step"]
    assert stopped_at < 40
    at.run()
    at.button(key="resume_finetune").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    second = registry().get(at.session_state["jobs"]["finetune"])
    assert second is not first
    wait_until(at, lambda _: second.status != "running", timeout=JOB_TIMEOUT)
    assert second.status == "done", second.error
    steps = [h["step"] for h in second.history]
    assert steps == list(range(1, 41)), "the resumed run continues where the first stopped"
