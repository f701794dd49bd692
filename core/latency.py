"""The latency look-up table: every (segment, kernel option) timed as what the merged network runs.

For each entry of the family's segments (LAYERMERGE.md §3) the family says what the compressed
network runs there (:meth:`~core.families.base.ModelFamily.latency_geometry`): for a classifier,
``Sequential(Conv2d(in, out, K, stride, K // 2, groups, bias=True), activation)``; for a diffusion
UNet, the merged conv with the time embedding, GroupNorm and SiLU its block keeps. It is timed with
random weights on this machine at the entry's TRUE input shape: the shape the segment's first conv
sees in the traced network (the original code chained convs on a bare tensor and so timed every
ResNet entry at twice the real resolution, §3.2). A removal option the family lists among its
segments (a DDPM upsample conv that may become the identity) runs nothing: its latency is 0.

Honesty about the surrogate: the DP assumes the network's latency is the sum of its segments'. We
also time the whole original network (:meth:`~core.families.base.ModelFamily.timed_network`) and
record the signed relative difference (``additivity_error``) in ``meta.json``; the table never
includes the stem, BN, pooling, residual adds or the classifier (a UNet's attention, skips and
time MLP), so the error is usually negative.

Backends sit in a small strict registry (STYLE.md convention 4): ``torch`` (eager, CPU or CUDA with
CUDA-event timing) and ``onnxruntime`` (CPU). CPU timings use ``torch.utils.benchmark`` with the
thread count set and recorded; we store the median of the timed blocks and their interquartile range
(``latency_spread_ms``), in milliseconds per batch.

Work is never lost: the table goes through the entry runner (:mod:`core.runner`), one job per
distinct geometry (common: a ResNet stage repeats its blocks), each finished job saved at once to
a partial store in the output directory, so a killed run resumes where it stopped; an identical
rerun (same chain, batch, backend, device, threads and timing settings) reads the finished table
(:mod:`core.table_store`) and measures nothing. Jobs always run in this process, one after the
other: two timings must never share the machine.

Example:
    >>> bundle = build_model("digits_resnet")
    >>> chain = trace_chain(bundle.model, bundle.input_size)
    >>> table = measure_latency(bundle, chain, LatencyConfig(batch=64), out="tables/digits")
    >>> table.meta["additivity_error"]  # doctest: +SKIP
    -0.18
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError
from core.families.base import ModelFamily, family_for
from core.files import library_versions
from core.network import make_activation
from core.runner import ProgressCallback, run_jobs
from core.table_store import (
    PartialStore,
    open_table_directory,
    publish_table,
    read_finished_table,
)
from core.tables import EntryKey, TableEntry
from core.threads import torch_threads

__all__ = [
    "LatencyConfig",
    "Timing",
    "LatencyTable",
    "LatencyBackend",
    "ProgressCallback",
    "register_backend",
    "list_backends",
    "get_backend",
    "measure_latency",
    "merged_conv_module",
    "time_module",
    "latency_key",
    "cpu_model",
    "torch_threads",  # re-exported from core.threads, where it lives, for older imports
    "DEVICES",
    "DEFAULT_MIN_RUN_TIME_S",
]

LATENCY_VERSION = 1  # bump when what an entry measures changes: it invalidates cached tables
DEVICES = ("cpu", "cuda")
# Timed time per distinct geometry. 0.2 s gives a median over tens of blocks for the small
# convs and keeps resnet34 / mobilenet_v2-1.4 at 224x224 well inside 5 minutes on 2 cores.
DEFAULT_MIN_RUN_TIME_S = 0.2
NETWORK_MIN_RUN_TIME_FACTOR = 5  # the whole network is timed 5x longer: one number, worth more
DEFAULT_WARMUP_RUNS = 3  # untimed runs first: allocator, oneDNN primitive caches, ORT arenas
WEIGHT_SEED = 0  # random weights of the timed convs (their values do not change the timing)
STORE_VERSION = 2  # of the partial store's layout: one job per geometry (1 was one per entry)
NETWORK_JOB = "network"  # the whole-network timing's job (geometry jobs are JSON objects)

_BACKENDS: dict[str, LatencyBackend] = {}  # registry name -> backend instance

# torch.utils.benchmark imports cpp_extension, which logs a CUDA_HOME warning on CPU-only hosts.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@dataclass(frozen=True)
class LatencyConfig:
    """How the latency table is measured; every field but ``network`` is part of the cache key.

    Args:
        batch: images per timed call (the paper used 128 on a GPU; latency is ms per batch).
        backend: a registered backend (:func:`list_backends`).
        device: ``cpu`` or ``cuda`` (``cuda`` needs a GPU and the torch backend).
        threads: intra-op threads; None uses ``torch.get_num_threads()``. Recorded in meta.json.
        min_run_time: seconds of timed repeats per distinct geometry.
        warmup_runs: untimed runs before timing.
        network: also time the whole original network (for ``additivity_error``).
    """

    batch: int = 1
    backend: str = "torch"
    device: str = "cpu"
    threads: int | None = None
    min_run_time: float = DEFAULT_MIN_RUN_TIME_S
    warmup_runs: int = DEFAULT_WARMUP_RUNS
    network: bool = True
    version: int = LATENCY_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise LayerMergeError(f"batch must be a positive integer, got {self.batch!r}")
        if self.device not in DEVICES:
            raise LayerMergeError(
                f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"
            )
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise LayerMergeError(f"threads must be a positive integer, got {self.threads!r}")
        if not (isinstance(self.min_run_time, int | float) and 0 < self.min_run_time <= 60):
            raise LayerMergeError(
                f"min run time must be between 0 and 60 seconds, got {self.min_run_time!r}"
            )
        if isinstance(self.warmup_runs, bool) or not isinstance(self.warmup_runs, int):
            raise LayerMergeError(f"warm-up runs must be an integer, got {self.warmup_runs!r}")
        if self.warmup_runs < 0:
            raise LayerMergeError(f"warm-up runs must be >= 0, got {self.warmup_runs}")

    def resolved(self) -> LatencyConfig:
        """The config with ``threads`` filled in (what is recorded and keyed)."""
        return self if self.threads is not None else replace(self, threads=torch.get_num_threads())


@dataclass(frozen=True)
class Timing:
    """One timed module: median and interquartile range of its timed blocks, in ms per call."""

    median_ms: float
    spread_ms: float
    runs: int


@dataclass(frozen=True)
class LatencyTable:
    """A measured latency table and what the run did.

    ``computed`` counts the entries measured by this call, ``cached`` those read from a finished
    table or a partial store (identity segments, timed by no one, count in neither);
    ``measured_geometries`` the distinct modules timed by this call. ``complete`` is False for a
    run restricted to some entries or ``cancelled``: it wrote no table, only its partial store.
    """

    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    computed: int
    cached: int
    measured_geometries: int
    complete: bool
    seconds: float
    cancelled: bool = False


class LatencyBackend(abc.ABC):
    """Times a module on one engine; registered by name with :func:`register_backend`."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu",)

    def check(self, config: LatencyConfig) -> None:
        """Refuse a configuration this backend cannot run, with the reason and the fix.

        Raises:
            LayerMergeError: the device is not supported or not present.
        """
        if config.device not in self.devices:
            raise LayerMergeError(
                f"the {self.name} backend runs on {', '.join(self.devices)}, not {config.device!r}"
            )

    def versions(self) -> dict[str, str]:
        """Library versions this backend's numbers depend on."""
        return {}

    @abc.abstractmethod
    def __call__(self, module: nn.Module, example: torch.Tensor, config: LatencyConfig) -> Timing:
        """Time ``module(example)`` (module in eval mode, inference only)."""


