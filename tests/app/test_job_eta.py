"""A job's ETA is its stage's own average pace: start-up work and periodic pauses do not make it
jump (issue 16: it went 1,083 s → 1,941 s while a user watched)."""

from __future__ import annotations

import pytest

from pages._shared import jobs
from pages._shared.jobs import Job
from pages._shared.numbers import duration


def test_the_eta_ignores_start_up_and_spreads_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 0.0}
    monkeypatch.setattr(jobs.time, "monotonic", lambda: clock["now"])
    job = Job(id="x", kind="finetune", title="t")
    clock["now"] = 300.0  # five minutes of loading and testing before the first step
    job.report(1, 200, eta_s=300.0 / 1 * 199, stage="finetuning")  # the worker's own guess
    etas = []
    for step in range(2, 201):
        clock["now"] += 1.0 + (4.0 if step % 20 == 0 else 0.0)  # 1 s a step, an evaluation per 20
        job.report(step, 200, eta_s=None, stage="finetuning")
        etas.append(job.eta_s)
    pace = (clock["now"] - 300.0) / 199
    assert job.eta_s == 0
    assert etas[20] == pytest.approx((200 - 22) * (clock_at(22) - 300.0) / 21, rel=1e-9)
    assert abs(etas[100] - (200 - 102) * pace) / ((200 - 102) * pace) < 0.05
    shown = [duration(eta) for eta in etas[40:180]]
    changes = sum(a != b for a, b in zip(shown, shown[1:], strict=False))
    assert changes < 40, shown  # the words change as time passes, not at every step


def clock_at(step: int) -> float:
    """The fake clock of the test above at ``step``: 300 s, then 1 s a step, 4 s more every 20."""
    return 300.0 + (step - 1) + 4.0 * (step // 20)


def test_a_new_stage_starts_its_own_pace() -> None:
    job = Job(id="y", kind="finetune", title="t")
    job.report(5, 10, eta_s=1.0, stage="finetuning")
    job.report(1, 60, eta_s=None, stage="sampling")
    assert job.eta_s is None and job.stage == "sampling"
