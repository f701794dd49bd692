"""The entry runner: every table job of every family, resumable, deduplicated, local or remote.

A table is many entries, and many entries need the same work: every single-layer entry that keeps
its conv is the original network (one finetune serves them all), every ResNet stage repeats its
merged-conv geometries (one timing serves them all). The caller maps each entry to a *job* id;
:func:`run_jobs` runs each job once and counts progress in entries.

Work is never lost: each finished job is written at once to the run's
:class:`~core.table_store.PartialStore`, and a rerun skips the jobs found there, so a killed run
resumes where it stopped. Jobs run where a :class:`Runner` says:

- in this process (one job after another, ``threads`` intra-op threads each);
- in ``processes`` local processes (joblib's loky backend), each rebuilding what it needs once
  from a small picklable context (:class:`RemoteTask`);
- on a dask.distributed cluster (joblib's dask backend), the context scattered once.

Results do not depend on where a job ran, provided each job seeds itself from its id (the
importance estimators do): the same table comes from one process, eight, or a cluster.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import LayerMergeError
from core.table_store import PartialStore
from core.threads import torch_threads

__all__ = ["ProgressCallback", "Runner", "RemoteTask", "RunOutcome", "run_jobs"]

ProgressCallback = Callable[[int, int, float | None], None]  # (entries done, total, eta_s)


@dataclass(frozen=True)
class Runner:
    """Where a table's jobs run.

    Args:
        processes: local worker processes (joblib's loky backend); 1 runs in this process.
        cluster: a dask.distributed scheduler address (``tcp://host:8786``); ``processes`` is
            then ignored.
        threads: torch intra-op threads per job; None: the caller's setting in this process,
            cores / processes in local processes, 1 on a cluster.
    """

    processes: int = 1
    cluster: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if not _positive_int(self.processes):
            raise LayerMergeError(f"jobs must be a positive integer, got {self.processes!r}")
        if self.threads is not None and not _positive_int(self.threads):
            raise LayerMergeError(f"threads must be a positive integer, got {self.threads!r}")
        if self.cluster is not None and (not isinstance(self.cluster, str) or not self.cluster):
            raise LayerMergeError(f"cluster must be a scheduler address, got {self.cluster!r}")

    @property
    def in_process(self) -> bool:
        return self.cluster is None and self.processes == 1

    def threads_per_job(self) -> int:
        """The intra-op threads each job runs with (recorded in meta.json)."""
        if self.threads is not None:
            return self.threads
        if self.cluster is not None:
            return 1
        if self.processes == 1:
            return torch.get_num_threads()
        return max(1, (os.cpu_count() or 1) // self.processes)

    def describe(self) -> str:
        """``in-process``, ``loky:N`` or ``dask:ADDRESS`` (meta.json's runner)."""
        if self.cluster is not None:
            return f"dask:{self.cluster}"
        return "in-process" if self.processes == 1 else f"loky:{self.processes}"


@dataclass(frozen=True)
class RemoteTask:
    """How a worker process runs one job.

    ``function(context, job_id, payload) -> result`` must be defined at module level (workers
    import it), and ``context`` must pickle: it travels with every task to local processes and is
    scattered once to a cluster. ``local_context``, given a scratch folder that lives as long as
    the run, may return a lighter context for local processes (e.g. weights written to a file
    once, instead of their bytes pickled with every task).
    """

    function: Callable[[Any, str, Any], dict[str, Any]]
    context: Any
    local_context: Callable[[Path], Any] | None = None


@dataclass(frozen=True)
class RunOutcome:
    """What :func:`run_jobs` did: every job's result (earlier runs' included), and counts."""

    results: dict[str, dict[str, Any]]
    ran: tuple[str, ...]  # the jobs this call ran, in the order they finished
    computed: int  # entries this call completed
    cached: int  # entries whose job was found in the partial store
    cancelled: bool


def run_jobs(
    job_of: Mapping[Hashable, str],
    payloads: Mapping[str, Any],
    *,
    store: PartialStore,
    local: Callable[[str, Any], dict[str, Any]],
    remote: RemoteTask | None = None,
    runner: Runner | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> RunOutcome:
    """Run every job of ``payloads`` that ``store`` does not hold yet, saving each at once.

    Args:
        job_of: each table entry (any hashable key) mapped to its job id; entries that share a
            job are computed once. Progress counts entries.
        payloads: every job id mapped to what its job needs (a picklable value for remote jobs).
            It may hold jobs no entry maps to (the whole-network timing, a reference network).
        store: the run's partial store: it is read for finished jobs and saved after each one.
        local: runs one job in this process, ``local(job_id, payload) -> result`` (JSON-able).
        remote: how worker processes run a job; None runs every job in this process whatever
            ``runner`` says (timings must not share the machine with each other).
        runner: where jobs run; None: in this process.
        progress: called as ``progress(done, total, eta_s)`` in entries, once at the start and
            after each job; an exception it raises stops the run, with finished jobs saved.
        cancel: when set, the run stops after the job in progress (finished jobs are saved).

    Returns:
        The results by job id, and what this call computed.

    Raises:
        LayerMergeError: the cluster cannot be reached.
    """
    runner = runner or Runner()
    unknown = set(job_of.values()) - set(payloads)
    if unknown:
        raise ValueError(f"entries map to jobs without a payload: {sorted(unknown)[:3]}")
    done = store.entries
    per_job = Counter(job_of.values())
    total = len(job_of)
    cached = sum(count for job, count in per_job.items() if job in done)
    pending = [job for job in payloads if job not in done]
    use_remote = remote is not None and not runner.in_process
    # Connect before reporting any progress: an unreachable scheduler is one clear error.
    client = _dask_client(runner.cluster) if use_remote and runner.cluster and pending else None
    ran: list[str] = []
    finished, computed, cancelled = cached, 0, False
    jobs = _execute(
        pending, payloads, local, remote if use_remote else None, runner, client, cancel
    )
    try:
        if progress is not None:
            progress(cached, total, None)
        started = time.perf_counter()
        for count, (job, result) in enumerate(jobs, start=1):
            done[job] = result
            store.save()
            ran.append(job)
            computed += per_job[job]
            finished += per_job[job]
            if progress is not None:
                # wall time per finished job already accounts for the parallelism
                per_finished = (time.perf_counter() - started) / count
                progress(finished, total, per_finished * (len(pending) - count))
            if cancel is not None and cancel.is_set():
                break
        cancelled = len(ran) < len(pending)
    finally:
        jobs.close()  # stops a process pool's remaining tasks
        if client is not None:
            client.close()
    return RunOutcome(dict(done), tuple(ran), computed, cached, cancelled)


def _execute(
    pending: Sequence[str],
    payloads: Mapping[str, Any],
    local: Callable[[str, Any], dict[str, Any]],
    remote: RemoteTask | None,
    runner: Runner,
    client: Any,
    cancel: threading.Event | None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(job id, result)`` as jobs finish: in this process, on loky, or on dask."""
    if not pending:
        return
    threads = runner.threads_per_job()
    if remote is None:
        for job in pending:
            if cancel is not None and cancel.is_set():
                return
            with torch_threads(threads):
                result = local(job, payloads[job])
            yield job, result
        return
    import joblib

    if client is None:
        with tempfile.TemporaryDirectory(prefix="layermerge-run-") as scratch:
            context = remote.context
            if remote.local_context is not None:
                context = remote.local_context(Path(scratch))
            tasks = (
                joblib.delayed(_run_remote)(remote.function, context, job, payloads[job], threads)
                for job in pending
            )
            parallel = joblib.Parallel(
                n_jobs=runner.processes, backend="loky", return_as="generator_unordered"
            )
            yield from parallel(tasks)
        return
    # joblib's dask backend runs on the current client; the context is scattered once.
    with joblib.parallel_config(backend="dask", scatter=[remote.context]):
        tasks = (
            joblib.delayed(_run_remote)(
                remote.function, remote.context, job, payloads[job], threads
            )
            for job in pending
        )
        parallel = joblib.Parallel(n_jobs=-1, return_as="generator_unordered")
        yield from parallel(tasks)


def _run_remote(
    function: Callable[[Any, str, Any], dict[str, Any]],
    context: Any,
    job: str,
    payload: Any,
    threads: int,
) -> tuple[str, dict[str, Any]]:
    """One job in a worker, with the run's thread count."""
    with torch_threads(threads):
        return job, function(context, job, payload)


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError as exc:
        raise LayerMergeError(
            "--cluster needs dask.distributed (pip install 'dask[distributed]')"
        ) from exc
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        raise LayerMergeError(f"cannot reach the dask scheduler at {address!r}: {exc}") from exc


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
