"""End-to-end speed: the original and the compressed network measured side by side, in one run.

A speed-up is a ratio of two measurements, so both are taken in the same process, on the same
input, alternating in rounds (A B, B A, A B, ...: the order flips every round so slow drift, such
as another job starting on a shared machine, hits both alike), and the medians of the rounds are
compared (DESIGN.md, "Honest numbers"). Backends: torch eager and ONNX Runtime.

The fair baseline is the original network with its BNs folded into the convs, as the paper
measures (LAYERMERGE.md §6.4: "the baseline has BN folded too"): :func:`folded_original`.

A measurement of a table's solutions reuses the table's settings (:class:`TimingSettings`: batch,
threads, backend, and the glibc allocator setting of :func:`use_heap_allocator`, which is
process-wide). A command-line process applies them (:meth:`TimingSettings.apply`); a process that
must not change its allocator (the app) runs the timing in a worker process that has them
(:class:`SettingsWorker`). Predicted speed-ups come from the one speed model, :mod:`core.speed`.

Example:
    >>> rows = compare(folded_original(model, chain), merged, input_shape=(3, 224, 224))
    >>> rows[0].speedup  # doctest: +SKIP
    1.71
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError
from core.merge import merge_model
from core.network import StepNetwork
from core.onnx_export import export_onnx
from core.segments import keep_everything_solution
from core.solution import Solution
from core.speed import predict_speed, speedup_from_totals
from core.threads import torch_threads

__all__ = [
    "BACKENDS",
    "Comparison",
    "measure_side_by_side",
    "measure_onnx_side_by_side",
    "compare",
    "folded_original",
    "predicted_speedup",
    "predicted_from_meta",
    "alternate",
    "use_heap_allocator",
    "allocator_in_effect",
    "ALLOCATORS",
    "TimingSettings",
    "SettingsWorker",
]

BACKENDS = ("torch", "onnxruntime")
DEFAULT_ROUNDS = 15
DEFAULT_WARMUP = 3  # calls of each network before timing (allocator, ORT graph init)
DEFAULT_ROUND_S = 0.05  # each round runs a network for at least this long
# glibc mallopt parameters: keep freed blocks in the heap instead of returning them to the OS
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_HEAP_THRESHOLD_BYTES = 1 << 30
ALLOCATORS = ("heap", "default")  # use_heap_allocator() applied, or glibc as the process started
_heap_applied = False  # set once use_heap_allocator() succeeded in this process
T = TypeVar("T")


@dataclass(frozen=True)
class Comparison:
    """One backend's side-by-side measurement: medians per forward pass and their ratio."""

    backend: str
    batch: int
    input_shape: tuple[int, int, int]
    original_ms: float  # median over rounds of the mean time per forward
    compressed_ms: float
    original_iqr_ms: float  # interquartile range over rounds: the spread
    compressed_iqr_ms: float
    speedup: float  # original_ms / compressed_ms
    rounds: int
    iterations: int  # forwards per network per round
    threads: int
    allocator: str = "default"  # the process's allocator setting (allocator_in_effect)
    load_average: float | None = None  # the machine's 1-minute load average after the run

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


def measure_side_by_side(
    original: nn.Module,
    compressed: nn.Module,
    *,
    input_shape: Sequence[int],
    batch: int = 1,
    backend: str = "torch",
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    round_s: float = DEFAULT_ROUND_S,
    threads: int | None = None,
) -> Comparison:
    """Time ``original`` and ``compressed`` alternately on one backend and compare medians.

    Args:
        original: the baseline network (usually :func:`folded_original`).
        compressed: the merged network.
        input_shape: ``(C, H, W)`` of one image.
        batch: images per forward pass.
        backend: ``"torch"`` (eager, inference mode) or ``"onnxruntime"`` (CPU provider; both
            networks are exported to ONNX first, in a temporary folder).
        rounds: timed rounds per network; the median is reported.
        warmup: untimed calls of each network first.
        round_s: a round runs a network repeatedly for at least this long, so timer resolution
            and per-call noise average out.
        threads: intra-op threads for both backends; the current torch setting when None. The
            torch setting is restored afterwards.

    Returns:
        The medians, spreads and the speed-up ``original_ms / compressed_ms``.

    Raises:
        LayerMergeError: an unknown backend or a bad shape, batch or round count.
    """
    shape = _check_arguments(input_shape, batch, backend, rounds, threads)
    thread_count = threads or torch.get_num_threads()
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch_threads(thread_count), contextlib.ExitStack() as stack:
        if backend == "torch":
            run_original = _torch_runner(original, example)
            run_compressed = _torch_runner(compressed, example)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lm-bench-")))
            run_original = _onnx_runner(original, example, folder / "original.onnx", thread_count)
            run_compressed = _onnx_runner(
                compressed, example, folder / "compressed.onnx", thread_count
            )
        timed = _alternate_rounds(run_original, run_compressed, rounds, warmup, round_s)
    return _comparison(backend, batch, shape, thread_count, *timed)


