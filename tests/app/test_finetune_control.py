"""The Finetune page's control: the original finetuned with the same recipe, shown beside.

On the digits_resnet demo (the app's default model), a few steps: the checkbox starts a job that
also finetunes the original, its results set the compressed accuracy against the original's and
the control's, and a second job with the same settings reuses the control instead of training.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from pages._shared.jobs import registry
from tests.app.support import texts, wait_until

CONTROL_METRIC = "Control: the original finetuned the same way"


def run_with_control(at: AppTest, steps: int) -> str:
    at.switch_page("pages/finetune.py").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    at.number_input(key="ft_steps").set_value(steps)
    at.checkbox(key="ft_control").check().run()
    assert "with the control up to twice that" in texts(at) or "not measured yet" in texts(at)
    at.button(key="start_finetune").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["finetune"]
    wait_until(at, lambda _: registry().get(job_id).status != "running", timeout=300)
    job = registry().get(job_id)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    return job_id


def test_finetune_with_a_control_shows_it_and_reuses_it(budget_page: AppTest) -> None:
    at = budget_page
    job = registry().get(run_with_control(at, steps=3))
    result = job.result
    control = result["control"]
    assert control is not None and control.status == "completed" and control.step == 3
    assert job.config["control"] and "with a control" in job.config["label"]
    # the control is its own network's accuracy, not the original's or the compressed one's
    comparison = result["comparison"]
    assert comparison["original"] == result["before"].accuracy
    assert comparison["compressed"] == result["after"].accuracy
    assert comparison["control"] == control.figures["accuracy"]
    assert comparison["vs_control"] == result["after"].accuracy - control.figures["accuracy"]
    labels = {m.label for m in at.metric}
    assert {"Test accuracy, original", "Merged, finetuned", CONTROL_METRIC} <= labels, texts(at)
    assert any("vs control" in i.value and "original finetuned" in i.value for i in at.info)
    assert "trained (kept in" in texts(at)

    # a second job with the same model and settings (another solution would do too): reused
    again = registry().get(run_with_control(at, steps=3))
    assert again.id != job.id
    assert again.result["control"].reused
    assert again.result["control"].figures == control.figures
    assert "reused from an earlier job" in texts(at)
