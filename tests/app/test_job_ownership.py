"""Finetune jobs belong to a model (issue 16): a job started on one model is shown, offered and
exported only for that model; the others are listed apart, one click from their model. While a
classifier trains, its test accuracy is measured at intervals beside the original's."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from pages._shared.jobs import registry
from tests.app.support import open_page, texts, wait_until

STEPS = 20


def finetune_on_resnet() -> tuple[AppTest, str]:
    """A session whose digits_resnet finetune of STEPS steps has finished."""
    at = open_page("finetune")
    at.number_input(key="ft_steps").set_value(STEPS)
    at.button(key="start_finetune").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["finetune"]
    wait_until(at, lambda _: registry().get(job_id).status != "running", timeout=300)
    assert registry().get(job_id).status == "done", registry().get(job_id).error
    at.run()
    return at, job_id


def switch_model(at: AppTest, model: str) -> None:
    at.switch_page("pages/model.py").run()
    at.selectbox(key="model_name").set_value(model)
    at.button(key="use_model").click().run()
    assert at.session_state["choice"].name == model, texts(at)


def test_a_job_started_on_one_model_is_not_offered_for_another() -> None:
    at, job_id = finetune_on_resnet()
    job = registry().get(job_id)
    assert "Test accuracy, original" in {m.label for m in at.metric}
    assert any(f"Job {job_id}: digits_resnet" in c.value for c in at.caption), texts(at)

    switch_model(at, "digits_mobilenet")
    at.switch_page("pages/finetune.py").run()
    assert not at.exception
    assert not {m.label for m in at.metric} & {"Test accuracy, original", "Merged, finetuned"}
    assert not at.get("progress") and at.button(key="start_finetune")  # a new job, for this one
    assert any(s.value == "Finetunes of other models" for s in at.subheader), texts(at)
    switch = at.button(key=f"switch_{job_id}")
    assert switch.label == "Switch to digits_resnet"
    at.switch_page("pages/export.py").run()
    assert "merged without finetuning" in texts(at)  # never the other model's network
    assert "digits_mobilenet" in at.subheader[0].value

    at.switch_page("pages/finetune.py").run()
    at.button(key=f"switch_{job_id}").click().run()  # one click back
    assert at.session_state["choice"] == job.config["choice"]
    assert at.session_state["solution"] == job.config["solution"]
    assert "Merged, finetuned" in {m.label for m in at.metric}, texts(at)
    at.switch_page("pages/export.py").run()
    assert f"finetuned {STEPS} steps (job {job_id}), then merged" in texts(at)
    assert at.download_button(key="download_checkpoint").proto.label


def test_test_accuracy_is_measured_at_intervals_beside_the_original() -> None:
    _, job_id = finetune_on_resnet()
    job = registry().get(job_id)
    tests = job.live["tests"]
    steps = [step for step, _ in tests]
    assert steps[0] == 0 and steps[-1] == STEPS and len(steps) >= 5, tests
    assert steps == sorted(steps)
    assert abs(tests[-1][1] - job.result["after"].accuracy) < 1e-6  # the final test, exactly
    assert job.live["reference"] == job.result["before"].accuracy
    assert job.config["label"].startswith("SGD, lr 0.02, batch 64, 20 steps")
    assert job.config["estimate_s"] and job.config["estimate_s"] > 0