def register_backend(name: str) -> Callable[[type[LatencyBackend]], type[LatencyBackend]]:
    """Register a latency backend class under ``name`` (a decorator; one instance is kept).

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[LatencyBackend]) -> type[LatencyBackend]:
        if name in _BACKENDS:
            raise ValueError(f"latency backend {name!r} is already registered")
        instance = cls()
        instance.name = name
        _BACKENDS[name] = instance
        return cls

    return decorator


def list_backends() -> list[str]:
    """Registered backend names, sorted."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> LatencyBackend:
    """The backend registered as ``name``.

    Raises:
        LayerMergeError: no such backend.
    """
    backend = _BACKENDS.get(name)
    if backend is None:
        raise LayerMergeError(
            f"unknown latency backend {name!r}; choose one of {', '.join(list_backends())}"
        )
    return backend


def measure_latency(
    bundle: Any,
    traced: Any,
    config: LatencyConfig | None = None,
    *,
    family: ModelFamily | None = None,
    out: str | Path | None = None,
    progress: ProgressCallback | None = None,
    entries: Collection[EntryKey] | int | None = None,
    cancel: threading.Event | None = None,
) -> LatencyTable:
    """Measure the latency table of ``traced`` (and the whole network) on this machine.

    Args:
        bundle: the model, as the family's ``load`` returns it (only the whole-network timing and
            meta.json use it: table entries are timed with random weights, which do not change
            the timing).
        traced: the family's traced model (a :class:`~core.chain.Chain` for classifiers); its
            entries are the family's segments and their options.
        config: how to measure (batch, backend, device, threads, timing).
        family: the model's family; None: the family that claims ``bundle.name``.
        out: table directory. ``latency.csv`` and ``meta.json`` are written there when every entry
            is done; finished entries go to a partial store there at once, so a killed run resumes.
            None keeps everything in memory.
        progress: called as ``progress(done, total, eta_s)`` in measured entries, once at the
            start and after each distinct geometry; an exception raised by it stops the run with
            finished entries saved.
        entries: only these keys, or only the first n entries (tests, previews). A restricted run
            fills the partial store but writes no table.
        cancel: when set, the run stops after the timing in progress (``cancelled`` result, no
            table written, finished entries saved).

    Returns:
        The entries (identity segments with latency 0) and the metadata.

    Raises:
        LayerMergeError: a bad configuration, or a backend or device that cannot run here.
        TableMismatchError: ``out`` holds tables of another chain.
    """
    started = time.perf_counter()
    family = family or family_for(bundle.name)
    config = (config or LatencyConfig()).resolved()
    if config.device not in family.latency_devices:
        raise LayerMergeError(
            f"--device {config.device}: {family.table_notes.model or family.name} models are "
            f"timed on {', '.join(family.latency_devices)} only; use --device "
            f"{family.latency_devices[0]}"
        )
    backend = get_backend(config.backend)
    backend.check(config)
    fields = family.table_fields(bundle, traced)
    chain_digest = traced.digest()
    key = latency_key(chain_digest, fields["activation"], config)
    all_items = [(s, o) for s in family.segments(traced) for o in s.options]
    items = _select(all_items, entries)
    restricted = len(items) != len(all_items)
    directory = None
    if out is not None:
        directory, existing = open_table_directory(out, chain_digest)
        if not restricted and existing.get("latency_key") == key:
            expected = [_entry_key(s, o) for s, o in all_items]
            cached = read_finished_table(directory, existing, "latency", expected)
            if cached is not None:
                return LatencyTable(
                    entries=cached,
                    meta=existing,
                    computed=0,
                    cached=sum(not e.identity_segment for e in cached),
                    measured_geometries=0,
                    complete=True,
                    seconds=time.perf_counter() - started,
                )

    # One job per distinct geometry; identity segments (removal options) run nothing.
    job_of: dict[EntryKey, str] = {}
    payloads: dict[str, Any] = {}
    for segment, option in items:
        if not option.is_removal:
            geometry = family.latency_geometry(traced, segment, option)
            job = json.dumps(geometry, sort_keys=True)
            job_of[_entry_key(segment, option)] = job
            payloads.setdefault(job, geometry)
    geometries = len(payloads)
    if config.network and not restricted:
        payloads[NETWORK_JOB] = None
    network_config = replace(config, min_run_time=config.min_run_time * NETWORK_MIN_RUN_TIME_FACTOR)
    input_shape = tuple(family.chain_of(traced).input_shape)

    def time_job(job: str, geometry: dict[str, Any] | None) -> dict[str, Any]:
        if geometry is None:  # the whole network, timed longer: one number, worth more
            module = family.timed_network(bundle.model)
            timing = time_module(
                module, (config.batch, *input_shape), network_config, backend=backend
            )
        else:
            module, shape = family.latency_module(geometry)
            timing = time_module(module, (config.batch, *shape), config, backend=backend)
        return asdict(timing)

    store = PartialStore(directory, f"latency-{key}", {"latency_key": key, "store": STORE_VERSION})
    outcome = run_jobs(
        job_of, payloads, store=store, local=time_job, progress=progress, cancel=cancel
    )
    results = outcome.results
    table_entries: list[TableEntry] = []
    for segment, option in items:
        entry_key = _entry_key(segment, option)
        if option.is_removal:
            table_entries.append(
                TableEntry(
                    *entry_key,
                    kept_convs=option.kept_convs,
                    latency_ms=0.0,
                    latency_spread_ms=0.0,
                    identity_segment=True,
                )
            )
        elif job_of[entry_key] in results:
            timing = results[job_of[entry_key]]
            table_entries.append(
                TableEntry(
                    *entry_key,
                    kept_convs=option.kept_convs,
                    latency_ms=float(timing["median_ms"]),
                    latency_spread_ms=float(timing["spread_ms"]),
                )
            )
    meta = _latency_meta(
        family, bundle, traced, config, key, fields, table_entries, results.get(NETWORK_JOB)
    )
    meta["latency_measured_geometries"] = geometries
    complete = not restricted and not outcome.cancelled
    if directory is not None and complete:
        meta = publish_table(directory, chain_digest, "latency", table_entries, meta)
        store.remove()
    return LatencyTable(
        entries=tuple(table_entries),
        meta=meta,
        computed=outcome.computed,
        cached=outcome.cached,
        measured_geometries=sum(job != NETWORK_JOB for job in outcome.ran),
        complete=complete,
        seconds=time.perf_counter() - started,
        cancelled=outcome.cancelled,
    )


