"""The entry runner with hostile surroundings: a --cluster that is not dask, a killed parent.

Issue 14: a cluster address that answers but is not a dask scheduler is one line (dask would read
its bytes as a message length and may try to allocate exabytes); killing the parent of a
``--jobs N`` run leaves no worker processes behind.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.__main__ import main
from core.errors import LayerMergeError
from core.runner import check_scheduler

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _server(reply: bytes | None) -> Iterator[str]:
    """A plain TCP server answering every connection with ``reply`` and then holding it open
    for a while (``b""``: closing it at once; None: silence), at the address it yields."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                if reply:
                    connection.sendall(reply)
                if reply != b"":
                    stop.wait(2.0)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


GARBAGE = {
    "bytes ff": b"\xff" * 64,  # read as a length by dask: 2**64 - 1 bytes
    "http": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "ssh": b"SSH-2.0-OpenSSH_9.6\r\n",
    "closes": b"",
    # a plausible length and frame count, but the frame is not dask's handshake
    "framed junk": (24).to_bytes(8, "little")
    + (1).to_bytes(8, "little")
    + (8).to_bytes(8, "little")
    + b"\x00" * 8,
}


@pytest.mark.parametrize("reply", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_server_that_is_not_dask_is_refused_in_one_line(reply: bytes) -> None:
    with _server(reply) as address:
        started = time.monotonic()
        with pytest.raises(LayerMergeError, match="not a dask scheduler") as info:
            check_scheduler(address, timeout=5)
        assert time.monotonic() - started < 4  # answered at once, not after the timeout
        assert "\n" not in str(info.value)


def test_a_silent_server_is_refused_after_the_timeout() -> None:
    with _server(None) as address:
        with pytest.raises(LayerMergeError, match="no dask handshake within 0.5 s"):
            check_scheduler(address, timeout=0.5)


@pytest.mark.parametrize("address", ["nonsense", "tcp://host", "tcp://host:99999"])
def test_a_malformed_address_is_refused(address: str) -> None:
    with pytest.raises(LayerMergeError, match="not a scheduler address"):
        check_scheduler(address)


def test_a_closed_port_is_refused() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LayerMergeError, match="cannot reach the dask scheduler"):
        check_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)


def test_a_real_scheduler_passes_the_probe() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address=None, protocol="tcp"
    ) as cluster:
        check_scheduler(cluster.scheduler_address)


def test_importance_with_a_garbage_cluster_exits_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _server(b"\xff" * 64) as address:
        out = tmp_path / "tables"
        code = main(
            ["importance", "digits_resnet", "--data", "digits", "--out", str(out)]
            + ["--cluster", address]
        )
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert "not a dask scheduler" in lines[0] and address in lines[0]
        assert not out.exists()


def _alive(process: Any) -> bool:
    """True while ``process`` (a psutil.Process) runs: gone or a zombie is not alive."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_killing_the_parent_of_a_jobs_run_leaves_no_worker(tmp_path: Path) -> None:
    """SIGKILL leaves the run no time to stop its pool: the workers must notice by themselves."""
    psutil = pytest.importorskip("psutil")
    command = [sys.executable, "-m", "core", "importance", "digits_resnet", "--data", "digits"]
    command += ["--out", str(tmp_path / "t"), "--jobs", "2", "--steps", "2"]
    command += ["--eval-images", "64"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[Any] = []
    try:
        parent = psutil.Process(run.pid)
        deadline = time.monotonic() + 240
        workers: list[Any] = []
        while time.monotonic() < deadline and run.poll() is None:
            children = parent.children(recursive=True)
            workers = [c for c in children if "LokyProcess" in " ".join(c.cmdline())]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, "the run never started its two workers"
        time.sleep(1.0)  # let them start on their jobs
        children = parent.children(recursive=True)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.2)
        survivors = [" ".join(c.cmdline())[:100] for c in children if _alive(c)]
        assert survivors == [], survivors
    finally:
        if run.poll() is None:
            run.kill()
        for child in children:  # never leave one behind, whatever the test found
            if _alive(child):
                child.kill()
