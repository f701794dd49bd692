"""Background jobs: finetuning survives page changes and reloads, can be cancelled and resumed,
and sessions never see each other's model, solution or jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pages._shared.jobs import registry
from tests.app.support import open_page, texts, wait_until


def start_finetune(at: AppTest, steps: int) -> str:
    at.switch_page("pages/finetune.py").run()
    assert not at.exception
    at.number_input(key="ft_steps").set_value(steps)
    at.button(key="start_finetune").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["finetune"]
    assert at.query_params["finetune_job"] == [job_id] or at.query_params["finetune_job"] == job_id
    return job_id


def test_finetune_runs_in_the_background_and_survives_a_reload(budget_page: AppTest) -> None:
    job_id = start_finetune(budget_page, steps=4)
    budget_page.switch_page("pages/learn.py").run()  # a page change does not stop it
    assert not budget_page.exception
    # a reload is a new session whose URL carries the job id
    reloaded = open_page("finetune", finetune_job=job_id)
    assert not reloaded.exception
    wait_until(reloaded, lambda at: registry().get(job_id).status != "running")
    job = registry().get(job_id)
    assert job.status == "done", job.error
    assert job.result["status"] == "completed" and job.result["steps"] == 4
    reloaded.run()
    labels = {m.label for m in reloaded.metric}
    assert {"Test accuracy, original", "Merged, finetuned"} <= labels, texts(reloaded)
    assert "No control ran" in texts(reloaded)  # no control asked: the results say so
    assert job.result["control"] is None and "vs control" not in job.result["comparison"]["line"]
    assert job.history and job.history[-1]["step"] == 4
    # the job is core's finetune workflow, the CLI's: its folder holds what `finetune` writes
    out = Path(job.result["out"])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["metrics"]["accuracy_after"] == job.result["after"].accuracy
    assert (out / "compressed.pt").is_file()
    # the Export page now offers the finetuned network
    reloaded.switch_page("pages/export.py").run()
    assert not reloaded.exception
    assert f"finetuned 4 steps (job {job_id}), then merged" in texts(reloaded)
    assert "Test accuracy: compressed " in texts(reloaded)  # against the original, in words
    assert reloaded.download_button(key="download_checkpoint")


def test_finetune_cancel_then_resume(budget_page: AppTest) -> None:
    at = budget_page
    job_id = start_finetune(at, steps=2000)
    wait_until(at, lambda _: registry().get(job_id).done > 0)
    at.button(key="cancel_finetune").click().run()
    wait_until(at, lambda _: registry().get(job_id).status != "running")
    assert registry().get(job_id).status == "cancelled"
    at.run()
    assert at.warning and "stopped" in at.warning[0].value
    stopped_at = registry().get(job_id).done
    at.button(key="resume_finetune").click().run()
    resumed = registry().get(at.session_state["jobs"]["finetune"])
    assert resumed.id != job_id
    wait_until(at, lambda _: resumed.done > stopped_at)  # continues from the checkpoint
    resumed.cancel.set()
    wait_until(at, lambda _: not resumed.active)


def shown_label(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_sessions_do_not_share_model_solution_or_jobs(budget_page: AppTest) -> None:
    first = budget_page
    first.slider(key="budget").set_value(80).run()
    second = open_page()
    second.selectbox(key="model_name").set_value("digits_mobilenet")
    second.button(key="use_model").click().run()
    assert second.session_state["choice"].name == "digits_mobilenet"
    first.run()
    assert first.session_state["choice"].name == "digits_resnet"
    assert " segments · " in shown_label(first)  # still its own solution on its own tables
    mine, theirs = first.session_state["solution"], second.session_state["solution"]
    assert mine is not None and mine.budget_ms != theirs.budget_ms  # each on its own tables
    assert theirs.tables_digest != mine.tables_digest
    assert "finetune" not in second.session_state["jobs"]


@pytest.mark.parametrize("width", [0.5])
def test_tables_are_computed_in_the_background_and_can_be_stopped(width: float) -> None:
    at = open_page()
    at.number_input(key="model_width").set_value(width)
    at.button(key="use_model").click().run()
    at.switch_page("pages/tables.py").run()
    assert not at.exception
    assert at.info and "No tables" in at.info[0].value
    at.radio(key="tables_mode").set_value("distortion")
    at.button(key="compute_tables").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job_id = at.session_state["jobs"]["tables"]
    wait_until(at, lambda _: registry().get(job_id).done > 0)
    assert at.get("progress")
    at.button(key="cancel_tables").click().run()
    wait_until(at, lambda _: registry().get(job_id).status != "running")
    assert registry().get(job_id).status == "cancelled"
    at.run()
    assert at.warning and "stopped" in at.warning[0].value