def measure_onnx_side_by_side(
    original: bytes | str | Path,
    compressed: bytes | str | Path,
    *,
    input_shape: Sequence[int],
    batch: int = 1,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    round_s: float = DEFAULT_ROUND_S,
    threads: int | None = None,
) -> Comparison:
    """Time two ONNX graphs as they are (files or bytes) on ONNX Runtime, side by side.

    The protocol of :func:`measure_side_by_side`, for graphs already exported: the compress
    workflow times the very file it writes against the original's export, rather than a fresh
    export of each (a deployment format gets its own measurement). Both graphs take one input of
    ``(batch, *input_shape)``; a dynamic batch dimension takes any ``batch``.

    Raises:
        LayerMergeError: a bad shape, batch or round count, or a graph ONNX Runtime refuses.
    """
    shape = _check_arguments(input_shape, batch, "onnxruntime", rounds, threads)
    thread_count = threads or torch.get_num_threads()
    example = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    run_original = _onnx_session_runner(original, example, thread_count, "the original's ONNX")
    run_compressed = _onnx_session_runner(compressed, example, thread_count, "the ONNX export")
    timed = _alternate_rounds(run_original, run_compressed, rounds, warmup, round_s)
    return _comparison("onnxruntime", batch, shape, thread_count, *timed)


def compare(
    original: nn.Module,
    compressed: nn.Module,
    *,
    input_shape: Sequence[int],
    batch: int = 1,
    backends: Sequence[str] = BACKENDS,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = DEFAULT_WARMUP,
    round_s: float = DEFAULT_ROUND_S,
    threads: int | None = None,
) -> list[Comparison]:
    """:func:`measure_side_by_side` on each backend in turn; arguments as there."""
    return [
        measure_side_by_side(
            original,
            compressed,
            input_shape=input_shape,
            batch=batch,
            backend=backend,
            rounds=rounds,
            warmup=warmup,
            round_s=round_s,
            threads=threads,
        )
        for backend in backends
    ]


def folded_original(model: nn.Module, chain: Chain) -> StepNetwork:
    """The original network with every BN folded into its conv: the fair speed baseline.

    It is the keep-everything solution merged, so it differs from the compressed network only
    in what LayerMerge removed. A new module; ``model`` is left untouched.
    """
    return merge_model(model, chain, keep_everything_solution(chain))


def predicted_speedup(
    solution_latency_ms: float,
    original_table_latency_ms: float,
    *,
    network_latency_ms: float | None = None,
    solution: Solution | None = None,
    meta: Mapping[str, Any] | None = None,
) -> float:
    """The speed-up the one speed model (:mod:`core.speed`) predicts for a solution.

    Given ``solution`` and its tables' ``meta``, the whole model: the measured original network
    (BN folded, meta.json's ``network_folded_latency_ms``) with the table latencies of the
    original's segments swapped for the solution's, and the structure the merge changes (absorbed
    residual adds, activations). Given only sums, the same model without the structure term:
    N / (N - table original + table solution), with N = ``network_latency_ms`` (tables made
    under the profiling protocol record the folded network there too); without N, the plain
    ratio of table sums.
    """
    if solution is not None and meta is not None:
        return predict_speed(meta, solution).speedup
    return speedup_from_totals(solution_latency_ms, original_table_latency_ms, network_latency_ms)


def alternate(runs: Mapping[str, Callable[[], T]], *, repeats: int) -> dict[str, list[T]]:
    """Call each run ``repeats`` times, the order flipping every repeat; collect what they return.

    The protocol of :func:`measure_side_by_side`, for jobs too long to loop over (a whole DDIM
    sampling run, which times itself): A B, B A, A B, ..., so slow drift on a shared machine hits
    every run alike.

    Returns:
        Each run's name with its ``repeats`` results, in the order they ran.
    """
    results: dict[str, list[T]] = {name: [] for name in runs}
    order = list(runs.items())
    for index in range(repeats):
        for name, run in order if index % 2 == 0 else reversed(order):
            results[name].append(run())
    return results