def merged_conv_module(geometry: dict[str, int], activation: str = "relu") -> nn.Sequential:
    """The merged conv of a table entry followed by its activation, with seeded random weights.

    Args:
        geometry: as returned by :func:`core.segments.segment_geometry`.
        activation: an activation kind (the chain's default; the paper always times ReLU).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        conv = nn.Conv2d(
            geometry["in_channels"],
            geometry["out_channels"],
            geometry["kernel"],
            stride=geometry["stride"],
            padding=geometry["padding"],
            groups=geometry["groups"],
            bias=True,  # every merged conv carries the folded BN bias (§1.4)
        )
    return nn.Sequential(conv, make_activation(activation)).eval()


def time_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    config: LatencyConfig | None = None,
    *,
    backend: LatencyBackend | None = None,
) -> Timing:
    """Time one module on a seeded random input of ``input_shape`` (batch included).

    This is what every table entry and the whole-network figure go through; the ``bench`` step
    can use it to time original and compressed networks the same way.
    """
    config = (config or LatencyConfig()).resolved()
    backend = backend or get_backend(config.backend)
    backend.check(config)
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(WEIGHT_SEED))
    was_training = module.training
    module.eval()
    try:
        with torch_threads(config.threads):
            return backend(module, example, config)
    finally:
        module.train(was_training)


def latency_key(chain_digest: str, activation: str, config: LatencyConfig) -> str:
    """Cache key of a latency table: the traced network's digest and every measurement setting."""
    config = config.resolved()
    fields = {
        "chain": chain_digest,
        "activation": activation,
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "min_run_time": config.min_run_time,
        "warmup_runs": config.warmup_runs,
        "network": config.network,
        "version": config.version,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name and logical core count, e.g. ``AMD EPYC (2 cores)``."""
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


# --------------------------------------------------------------------------- backends


@register_backend("torch")
class _TorchBackend(LatencyBackend):
    """PyTorch eager: torch.utils.benchmark on the CPU, CUDA events on a GPU."""

    devices = ("cpu", "cuda")

    def check(self, config: LatencyConfig) -> None:
        super().check(config)
        if config.device == "cuda" and not torch.cuda.is_available():
            raise LayerMergeError(
                "--device cuda needs a CUDA GPU, but torch sees none "
                "(torch.cuda.is_available() is False); use --device cpu"
            )

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def __call__(self, module: nn.Module, example: torch.Tensor, config: LatencyConfig) -> Timing:
        device = torch.device(config.device)
        module = module.to(device)
        example = example.to(device)
        with torch.inference_mode():
            for _ in range(config.warmup_runs):
                module(example)
            if device.type == "cuda":
                return _cuda_event_timing(lambda: module(example), config.min_run_time)
            return _benchmark_timing(
                "module(x)", {"module": module, "x": example}, config.threads, config.min_run_time
            )


@register_backend("onnxruntime")
class _OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime's CPU execution provider, ``intra_op_num_threads`` = the config's threads."""

    devices = ("cpu",)

    def check(self, config: LatencyConfig) -> None:
        super().check(config)
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise LayerMergeError(
                "the onnxruntime backend needs the onnxruntime package (pip install onnxruntime)"
            ) from exc

    def versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def __call__(self, module: nn.Module, example: torch.Tensor, config: LatencyConfig) -> Timing:
        import onnxruntime

        model_bytes = _export_onnx(module, example)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(config.threads or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: example.numpy()}
        for _ in range(config.warmup_runs):
            session.run(None, feed)
        return _benchmark_timing(
            "session.run(None, feed)",
            {"session": session, "feed": feed},
            config.threads,
            config.min_run_time,
        )


# --------------------------------------------------------------------------- private helpers


def _entry_key(segment: Any, option: Any) -> EntryKey:
    return (segment.start, segment.end, option.kernel, option.depthwise, option.stride)


def _select(items: list[Any], entries: Collection[EntryKey] | int | None) -> list[Any]:
    if entries is None:
        return items
    if isinstance(entries, int) and not isinstance(entries, bool):
        if entries < 1:
            raise LayerMergeError(f"entries limit must be positive, got {entries}")
        return items[:entries]
    wanted = {tuple(k) for k in entries}
    chosen = [(s, o) for s, o in items if _entry_key(s, o) in wanted]
    unknown = wanted - {_entry_key(s, o) for s, o in chosen}
    if unknown:
        raise LayerMergeError(
            f"entries {sorted(unknown)[:3]} are not latency entries of this chain"
        )
    return chosen


def _latency_meta(
    family: ModelFamily,
    bundle: Any,
    traced: Any,
    config: LatencyConfig,
    key: str,
    fields: dict[str, Any],
    entries: list[TableEntry],
    network: dict[str, Any] | None,
) -> dict[str, Any]:
    singles = [e for e in entries if e.end - e.start == 1 and e.keeps_all_convs]
    table_ms = float(sum(e.latency_ms for e in singles))
    network_ms = float(network["median_ms"]) if network else None
    return {
        **fields,
        "family": family.name,
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "min_run_time_s": config.min_run_time,
        "warmup_runs": config.warmup_runs,
        "versions": library_versions(),
        "cpu": cpu_model(),
        "chain_digest": traced.digest(),
        "weights_digest": bundle.weights_digest,
        "latency_key": key,
        "latency_entries": len(entries),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "original_table_latency_ms": table_ms,
        "network_latency_ms": network_ms,
        "network_latency_spread_ms": float(network["spread_ms"]) if network else None,
        # signed: (table sum - measured network) / measured network; negative means the table
        # leaves out work (stem, BN, pools, adds, classifier), positive that it double-counts.
        "additivity_error": (table_ms - network_ms) / network_ms if network_ms else None,
    }


def _benchmark_timing(
    stmt: str, globals_: dict[str, Any], threads: int | None, min_run_time: float
) -> Timing:
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt=stmt, globals=globals_, num_threads=int(threads or 1))
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    times = measurement.times  # seconds per call, one value per timed block
    spread = measurement.iqr if len(times) >= 4 else (max(times) - min(times))
    return Timing(
        median_ms=float(measurement.median) * 1e3,
        spread_ms=float(spread) * 1e3,
        runs=int(measurement.number_per_run * len(times)),
    )


