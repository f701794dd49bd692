"""The latency look-up table: every (segment, kernel option) timed as one merged conv (LAYERMERGE.md §3).

For each entry of :func:`core.segments.find_segments` we build what the merged network will run
there, ``Sequential(Conv2d(in, out, K, stride, K // 2, groups, bias=True), activation)`` with random
weights, and time it on this machine at the entry's TRUE input shape: the shape the segment's first
conv sees in the traced network (the original code chained convs on a bare tensor and so timed every
ResNet entry at twice the real resolution, §3.2). The activation is always included, as the paper
does, because every segment end either carries one or is timed as if it did.

Honesty about the surrogate: the DP assumes the network's latency is the sum of its segments'. We
also time the whole original network and record the signed relative difference
(``additivity_error``) in ``meta.json``; the table never includes the stem, BN, pooling, residual adds
or the classifier, so the error is usually negative.

Backends sit in a small strict registry (STYLE.md convention 4): ``torch`` (eager, CPU or CUDA with
CUDA-event timing) and ``onnxruntime`` (CPU). CPU timings use ``torch.utils.benchmark`` with the
thread count set and recorded; we store the median of the timed blocks and their interquartile range
(``latency_spread_ms``), in milliseconds per batch.

Work is never lost: each finished entry is written at once (atomically) to a partial file in the
output directory, so a killed run resumes where it stopped; an identical rerun (same chain, batch,
backend, device, threads and timing settings) reads the finished table and measures nothing. Within
a run, entries with the same merged-conv geometry (common: a ResNet stage repeats its blocks) are
measured once.

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
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.chain import Chain
from core.errors import LayerMergeError, TableMismatchError
from core.models import ModelBundle
from core.network import make_activation
from core.segments import find_segments, segment_geometry
from core.tables import (
    EntryKey,
    TableEntry,
    atomic_write_text,
    file_digest,
    read_meta,
    read_tables,
    write_latency_csv,
    write_meta,
)

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
    "library_versions",
    "cpu_model",
    "check_table_directory",
    "PartialStore",
    "torch_threads",
    "update_meta",
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
PARTIAL_DIR = ".partial"  # inside the output directory: per-run partial stores
WEIGHT_SEED = 0  # random weights of the timed convs (their values do not change the timing)

ProgressCallback = Callable[[int, int, float | None], None]  # (done, total, eta_s)

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
    table or a partial store; ``measured_geometries`` the distinct merged convs timed by this call.
    """

    entries: tuple[TableEntry, ...]
    meta: dict[str, Any]
    computed: int
    cached: int
    measured_geometries: int
    complete: bool
    seconds: float


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
    bundle: ModelBundle,
    chain: Chain,
    config: LatencyConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: ProgressCallback | None = None,
    entries: Collection[EntryKey] | int | None = None,
) -> LatencyTable:
    """Measure the latency table of ``chain`` (and the whole network) on this machine.

    Args:
        bundle: the model (only the whole-network timing and meta.json use it: table entries are
            timed with random weights, which do not change the timing).
        chain: the traced model; its entries come from :func:`core.segments.find_segments`.
        config: how to measure (batch, backend, device, threads, timing).
        out: table directory. ``latency.csv`` and ``meta.json`` are written there when every entry
            is done; finished entries go to a partial store there at once, so a killed run resumes.
            None keeps everything in memory.
        progress: called as ``progress(done, total, eta_s)`` after each entry (and once at the
            start); an exception raised by it stops the run with finished entries saved.
        entries: only these keys, or only the first n entries (tests, previews). A restricted run
            fills the partial store but writes no table.

    Returns:
        The entries (removals excluded: their latency is 0 by definition) and the metadata.

    Raises:
        LayerMergeError: a bad configuration, or a backend that cannot run here.
        TableMismatchError: ``out`` holds tables of another chain.
    """
    started = time.perf_counter()
    config = (config or LatencyConfig()).resolved()
    backend = get_backend(config.backend)
    backend.check(config)
    activation = chain.default_activation or "relu"
    key = latency_key(chain, config)
    directory = Path(out) if out is not None else None
    all_items = [(s, o) for s in find_segments(chain) for o in s.options]
    items = _select(all_items, entries)
    restricted = len(items) != len(all_items)

    if directory is not None:
        existing = check_table_directory(directory, chain)
        if not restricted and existing.get("latency_key") == key:
            cached = _read_finished(directory, chain, existing)
            if cached is not None:
                return LatencyTable(
                    entries=cached,
                    meta=existing,
                    computed=0,
                    cached=len(cached),
                    measured_geometries=0,
                    complete=True,
                    seconds=time.perf_counter() - started,
                )

    store = PartialStore(directory, f"latency-{key}", {"latency_key": key})
    done: dict[str, dict[str, Any]] = store.entries
    geometry_cache: dict[str, Timing] = {}
    for record in done.values():
        if "geometry" in record:
            geometry_cache[record["geometry"]] = Timing(
                record["latency_ms"], record["latency_spread_ms"], record.get("runs", 0)
            )
    want_network = config.network and not restricted
    total = len(items)
    cached_count = sum(1 for s, o in items if _key_text(_entry_key(s, o)) in done)
    computed = 0
    measured: list[float] = []  # seconds per newly measured geometry (for the ETA)
    pending_geometries = {
        _geometry_text(segment_geometry(chain, s.start, s.end, o.kept_convs), activation)
        for s, o in items
        if _key_text(_entry_key(s, o)) not in done
    } - set(geometry_cache)
    if progress is not None:
        progress(cached_count, total, None)

    with torch_threads(config.threads):
        finished = cached_count
        for segment, option in items:
            text = _key_text(_entry_key(segment, option))
            if text in done:
                continue
            geometry = segment_geometry(chain, segment.start, segment.end, option.kept_convs)
            geo_text = _geometry_text(geometry, activation)
            timing = geometry_cache.get(geo_text)
            if timing is None:
                tic = time.perf_counter()
                module = merged_conv_module(geometry, activation)
                shape = (
                    config.batch,
                    geometry["in_channels"],
                    geometry["input_height"],
                    geometry["input_width"],
                )
                timing = time_module(module, shape, config, backend=backend)
                geometry_cache[geo_text] = timing
                pending_geometries.discard(geo_text)
                measured.append(time.perf_counter() - tic)
            done[text] = {
                "latency_ms": timing.median_ms,
                "latency_spread_ms": timing.spread_ms,
                "runs": timing.runs,
                "geometry": geo_text,
            }
            store.save()
            computed += 1
            finished += 1
            if progress is not None:
                mean = statistics.fmean(measured) if measured else None
                eta = None if mean is None else mean * len(pending_geometries)
                if eta is not None and want_network and "network" not in store.extra:
                    eta += mean * NETWORK_MIN_RUN_TIME_FACTOR
                progress(finished, total, eta)
        if want_network and "network" not in store.extra:
            shape = (config.batch, *chain.input_shape)
            network_config = replace(
                config, min_run_time=config.min_run_time * NETWORK_MIN_RUN_TIME_FACTOR
            )
            timing = time_module(bundle.model, shape, network_config, backend=backend)
            store.extra["network"] = asdict(timing)
            store.save()

    table_entries = tuple(
        _table_entry(segment, option, done[_key_text(_entry_key(segment, option))])
        for segment, option in items
    )
    seconds = time.perf_counter() - started
    meta = _latency_meta(bundle, chain, config, key, table_entries, store.extra.get("network"))
    meta["latency_measured_geometries"] = len(geometry_cache)
    if directory is not None and not restricted:
        write_latency_csv(directory / "latency.csv", table_entries)
        meta["latency_csv_digest"] = file_digest(directory / "latency.csv")
        meta = update_meta(directory, chain, meta, owner="latency")
        store.remove()
    return LatencyTable(
        entries=table_entries,
        meta=meta,
        computed=computed,
        cached=cached_count,
        measured_geometries=len(measured),
        complete=not restricted,
        seconds=seconds,
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


def latency_key(chain: Chain, config: LatencyConfig) -> str:
    """Cache key of a latency table: the chain's structure and every measurement setting."""
    config = config.resolved()
    fields = {
        "chain": chain.digest(),
        "activation": chain.default_activation or "relu",
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


def library_versions() -> dict[str, str]:
    """Versions of the libraries a table's numbers depend on (recorded in meta.json)."""
    import torchvision

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # optional: only the onnxruntime backend needs it
        versions["onnxruntime"] = "not installed"
    return versions


def cpu_model() -> str:
    """The CPU's model name and logical core count, e.g. ``AMD EPYC (2 cores)``."""
    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def check_table_directory(directory: str | Path, chain: Chain) -> dict[str, Any]:
    """The metadata of an existing table directory, refusing one made for another chain.

    Returns:
        The directory's meta.json, or an empty dict when the directory holds no tables yet.

    Raises:
        TableMismatchError: meta.json is corrupt, or records another chain digest (the tables
            would be joined with entries of a different network).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TableMismatchError(f"table directory {directory} is a file")
    if not (directory / "meta.json").exists():
        for name in ("latency.csv", "importance.csv"):
            if (directory / name).exists():
                raise TableMismatchError(
                    f"{directory / name} has no meta.json beside it; refusing to mix it with new "
                    "tables: use an empty --out directory"
                )
        return {}
    meta = read_meta(directory)
    recorded = meta.get("chain_digest")
    if recorded != chain.digest():
        raise TableMismatchError(
            f"{directory} holds tables of another network (chain digest {recorded!r}, this one "
            f"is {chain.digest()!r}); use another --out directory or delete it"
        )
    return meta


def update_meta(
    directory: str | Path, chain: Chain, fields: dict[str, Any], *, owner: str
) -> dict[str, Any]:
    """Merge ``fields`` into the directory's meta.json (the latency and importance steps share it).

    ``weights_digest`` belongs to the importance table (latency does not depend on weights): the
    latency step sets it only while no importance table is recorded.
    """
    directory = Path(directory)
    meta = check_table_directory(directory, chain) if (directory / "meta.json").exists() else {}
    fields = dict(fields)
    if owner == "latency" and "importance_key" in meta:
        fields.pop("weights_digest", None)
    meta.update(fields)
    write_meta(directory, meta)
    return meta


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


@dataclass
class PartialStore:
    """Finished entries of one run, rewritten atomically after each (a kill loses nothing).

    It lives in ``<out>/.partial/<name>.json``; one whose header does not match is ignored (it
    belongs to other settings), and an unreadable one is treated as empty: it is only a cache.
    """

    directory: Path | None
    name: str
    header: dict[str, Any]
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        path = self.path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(data, dict) or data.get("header") != self.header:
            return
        if isinstance(data.get("entries"), dict):
            self.entries.update(data["entries"])
        if isinstance(data.get("extra"), dict):
            self.extra.update(data["extra"])

    @property
    def path(self) -> Path | None:
        return (
            None if self.directory is None else self.directory / PARTIAL_DIR / f"{self.name}.json"
        )

    def save(self) -> None:
        if self.path is not None:
            text = json.dumps({"header": self.header, "entries": self.entries, "extra": self.extra})
            atomic_write_text(self.path, text)

    def remove(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when empty


def _entry_key(segment: Any, option: Any) -> EntryKey:
    return (segment.start, segment.end, option.kernel, option.depthwise, option.stride)


def _table_entry(segment: Any, option: Any, record: dict[str, Any]) -> TableEntry:
    return TableEntry(
        *_entry_key(segment, option),
        kept_convs=option.kept_convs,
        latency_ms=float(record["latency_ms"]),
        latency_spread_ms=float(record["latency_spread_ms"]),
    )


def _key_text(key: EntryKey) -> str:
    start, end, kernel, depthwise, stride = key
    return f"{start},{end},{kernel},{int(depthwise)},{stride}"


def _geometry_text(geometry: dict[str, int], activation: str) -> str:
    return json.dumps({**geometry, "activation": activation}, sort_keys=True)


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


def _read_finished(
    directory: Path, chain: Chain, meta: dict[str, Any]
) -> tuple[TableEntry, ...] | None:
    """The finished latency table when it is the one meta.json records, intact and complete."""
    path = directory / "latency.csv"
    if not path.is_file() or meta.get("latency_csv_digest") != file_digest(path):
        return None  # written by other settings, or edited since: measured again, never used
    try:
        tables = read_tables(directory, require_importance=False)
    except TableMismatchError:
        return None  # a damaged table is measured again, never used
    order = [_entry_key(s, o) for s in find_segments(chain) for o in s.options]
    latency = {e.key: e for e in tables.entries if not e.is_removal}
    if set(latency) != set(order):
        return None
    if not all(math.isfinite(e.latency_ms) and e.latency_ms > 0 for e in latency.values()):
        return None
    return tuple(latency[key] for key in order)  # the order a fresh run returns


def _latency_meta(
    bundle: ModelBundle,
    chain: Chain,
    config: LatencyConfig,
    key: str,
    entries: tuple[TableEntry, ...],
    network: dict[str, Any] | None,
) -> dict[str, Any]:
    singles = [e for e in entries if e.end - e.start == 1 and e.keeps_all_convs]
    table_ms = float(sum(e.latency_ms for e in singles))
    network_ms = float(network["median_ms"]) if network else None
    return {
        "model": bundle.name,
        "width": bundle.width,
        "input_size": bundle.input_size,
        "input_shape": list(chain.input_shape),
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "min_run_time_s": config.min_run_time,
        "warmup_runs": config.warmup_runs,
        "activation": chain.default_activation or "relu",
        "versions": library_versions(),
        "cpu": cpu_model(),
        "chain_digest": chain.digest(),
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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, restoring the caller's setting afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