def predicted_from_meta(meta: Mapping[str, Any], solution: Solution) -> dict[str, Any]:
    """What a table directory's meta.json predicts for ``solution``, beside the settings it used.

    Returns:
        The speed model's prediction (:class:`core.speed.SpeedPrediction` as a dict: speed-up,
        the measured original and the predicted network in ms, and the parts), with the table
        latencies under their older names and the batch, backend, threads and allocator the
        table was measured with.
    """
    prediction = predict_speed(meta, solution)
    return {
        **prediction.to_dict(),
        "table_latency_ms": solution.latency_ms,
        "original_table_latency_ms": prediction.original_table_ms,
        "network_latency_ms": prediction.network_ms,
        "table_batch": meta.get("batch"),
        "table_backend": meta.get("backend"),
        "table_threads": meta.get("threads"),
        "table_allocator": meta.get("allocator", "default"),
    }


def use_heap_allocator() -> bool:
    """Make glibc keep freed memory in the heap, so large activations stop costing page faults.

    Why: with glibc's defaults, a block above the (dynamic, at most 32 MB) mmap threshold is
    mapped fresh on every allocation and unmapped on free, so each forward pass pays page faults
    for its large activations. On CPU eager at batch 64 this can double a network's time, and it
    favours the compressed network (fewer large intermediates): measured on the digits MobileNet,
    the same pair gave 1.6-1.7x with the defaults and 1.2x with this setting. ONNX Runtime uses
    its own arena and does not see the effect. This is process-wide and cannot be undone: call it
    at the start of a benchmark process, never inside the app.

    Returns:
        True when applied (glibc found), False elsewhere.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(
        mallopt(_M_MMAP_THRESHOLD, _HEAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, _HEAP_THRESHOLD_BYTES)
    )
    global _heap_applied
    _heap_applied = _heap_applied or applied
    return applied


def allocator_in_effect() -> str:
    """``heap`` once :func:`use_heap_allocator` succeeded in this process, else ``default``.

    What latency tables and measurements record: the setting cannot be undone, so a process
    that applied it measures with it from then on.
    """
    return "heap" if _heap_applied else "default"


@dataclass(frozen=True)
class TimingSettings:
    """How a latency table was measured, which every later measurement of it reuses.

    Args:
        batch: images per forward pass.
        threads: intra-op threads.
        allocator: ``heap`` (:func:`use_heap_allocator`) or ``default``.
        backend: ``torch`` or ``onnxruntime`` (the table's latency backend).
        device: ``cpu`` (side-by-side measurements run on the CPU).
    """

    batch: int = 1
    threads: int = 1
    allocator: str = "heap"
    backend: str = "torch"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.allocator not in ALLOCATORS:
            raise LayerMergeError(
                f"allocator must be one of {', '.join(ALLOCATORS)}, got {self.allocator!r}"
            )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> TimingSettings:
        """The settings a table's meta.json records (older tables: glibc's default allocator)."""
        return cls(
            batch=int(meta.get("batch") or 1),
            threads=int(meta.get("threads") or 1),
            allocator=str(meta.get("allocator") or "default"),
            backend=str(meta.get("backend") or "torch"),
            device=str(meta.get("device") or "cpu"),
        )

    def holds_here(self) -> bool:
        """Whether this process measures with these settings (its allocator matches)."""
        return allocator_in_effect() == self.allocator

    def apply(self) -> TimingSettings:
        """Apply the process-wide part (the allocator) here: for command-line processes only.

        Returns:
            The settings now in effect (``default`` stays ``heap`` once heap was applied; a
            system without glibc stays ``default``).
        """
        if self.allocator == "heap" and not _heap_applied:
            use_heap_allocator()
        return replace(self, allocator=allocator_in_effect())


class SettingsWorker:
    """A worker process with a table's settings, for a process that must not apply them.

    The allocator setting is process-wide and cannot be undone, so the app never applies it to
    itself: it runs the timing in this worker instead (a fresh process from joblib's loky, the
    one the importance runner uses, which works under Streamlit). Use as a context manager;
    :meth:`call` runs a module-level function there and returns its (picklable) result.
    """

    def __init__(self, settings: TimingSettings) -> None:
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        self.settings = settings
        self._pool = ProcessPoolExecutor(
            max_workers=1, initializer=_apply_in_worker, initargs=(settings,)
        )

    def call(self, function: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(function, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> SettingsWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _apply_in_worker(settings: TimingSettings) -> None:
    """A worker's initializer: the settings' allocator, and their thread count as the default."""
    settings.apply()
    torch.set_num_threads(settings.threads)


# --------------------------------------------------------------------------- helpers


def _check_arguments(
    input_shape: Sequence[int], batch: int, backend: str, rounds: int, threads: int | None
) -> tuple[int, int, int]:
    if backend not in BACKENDS:
        raise LayerMergeError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise LayerMergeError(f"input_shape must be (C, H, W), got {tuple(input_shape)!r}")
    for name, value in (("batch", batch), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LayerMergeError(f"{name} must be a positive integer, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise LayerMergeError(f"threads must be a positive integer, got {threads!r}")
    if threads is not None and threads < 1:
        raise LayerMergeError(f"threads must be a positive integer, got {threads!r}")
    return shape  # type: ignore[return-value]


def _torch_runner(network: nn.Module, example: torch.Tensor) -> Callable[[], Any]:
    import copy

    module = copy.deepcopy(network).cpu().eval()  # the caller's module keeps its mode

    def run() -> Any:
        with torch.inference_mode():
            return module(example)

    return run


def _onnx_runner(
    network: nn.Module, example: torch.Tensor, path: Path, threads: int
) -> Callable[[], Any]:
    export_onnx(network, path, tuple(example.shape), dynamic_batch=False, verify=True)
    return _onnx_session_runner(path, example, threads, "the exported network")


def _onnx_session_runner(
    model: bytes | str | Path, example: torch.Tensor, threads: int, what: str
) -> Callable[[], Any]:
    """A call of one ONNX Runtime session (CPU, ``threads`` intra-op threads) on ``example``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, NoSuchFile, ...)
        message = " ".join(str(exc).split())[:200]
        raise LayerMergeError(f"ONNX Runtime cannot load {what} ({message})") from exc
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(example.numpy())}

    def run() -> Any:
        return session.run(None, feed)

    return run


