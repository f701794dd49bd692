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

Local workers never outlive the run's process: each watches the process that started it and exits
as soon as that one is gone (killed with SIGKILL, say), instead of finishing a table nobody will
read. A cluster address is probed before dask is handed it: the scheduler must answer with dask's
handshake within :data:`CLUSTER_PROBE_TIMEOUT_S`, so a port that answers with something else (a
web server, another service) is one clear error, not dask reading its bytes as a message length.
"""

from __future__ import annotations

import os
import socket
import struct
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

__all__ = [
    "ProgressCallback",
    "Runner",
    "RemoteTask",
    "RunOutcome",
    "run_jobs",
    "check_scheduler",
    "CLUSTER_PROBE_TIMEOUT_S",
]

ProgressCallback = Callable[[int, int, float | None], None]  # (entries done, total, eta_s)
CLUSTER_PROBE_TIMEOUT_S = 10.0  # how long a scheduler may take to send its handshake
PARENT_POLL_S = 0.5  # how often a local worker checks that the run's process is alive
_HANDSHAKE_MAX_BYTES = 1 << 16  # dask's handshake is ~60 bytes; anything near this is not one


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
                n_jobs=runner.processes,
                backend="loky",
                return_as="generator_unordered",
                # first thing in each worker: exit once this process is gone (see _PARENT_WATCH)
                initializer=exec,
                initargs=(_parent_watch(os.getpid()), {}),
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


# What every local worker runs first, through ``exec`` (a builtin, so the worker runs it before
# it imports anything of ours: ``core`` imports torch, which takes seconds): a daemon thread that
# ends the worker as soon as the run's process is no longer its parent, i.e. it died (a SIGKILL
# leaves no time to stop the workers) and the worker was handed to init or a subreaper.
_PARENT_WATCH = """
import os, threading, time

def watch(parent={parent}, poll={poll}):
    while os.getppid() == parent:
        time.sleep(poll)
    os._exit(1)

threading.Thread(target=watch, name="layermerge-parent-watch", daemon=True).start()
"""


def _parent_watch(parent: int) -> str:
    """The code of :data:`_PARENT_WATCH` for workers of the process ``parent``."""
    return _PARENT_WATCH.format(parent=int(parent), poll=float(PARENT_POLL_S))


def check_scheduler(address: str, *, timeout: float = CLUSTER_PROBE_TIMEOUT_S) -> None:
    """Make sure ``address`` is a dask scheduler before dask.distributed is given it.

    A dask scheduler sends its handshake as soon as a connection opens: an 8-byte length, then
    frames whose first is a small msgpack map naming its Python version. Anything else (a web
    server, an SSH daemon, silence) is refused here: dask itself would read the first bytes as
    a length and may try to allocate exabytes. Only ``tcp://`` addresses (and bare
    ``host:port``) are probed; TLS and other transports go to dask as they are.

    Raises:
        LayerMergeError: the address is malformed, refuses the connection, or answers with
            anything but a dask handshake within ``timeout`` seconds.
    """
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, port = _host_port(rest, address)
    what = f"--cluster {address}"
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise LayerMergeError(
            f"cannot reach the dask scheduler at {address}: no answer within {timeout:g} s"
        ) from exc
    except OSError as exc:
        raise LayerMergeError(
            f"cannot reach the dask scheduler at {address}: {exc.strerror or exc}"
        ) from exc
    try:
        with connection:
            deadline = time.monotonic() + timeout
            header = _receive(connection, 8, deadline)
            (size,) = struct.unpack("<Q", header)
            if not 16 <= size <= _HANDSHAKE_MAX_BYTES:
                raise ValueError(f"it answered {header!r}..., not dask's handshake")
            body = _receive(connection, size, deadline)
    except TimeoutError as exc:
        raise LayerMergeError(
            f"{what} answered but sent no dask handshake within {timeout:g} s: it is not a dask "
            "scheduler (give the scheduler's address, e.g. tcp://host:8786)"
        ) from exc
    except OSError as exc:
        raise LayerMergeError(
            f"the dask scheduler at {address} broke the connection: {exc.strerror or exc}"
        ) from exc
    except (ValueError, EOFError) as exc:
        raise LayerMergeError(
            f"{what} is not a dask scheduler: {exc} (give the scheduler's address, e.g. "
            "tcp://host:8786)"
        ) from exc
    try:
        _check_handshake(body)
    except (ValueError, struct.error) as exc:
        raise LayerMergeError(
            f"{what} is not a dask scheduler: its first message is not dask's handshake ({exc}); "
            "give the scheduler's address, e.g. tcp://host:8786"
        ) from exc


def _host_port(location: str, address: str) -> tuple[str, int]:
    host, sep, port = location.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LayerMergeError(
            f"--cluster {address} is not a scheduler address: give tcp://HOST:PORT "
            "(e.g. tcp://10.0.0.5:8786)"
        )
    return host, int(port)


def _receive(connection: socket.socket, count: int, deadline: float) -> bytes:
    """Exactly ``count`` bytes, or EOFError / TimeoutError."""
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        connection.settimeout(left)
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise EOFError(f"it closed the connection after {len(data)} bytes")
        data += chunk
    return bytes(data)


def _check_handshake(body: bytes) -> None:
    """``body`` must be dask's frames (a count, lengths, frames) whose first is a msgpack map
    with ``python``: parsed with fixed limits, nothing deserialized beyond plain values."""
    import msgpack

    (frames,) = struct.unpack_from("<Q", body)
    if not 1 <= frames <= 16 or 8 * (1 + frames) > len(body):
        raise ValueError(f"{frames} frames")
    lengths = struct.unpack_from(f"<{frames}Q", body, 8)
    start = 8 * (1 + frames)
    if sum(lengths) != len(body) - start:
        raise ValueError("frame lengths do not add up")
    try:
        first = msgpack.unpackb(body[start : start + lengths[0]], raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types on junk
        raise ValueError(f"undecodable first frame: {type(exc).__name__}") from exc
    if not isinstance(first, dict) or "python" not in first:
        raise ValueError("no python version in it")


def _dask_client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError as exc:
        raise LayerMergeError(
            "--cluster needs dask.distributed (pip install 'dask[distributed]')"
        ) from exc
    check_scheduler(address)
    try:
        return Client(address, timeout=30)
    except (OSError, TimeoutError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200]
        raise LayerMergeError(f"cannot reach the dask scheduler at {address!r}: {message}") from exc


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