def _cuda_event_timing(call: Callable[[], Any], min_run_time: float) -> Timing:
    """Per-call CUDA event timing until ``min_run_time`` of GPU time is collected."""
    torch.cuda.synchronize()
    times_ms: list[float] = []
    total_s = 0.0
    while total_s < min_run_time or len(times_ms) < 5:
        pairs = []
        for _ in range(10):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()  # events complete only after the GPU finished the work
        batch = [start.elapsed_time(end) for start, end in pairs]
        times_ms.extend(batch)
        total_s += sum(batch) / 1e3
        if len(times_ms) >= 100_000:
            break
    quartiles = statistics.quantiles(times_ms, n=4)
    return Timing(
        median_ms=float(statistics.median(times_ms)),
        spread_ms=float(quartiles[2] - quartiles[0]),
        runs=len(times_ms),
    )


def _export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes of ``module`` at ``example``'s shape.

    The legacy TorchScript exporter takes a fraction of a second per conv, the dynamo exporter
    ten or more, so the legacy one is tried first.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                opset_version=17,
            )
        except Exception:  # legacy exporter missing or failing: fall back to dynamo
            buffer = io.BytesIO()
            try:
                torch.onnx.export(
                    module, (example,), buffer, dynamo=True, input_names=["x"], verbose=False
                )
            except Exception as exc:  # the exporter raises many types
                raise LayerMergeError(
                    f"cannot export {type(module).__name__} to ONNX: {type(exc).__name__}: {exc}"
                ) from exc
    return buffer.getvalue()