def _alternate_rounds(
    run_original: Callable[[], Any],
    run_compressed: Callable[[], Any],
    rounds: int,
    warmup: int,
    round_s: float,
) -> tuple[list[float], list[float], int]:
    """Warm both up, then time them in rounds whose order flips every round.

    Returns:
        Each network's milliseconds per call, one value per round, and the calls per round.
    """
    for _ in range(warmup):
        run_original()
        run_compressed()
    # iterations per round from the slower (original) network, the same count for both
    single = min(_time_calls(run_original, 1) for _ in range(3))
    iterations = max(1, math.ceil(round_s / max(single, 1e-6)))
    times_original: list[float] = []
    times_compressed: list[float] = []
    for index in range(rounds):
        pair = [(run_original, times_original), (run_compressed, times_compressed)]
        for runner, times in pair if index % 2 == 0 else reversed(pair):
            times.append(_time_calls(runner, iterations) * 1000.0)
    return times_original, times_compressed, iterations


def _comparison(
    backend: str,
    batch: int,
    shape: tuple[int, int, int],
    threads: int,
    times_original: list[float],
    times_compressed: list[float],
    iterations: int,
) -> Comparison:
    """The medians of :func:`_alternate_rounds`' times, their spreads and their ratio."""
    original_ms = statistics.median(times_original)
    compressed_ms = statistics.median(times_compressed)
    return Comparison(
        backend=backend,
        batch=batch,
        input_shape=shape,
        original_ms=original_ms,
        compressed_ms=compressed_ms,
        original_iqr_ms=_iqr(times_original),
        compressed_iqr_ms=_iqr(times_compressed),
        speedup=original_ms / compressed_ms,
        rounds=len(times_original),
        iterations=iterations,
        threads=threads,
        allocator=allocator_in_effect(),
        load_average=_load_average(),
    )


def _time_calls(run: Callable[[], Any], iterations: int) -> float:
    """Mean seconds per call over ``iterations`` back-to-back calls."""
    started = time.perf_counter()
    for _ in range(iterations):
        run()
    return (time.perf_counter() - started) / iterations


def _load_average() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    low, _, high = statistics.quantiles(values, n=4)
    return high - low
