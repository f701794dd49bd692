"""The entry runner: shared jobs run once, progress counts entries, runs resume and cancel."""

from __future__ import annotations

import os
import threading

import pytest

from core.errors import LayerMergeError
from core.runner import RemoteTask, Runner, run_jobs
from core.table_store import PartialStore

JOB_OF = {"a": "j1", "b": "j1", "c": "j2", "d": "j2", "e": "j2"}  # 5 entries, 2 jobs
PAYLOADS = {"j1": 1, "j2": 2, "extra": 3}  # "extra": a job no entry maps to


def _scaled(factor: int, job: str, payload: int) -> dict:
    """A job as workers run it: module level, so worker processes can import it."""
    return {"value": payload * factor, "pid": os.getpid()}


def test_entries_sharing_a_job_run_once_and_progress_counts_entries(tmp_path):
    calls, progress = [], []

    def local(job: str, payload: int) -> dict:
        calls.append(job)
        return {"value": payload}

    def report(done: int, total: int, eta: float | None) -> None:
        progress.append((done, total))

    store = PartialStore(tmp_path, "run", {"key": 1})
    outcome = run_jobs(JOB_OF, PAYLOADS, store=store, local=local, progress=report)
    assert calls == ["j1", "j2", "extra"]
    assert progress == [(0, 5), (2, 5), (5, 5), (5, 5)]
    assert (outcome.computed, outcome.cached, outcome.cancelled) == (5, 0, False)
    assert outcome.results["j2"] == {"value": 2}
    again = run_jobs(JOB_OF, PAYLOADS, store=PartialStore(tmp_path, "run", {"key": 1}), local=local)
    assert (again.ran, again.cached, again.computed) == ((), 5, 0)
    assert calls == ["j1", "j2", "extra"]  # nothing ran again
    with pytest.raises(ValueError, match="without a payload"):
        run_jobs({"a": "missing"}, {}, store=PartialStore(None, "x", {}), local=local)


def test_a_cancelled_or_interrupted_run_keeps_its_finished_jobs_and_resumes(tmp_path):
    cancel = threading.Event()

    def cancel_during_first(job: str, payload: int) -> dict:
        cancel.set()  # a user pressing stop while this job runs
        return {"value": payload}

    store = PartialStore(tmp_path, "run", {"key": 1})
    stopped = run_jobs(JOB_OF, PAYLOADS, store=store, local=cancel_during_first, cancel=cancel)
    assert stopped.cancelled and stopped.ran == ("j1",) and stopped.computed == 2

    def stop(done: int, total: int, eta: float | None) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_jobs(
            JOB_OF,
            PAYLOADS,
            store=PartialStore(tmp_path, "run", {"key": 1}),
            local=lambda job, payload: {"value": payload},
            progress=stop,
        )
    resumed = run_jobs(
        JOB_OF,
        PAYLOADS,
        store=PartialStore(tmp_path, "run", {"key": 1}),
        local=lambda job, payload: {"value": payload},
    )
    assert resumed.ran == ("extra",) and resumed.cached == 5 and not resumed.cancelled


def test_runner_settings_are_checked_and_described():
    assert Runner().describe() == "in-process" and Runner().in_process
    assert Runner(processes=2).describe() == "loky:2"
    assert Runner(processes=2, cluster="tcp://h:8786").describe() == "dask:tcp://h:8786"
    assert Runner(threads=3).threads_per_job() == 3
    assert Runner(cluster="tcp://h:8786").threads_per_job() == 1
    for kwargs, match in (({"processes": 0}, "jobs"), ({"threads": 0}, "threads")):
        with pytest.raises(LayerMergeError, match=match):
            Runner(**kwargs)


@pytest.mark.slow
def test_local_processes_give_what_this_process_gives(tmp_path):
    scratch_seen = []

    def light_context(scratch):
        scratch_seen.append(scratch.is_dir())
        return 10

    remote = RemoteTask(_scaled, 10, local_context=light_context)
    here = run_jobs(
        JOB_OF,
        PAYLOADS,
        store=PartialStore(None, "x", {}),
        local=lambda job, payload: _scaled(10, job, payload),
    )
    there = run_jobs(
        JOB_OF,
        PAYLOADS,
        store=PartialStore(tmp_path, "x", {}),
        local=lambda job, payload: pytest.fail("ran in this process"),
        remote=remote,
        runner=Runner(processes=2, threads=1),
    )
    assert {j: r["value"] for j, r in there.results.items()} == {
        j: r["value"] for j, r in here.results.items()
    }
    assert all(r["pid"] != os.getpid() for r in there.results.values())
    assert scratch_seen == [True]
    assert PartialStore(tmp_path, "x", {}).entries.keys() == there.results.keys()
