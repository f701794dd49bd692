"""The latency look-up table: every (segment, kernel option) timed as what the merged network runs.

For each entry of the family's segments (LAYERMERGE.md §3) the family says what the compressed
network runs there (:meth:`~core.families.base.ModelFamily.latency_geometry`): for a classifier,
``Sequential(Conv2d(in, out, K, stride, K // 2, groups, bias=True), activation)``; for a diffusion
UNet, the merged conv with the time embedding, GroupNorm and SiLU its block keeps. It is timed with
random weights on this machine at the entry's TRUE input shape: the shape the segment's first conv
sees in the traced network (the original code chained convs on a bare tensor and so timed every
ResNet entry at twice the real resolution, §3.2). A removal option the family lists among its
segments (a DDPM upsample conv that may become the identity) runs nothing: its latency is 0.

Beside the entries the run times what the speed model (:mod:`core.speed`) needs to predict the
whole network: the original network as it is deployed and measured (the family's speed baseline:
a classifier with its BNs folded), recorded as ``network_folded_latency_ms``, and the family's
structure costs (``ModelFamily.structure_costs``: residual adds and shortcuts a merge may absorb,
activations the entries time but the network does not run, the stem and head). A structure cost
the original runs is timed there, inside its forward pass (:data:`NETWORK_STEPS_JOB`, the folded
original's steps timed one by one in the same rounds), because a small op costs more in the
network than alone; the others, and every cost of a network that is not a step network, alone at
their shape (meta.json records both, ``timed`` and ``alone_ms``).

**The profiling protocol** (it must hold on a laptop or a shared server, not only a quiet box):

1. one intra-op thread by default (a second OpenMP thread waits on every other process); the
   glibc allocator setting of the process (``core.benchmark.use_heap_allocator``, applied by the
   CLI) is recorded: later measurements of the table reuse both (the allocator is a state of the
   measuring process, not a request, so it is not part of the cache key: the app, which never
   applies it, still finds the shipped tables current);
2. ``rounds`` interleaved passes over the distinct geometries (forward, then backward, ...),
   each timing a slice of ``min_run_time``; an entry keeps the median over rounds;
3. a small fixed reference op is timed before every sample (and once at the end). Its quiet time
   is a low percentile over the run; a sample with a reference before or after it slower than
   :data:`SLOW_FACTOR` x quiet was taken in a slow phase (another job had the CPU) and is timed
   again after the rounds, up to :data:`REMEASURE_PASSES` times; an entry whose rounds stay slow
   in majority is *unresolved*;
4. meta.json records the protocol (``latency_protocol``) and the noise found (``latency_noise``);
   :func:`core.speed.table_warning` turns an unreliable table into one line for every tool.

The timer is injectable (``measure_latency(..., timer=...)``): a test drives the protocol with a
fake clock, and every backend goes through the same callable.

Work is never lost: every sample goes through the entry runner (:mod:`core.runner`), one job per
(round, distinct geometry), each finished sample saved at once to a partial store in the output
directory, so a killed run resumes where it stopped; an identical rerun (same chain, batch,
backend, device, threads and timing settings) reads the finished table
(:mod:`core.table_store`) and measures nothing, unless some of its timings stayed slow (then it is
measured again: the machine may be quiet now). Jobs always run in this process, one after the
other: two timings must never share the machine.

Example:
    >>> bundle = build_model("digits_resnet")
    >>> chain = trace_chain(bundle.model, bundle.input_size)
    >>> table = measure_latency(bundle, chain, LatencyConfig(batch=64), out="tables/digits")
    >>> table.meta["latency_noise"]["contention_seen"]  # doctest: +SKIP
    False
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import LayerMergeError
from core.families.base import ModelFamily, family_for
from core.files import library_versions
from core.network import StepNetwork, make_activation, make_fixed_op
from core.onnx_export import onnx_bytes
from core.runner import ProgressCallback, run_jobs
from core.speed import PROTOCOL_VERSION, StructureCost, explained_network_ms
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
    "Timer",
    "LatencyTable",
    "LatencyBackend",
    "ProgressCallback",
    "register_backend",
    "list_backends",
    "get_backend",
    "measure_latency",
    "merged_conv_module",
    "structure_module",
    "chain_structure_costs",
    "time_module",
    "latency_key",
    "cpu_model",
    "torch_threads",  # re-exported from core.threads, where it lives, for older imports
    "DEVICES",
    "DEFAULT_MIN_RUN_TIME_S",
    "DEFAULT_ROUNDS",
    "DEFAULT_THREADS",
    "SLOW_FACTOR",
    "REMEASURE_PASSES",
]

# bump when what an entry or a structure cost measures changes: it invalidates cached tables
# (3: structure costs timed inside the network)
LATENCY_VERSION = 3
DEVICES = ("cpu", "cuda")
# Timed time per distinct geometry, over all rounds. 0.2 s gives a median over tens of blocks for
# the small convs and keeps resnet34 / mobilenet_v2-1.4 at 224x224 well inside 5 minutes.
DEFAULT_MIN_RUN_TIME_S = 0.2
DEFAULT_ROUNDS = 5  # interleaved passes over the geometries; an entry keeps the median
DEFAULT_THREADS = 1  # see the module docstring; an explicit count wins
NETWORK_MIN_RUN_TIME_FACTOR = 5  # the whole network is timed 5x longer: one number, worth more
DEFAULT_WARMUP_RUNS = 3  # untimed runs first: allocator, oneDNN primitive caches, ORT arenas
WEIGHT_SEED = 0  # random weights of the timed convs (their values do not change the timing)
STORE_VERSION = 3  # of the partial store's layout: one job per (phase, round, geometry)
NETWORK_JOB = "network"  # the whole-network timing's job (geometry jobs are JSON objects)
NETWORK_STEPS_JOB = "network steps"  # the original's steps timed where they run (structure costs)
STRUCTURE_PREFIX = "structure:"  # a structure cost's job: the prefix and its geometry's JSON
REFERENCE = "reference"  # what the timer is told when it times the reference op
# The reference op: a small conv whose time only the machine's load changes.
REFERENCE_SHAPE = (1, 32, 28, 28)
REFERENCE_MAX_S = 0.01  # its timed slice (shorter when the samples are: tests, previews)
QUIET_PERCENTILE = 0.05  # the reference's quiet time: this low quantile of its timings
SLOW_FACTOR = 1.3  # a reference this much slower than quiet marks a slow phase
REMEASURE_PASSES = 3  # passes over the slow samples after the rounds
MODULE_CACHE_BYTES = 512 << 20  # built modules kept between rounds, by parameter bytes

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
        threads: intra-op threads; 1 by default (stable on a shared machine); None uses
            ``torch.get_num_threads()``. Recorded in meta.json and reused by later measurements.
        min_run_time: seconds of timed repeats per distinct geometry, split over the rounds.
        warmup_runs: untimed runs before the first round's timing (one before later rounds').
        network: also time the whole original network and the structure costs (the speed model
            and the keep-everything check need them).
        rounds: interleaved passes over the distinct geometries; each entry keeps the median.
    """

    batch: int = 1
    backend: str = "torch"
    device: str = "cpu"
    threads: int | None = DEFAULT_THREADS
    min_run_time: float = DEFAULT_MIN_RUN_TIME_S
    warmup_runs: int = DEFAULT_WARMUP_RUNS
    network: bool = True
    rounds: int = DEFAULT_ROUNDS
    version: int = LATENCY_VERSION

    def __post_init__(self) -> None:
        if not _positive_int(self.batch):
            raise LayerMergeError(f"batch must be a positive integer, got {self.batch!r}")
        if self.device not in DEVICES:
            raise LayerMergeError(
                f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"
            )
        if self.threads is not None and not _positive_int(self.threads):
            raise LayerMergeError(f"threads must be a positive integer, got {self.threads!r}")
        if not (isinstance(self.min_run_time, int | float) and 0 < self.min_run_time <= 60):
            raise LayerMergeError(
                f"min run time must be between 0 and 60 seconds, got {self.min_run_time!r}"
            )
        if isinstance(self.warmup_runs, bool) or not isinstance(self.warmup_runs, int):
            raise LayerMergeError(f"warm-up runs must be an integer, got {self.warmup_runs!r}")
        if self.warmup_runs < 0:
            raise LayerMergeError(f"warm-up runs must be >= 0, got {self.warmup_runs}")
        if not _positive_int(self.rounds) or self.rounds > 100:
            raise LayerMergeError(f"rounds must be an integer from 1 to 100, got {self.rounds!r}")

    def resolved(self) -> LatencyConfig:
        """The config with ``threads`` filled in (what is recorded and keyed)."""
        return self if self.threads is not None else replace(self, threads=torch.get_num_threads())


@dataclass(frozen=True)
class Timing:
    """One timed module: median and interquartile range of its timed blocks, in ms per call."""

    median_ms: float
    spread_ms: float
    runs: int


# (what is timed: "reference", "network", or a job id; the module; the input shape with the
# batch; the config of this one timing, min_run_time included) -> its Timing
Timer = Callable[[str, nn.Module, tuple[int, ...], "LatencyConfig"], Timing]


@dataclass(frozen=True)
class LatencyTable:
    """A measured latency table and what the run did.

    ``computed`` counts the entries whose first round this call timed, ``cached`` those whose
    first round came from a finished table or a partial store (identity segments, timed by no
    one, count in neither); ``measured_geometries`` the distinct modules this call timed a sample
    of. ``complete`` is False for a run restricted to some entries or ``cancelled``: it wrote no
    table, only its partial store, and its entries are those measured so far (the median of
    their rounds done).
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
    timer: Timer | None = None,
    remeasure_unreliable: bool = False,
) -> LatencyTable:
    """Measure the latency table of ``traced`` (and the whole network) on this machine.

    Args:
        bundle: the model, as the family's ``load`` returns it (only the whole-network timing and
            meta.json use it: table entries are timed with random weights, which do not change
            the timing).
        traced: the family's traced model (a :class:`~core.chain.Chain` for classifiers); its
            entries are the family's segments and their options.
        config: how to measure (batch, backend, device, threads, timing, rounds).
        family: the model's family; None: the family that claims ``bundle.name``.
        out: table directory. ``latency.csv`` and ``meta.json`` are written there when every entry
            is done; finished samples go to a partial store there at once, so a killed run
            resumes. None keeps everything in memory.
        progress: called as ``progress(done, total, eta_s)`` in timed entry-rounds, once at the
            start and after each sample (re-measured samples add to the total); an exception
            raised by it stops the run with finished samples saved.
        entries: only these keys, or only the first n entries (tests, previews). A restricted run
            fills the partial store but writes no table.
        cancel: when set, the run stops after the timing in progress (``cancelled`` result, no
            table written, finished samples saved).
        remeasure_unreliable: time again a finished table whose timings stayed slow (the
            machine may be quiet now); otherwise such a table is read back as it is, with its
            warning (so a copy of a shipped table is never re-timed behind the user's back).
        timer: times one module (:data:`Timer`); by default the config's backend. Tests pass a
            fake clock.

    Returns:
        The entries (identity segments with latency 0) and the metadata.

    Raises:
        LayerMergeError: a bad configuration, or a backend or device that cannot run here.
        TableMismatchError: ``out`` holds tables of another chain.
    """
    from core.benchmark import allocator_in_effect

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
    allocator = allocator_in_effect()
    key = latency_key(chain_digest, fields["activation"], config)
    all_items = [(s, o) for s in family.segments(traced) for o in s.options]
    items = _select(all_items, entries)
    restricted = len(items) != len(all_items)
    directory = None
    if out is not None:
        directory, existing = open_table_directory(out, chain_digest)
        # a table whose timings stayed slow is measured again when asked: the machine may be
        # quiet now (``profile --remeasure``, ``make tables``)
        contended = remeasure_unreliable and bool(
            (existing.get("latency_noise") or {}).get("unresolved")
        )
        if not restricted and existing.get("latency_key") == key and not contended:
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
    builders: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {}
    for segment, option in items:
        if not option.is_removal:
            geometry = family.latency_geometry(traced, segment, option)
            job = json.dumps(geometry, sort_keys=True)
            job_of[_entry_key(segment, option)] = job
            builders.setdefault(job, lambda g=geometry: family.latency_module(g))
    geometries = len(builders)
    structure: dict[str, list[StructureCost]] = {}
    network_baseline: str | None = None
    input_shape = tuple(family.chain_of(traced).input_shape)
    if config.network and not restricted:
        for cost in family.structure_costs(traced):
            job = STRUCTURE_PREFIX + json.dumps(cost.geometry, sort_keys=True)
            structure.setdefault(job, []).append(cost)
            builders.setdefault(job, lambda g=cost.geometry: structure_module(g))

        baseline, network_baseline = family.speed_baseline(bundle, traced, None)

        def network() -> tuple[nn.Module, tuple[int, ...]]:
            module = family.timing_module(baseline)
            return module.train(baseline.training), input_shape  # timing leaves its mode alone

        builders[NETWORK_JOB] = network
        if _times_steps(baseline, config, structure):

            def network_steps() -> tuple[nn.Module, tuple[int, ...]]:
                return baseline, input_shape

            builders[NETWORK_STEPS_JOB] = network_steps

    store = PartialStore(directory, f"latency-{key}", {"latency_key": key, "store": STORE_VERSION})
    protocol = _Protocol(
        config=config,
        timer=timer or _default_timer(backend),
        builders=builders,
        store=store,
        progress=progress,
        cancel=cancel,
    )
    job_rounds = protocol.run(list(builders), job_of)
    # a complete run has every round of every job; a cancelled or restricted one returns the
    # entries measured so far, each the median of its rounds done
    results = {job: rounds.value() for job, rounds in job_rounds.items() if rounds.measured}
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
            median_ms, spread_ms = results[job_of[entry_key]]
            table_entries.append(
                TableEntry(
                    *entry_key,
                    kept_convs=option.kept_convs,
                    latency_ms=median_ms,
                    latency_spread_ms=spread_ms,
                )
            )
    in_network = (
        job_rounds[NETWORK_STEPS_JOB].step_values() if NETWORK_STEPS_JOB in job_rounds else {}
    )
    structure_rows = [
        _structure_row(cost, results[job][0], in_network)
        for job, costs in structure.items()
        if job in results
        for cost in costs
    ]
    meta = _latency_meta(
        family,
        bundle,
        traced,
        config,
        key,
        fields,
        table_entries,
        results.get(NETWORK_JOB),
        structure_rows,
        allocator,
        network_baseline,
    )
    meta["latency_measured_geometries"] = geometries
    meta["latency_noise"] = protocol.noise(job_rounds)
    complete = not restricted and not protocol.cancelled
    if directory is not None and complete:
        meta = publish_table(directory, chain_digest, "latency", table_entries, meta)
        store.remove()
    # an entry is computed by the call that timed its first round, cached when an earlier run did
    computed = sum(job in protocol.first_timed for job in job_of.values())
    measured = sum(job in results for job in job_of.values())
    entry_jobs = set(job_of.values())
    return LatencyTable(
        entries=tuple(table_entries),
        meta=meta,
        computed=computed,
        cached=measured - computed,
        measured_geometries=len(protocol.ran_jobs & entry_jobs),
        complete=complete,
        seconds=time.perf_counter() - started,
        cancelled=protocol.cancelled,
    )


def time_steps(
    network: nn.Module, input_shape: tuple[int, ...], config: LatencyConfig
) -> tuple[Timing, dict[str, float]]:
    """Time a :class:`~core.network.StepNetwork` step by step where each step runs.

    Passes of ``network.timed_forward`` on a seeded input fill ``config.min_run_time`` (at least
    three, after ``config.warmup_runs``). Returns the passes' total as a :class:`Timing` and each
    step's median in ms. CPU only: on CPU every op ends before the next begins.
    """
    example = torch.randn(input_shape, generator=torch.Generator().manual_seed(WEIGHT_SEED))
    was_training = network.training
    network.eval()
    totals: list[float] = []
    steps: dict[str, list[float]] = {}
    try:
        with torch_threads(config.threads), torch.inference_mode():
            for _ in range(config.warmup_runs):
                network(example)
            started = time.perf_counter()
            while len(totals) < 3 or time.perf_counter() - started < config.min_run_time:
                begun = time.perf_counter()
                _, timed = network.timed_forward(example)
                totals.append(time.perf_counter() - begun)
                for label, seconds in timed:
                    steps.setdefault(label, []).append(seconds * 1e3)
    finally:
        network.train(was_training)
    ordered = sorted(totals)
    timing = Timing(
        median_ms=statistics.median(totals) * 1e3,
        spread_ms=(ordered[-1] - ordered[0]) * 1e3,
        runs=len(totals),
    )
    return timing, {label: statistics.median(values) for label, values in steps.items()}


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
        "rounds": config.rounds,
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


def chain_structure_costs(chain: Any, activation: str | None = None) -> tuple[StructureCost, ...]:
    """The structure costs of a classifier chain (what :mod:`core.speed` adds to the table).

    - ``fixed``: the stem (conv 0 with its BN folded, its activation and the ops after it, e.g.
      ResNet's maxpool) and the ops after any later position (the pooling and classifier head);
    - ``residual``: each residual block's add with its 1x1 or zero-pad shortcut, at its shapes;
    - ``activation``: the activation a table entry is timed with (``activation``, by default the
      chain's), at the output shape of every conv 1..N.

    Each lists the steps of the BN-folded original (``core.merge``'s labels) that run it, where
    the original runs it: the profiler times it there (:data:`NETWORK_STEPS_JOB`).

    Args:
        chain: a :class:`~core.chain.Chain`.
        activation: the activation every table entry ends with (meta.json's ``activation``).
    """
    kind = activation or chain.default_activation or "relu"
    convs = chain.convs
    stem = convs[0]
    costs: list[StructureCost] = [
        StructureCost(
            "stem",
            "fixed",
            {
                "structure": "fixed",
                "conv": {
                    "in_channels": stem.in_channels,
                    "out_channels": stem.out_channels,
                    "kernel": stem.kernel,
                    "stride": stem.stride,
                    "padding": stem.padding,
                    "groups": stem.groups,
                },
                "activation": chain.activations[0],
                "ops": [{"kind": op.kind, "params": op.params} for op in chain.post_ops[0]],
                "shape": list(stem.input_shape),
            },
            steps=(
                "conv0",
                *(["act0"] if chain.activations[0] else []),
                *_op_labels(chain, 0),
            ),
        )
    ]
    for position in range(1, chain.last_position + 1):
        if chain.post_ops[position]:
            costs.append(
                StructureCost(
                    f"ops after {position}",
                    "fixed",
                    {
                        "structure": "fixed",
                        "conv": None,
                        "activation": None,
                        "ops": [
                            {"kind": op.kind, "params": op.params}
                            for op in chain.post_ops[position]
                        ],
                        "shape": list(convs[position].output_shape),
                    },
                    steps=_op_labels(chain, position),
                )
            )
    for span in chain.residuals:
        shortcut = None
        if span.shortcut is not None:
            shortcut = {
                "in_channels": span.shortcut_in_channels,
                "out_channels": span.shortcut_out_channels,
                "stride": span.shortcut_stride,
            }
        zero_pad = None
        if span.channel_pad is not None:
            zero_pad = {"stride": span.shortcut_stride, "channels": list(span.channel_pad)}
        costs.append(
            StructureCost(
                f"residual {span.start}-{span.end}",
                "residual",
                {
                    "structure": "residual",
                    "in_shape": list(convs[span.start + 1].input_shape),
                    "out_shape": list(convs[span.end].output_shape),
                    "shortcut": shortcut,
                    "zero_pad": zero_pad,
                },
                start=span.start,
                end=span.end,
                steps=(f"add {span.start}",),
            )
        )
    for position in range(1, chain.last_position + 1):
        costs.append(
            StructureCost(
                f"activation {position}",
                "activation",
                {
                    "structure": "activation",
                    "kind": kind,
                    "shape": list(convs[position].output_shape),
                },
                position=position,
                original=chain.activations[position],
                default=chain.default_activation,
                steps=(f"act{position}",) if chain.activations[position] else (),
            )
        )
    return tuple(costs)


def _op_labels(chain: Any, position: int) -> tuple[str, ...]:
    """The labels ``core.merge`` gives the fixed ops after ``position``."""
    return tuple(f"op{position}_{k}" for k in range(len(chain.post_ops[position])))


def structure_module(geometry: Mapping[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
    """The module a structure cost's ``geometry`` describes, seeded, in eval mode, and the shape
    of one input sample (see :func:`chain_structure_costs` for the kinds).

    Raises:
        LayerMergeError: an unknown structure kind.
    """
    kind = geometry.get("structure")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        if kind == "activation":
            return make_activation(geometry["kind"]).eval(), tuple(geometry["shape"])
        if kind == "residual":
            return _ResidualAdd(geometry).eval(), tuple(geometry["in_shape"])
        if kind == "fixed":
            layers: list[nn.Module] = []
            conv = geometry.get("conv")
            if conv:
                layers.append(
                    nn.Conv2d(
                        conv["in_channels"],
                        conv["out_channels"],
                        conv["kernel"],
                        stride=conv["stride"],
                        padding=conv["padding"],
                        groups=conv["groups"],
                        bias=True,  # BN folded
                    )
                )
            if geometry.get("activation"):
                layers.append(make_activation(geometry["activation"]))
            layers += [make_fixed_op(op["kind"], op["params"]) for op in geometry["ops"]]
            return nn.Sequential(*layers).eval(), tuple(geometry["shape"])
    raise LayerMergeError(f"unknown structure cost kind {kind!r}")


class _ResidualAdd(nn.Module):
    """A merged network's residual add: ``main + shortcut(skip)``, timed on the skip's shape.

    The main path's tensor (the block's output shape) is made once per batch size and kept, as
    the network holds it when the add runs; the shortcut is a folded 1x1 conv, the option-A
    subsample and zero-pad, or nothing.
    """

    def __init__(self, geometry: Mapping[str, Any]) -> None:
        super().__init__()
        self.out_shape = tuple(geometry["out_shape"])
        shortcut = geometry.get("shortcut")
        self.shortcut = (
            nn.Conv2d(
                shortcut["in_channels"],
                shortcut["out_channels"],
                1,
                stride=shortcut["stride"],
                bias=True,
            )
            if shortcut
            else None
        )
        self.zero_pad = geometry.get("zero_pad")
        self._main: torch.Tensor | None = None

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        batch = skip.shape[0]
        if self._main is None or self._main.shape[0] != batch or self._main.device != skip.device:
            generator = torch.Generator().manual_seed(WEIGHT_SEED)
            main = torch.randn((batch, *self.out_shape), generator=generator)
            self._main = main.to(skip.device)  # (B, Cout, H, W)
        if self.shortcut is not None:
            skip = self.shortcut(skip)
        elif self.zero_pad:
            stride = self.zero_pad["stride"]
            before, after = self.zero_pad["channels"]
            skip = F.pad(skip[:, :, ::stride, ::stride], (0, 0, 0, 0, before, after))
        return self._main + skip


@dataclass
class _Sample:
    """One timing of the protocol, as the partial store keeps it."""

    phase: str  # "r" (a round) or "m1", "m2", ... (a re-measure pass)
    round: int
    job: str | None  # None: a closing reference timing only
    seq: int  # the order the samples were taken in (across resumed runs)
    reference_ms: float
    median_ms: float = math.nan
    spread_ms: float = math.nan
    slow: bool = False
    steps: dict[str, float] | None = None  # NETWORK_STEPS_JOB: each step's median, ms


@dataclass
class _JobRounds:
    """Every sample of one job, by round, flagged slow or quiet."""

    rounds: int
    samples: dict[int, list[_Sample]]

    @property
    def complete(self) -> bool:
        return all(self.samples.get(r) for r in range(self.rounds))

    @property
    def measured(self) -> bool:
        return any(self.samples.values())

    def unquiet_rounds(self) -> list[int]:
        """Rounds none of whose samples was taken in a quiet phase."""
        return [
            r
            for r in range(self.rounds)
            if self.samples.get(r) and all(s.slow for s in self.samples[r])
        ]

    def chosen(self) -> list[_Sample]:
        """The sample each round counts: its first quiet one (its fastest when none was quiet)."""
        chosen = []
        for r in sorted(r for r, samples in self.samples.items() if samples):
            quiet = [s for s in self.samples[r] if not s.slow]
            chosen.append(quiet[0] if quiet else min(self.samples[r], key=lambda s: s.median_ms))
        return chosen

    def step_values(self) -> dict[str, float]:
        """Each step's median over rounds (ms), for a job that times steps; labels every
        counted round has."""
        recorded = [s.steps for s in self.chosen() if s.steps]
        if not recorded:
            return {}
        labels = set.intersection(*(set(steps) for steps in recorded))
        return {label: float(statistics.median(s[label] for s in recorded)) for label in labels}

    def value(self) -> tuple[float, float]:
        """(median over rounds, spread over rounds) in ms; a round counts its first quiet sample
        (its fastest sample when none was quiet)."""
        chosen = [s.median_ms for s in self.chosen()]
        if len(chosen) >= 4:
            low, _, high = statistics.quantiles(chosen, n=4)
            spread = high - low
        else:
            spread = max(chosen) - min(chosen)
        return float(statistics.median(chosen)), float(spread)


class _ModuleCache:
    """Modules built once per run and kept between rounds, within a byte budget."""

    def __init__(
        self, builders: Mapping[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]]
    ) -> None:
        self._builders = builders
        self._cache: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
        self._bytes = 0

    def get(self, job: str) -> tuple[nn.Module, tuple[int, ...]]:
        if job in self._cache:
            return self._cache[job]
        built = self._builders[job]()
        size = sum(t.numel() * t.element_size() for t in built[0].state_dict().values())
        if self._bytes + size <= MODULE_CACHE_BYTES:
            self._cache[job] = built
            self._bytes += size
        return built


class _Protocol:
    """The interleaved, reference-checked timing of every job (module docstring, steps 2-3)."""

    def __init__(
        self,
        *,
        config: LatencyConfig,
        timer: Timer,
        builders: Mapping[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]],
        store: PartialStore,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.config = config
        self.timer = timer
        self.modules = _ModuleCache(builders)
        self.store = store
        self.progress = progress
        self.cancel = cancel
        self.cancelled = False
        self.ran_jobs: set[str] = set()  # jobs this call timed a sample of
        self.first_timed: set[str] = set()  # jobs this call timed the first round of
        self._warm: set[str] = set()
        self._reference: nn.Module | None = None
        self._load_start = _load_average()

    def run(self, jobs: Sequence[str], job_of: Mapping[EntryKey, str]) -> dict[str, _JobRounds]:
        """Time every job in interleaved rounds, then re-time the slow samples; by job."""
        rounds = self.config.rounds
        payloads: dict[str, tuple[int, str] | None] = {}
        for r in range(rounds):
            for job in jobs if r % 2 == 0 else list(reversed(jobs)):
                payloads[_sample_id("r", r, job)] = (r, job)
        payloads["r|end"] = None  # the reference after the last sample
        # progress counts (entry, round) pairs
        per_entry = {
            (key, r): _sample_id("r", r, job) for key, job in job_of.items() for r in range(rounds)
        }
        if not self._run_phase(per_entry, payloads, 0):
            return self.collect(jobs)
        done = len(per_entry)
        for attempt in range(1, REMEASURE_PASSES + 1):
            slow = [(r, job) for job, jr in self.collect(jobs).items() for r in jr.unquiet_rounds()]
            if not slow:
                break
            phase = f"m{attempt}"
            again: dict[str, tuple[int, str] | None] = {
                _sample_id(phase, r, job): (r, job) for r, job in slow
            }
            again[f"{phase}|end"] = None
            ids = {sample: sample for sample, payload in again.items() if payload is not None}
            if not self._run_phase(ids, again, done):
                break
            done += len(ids)
        return self.collect(jobs)

    def collect(self, jobs: Sequence[str]) -> dict[str, _JobRounds]:
        """The stored samples by job, each flagged slow or quiet against the reference."""
        samples = self._samples()
        by_job = {job: _JobRounds(self.config.rounds, {}) for job in jobs}
        for sample in samples:
            if sample.job in by_job:
                by_job[sample.job].samples.setdefault(sample.round, []).append(sample)
        return by_job

    def noise(self, by_job: Mapping[str, _JobRounds]) -> dict[str, Any]:
        """What meta.json records about the run's noise (``latency_noise``)."""
        samples = self._samples()
        references = [s.reference_ms for s in samples]
        quiet = _quiet(references)
        timed = [s for s in samples if s.job is not None]
        unresolved_samples = sum(len(jr.unquiet_rounds()) for jr in by_job.values())
        half = self.config.rounds / 2
        unresolved = sum(len(jr.unquiet_rounds()) >= half for jr in by_job.values())
        spreads = [
            spread / median
            for job, jr in by_job.items()
            if job not in (NETWORK_JOB, NETWORK_STEPS_JOB) and jr.complete
            for median, spread in [jr.value()]
            if median > 0
        ]
        slow_in_rounds = sum(s.slow for s in timed if s.phase == "r")
        return {
            "rounds": self.config.rounds,
            "timed": sum(jr.rounds for jr in by_job.values()),
            "samples": len(timed),
            "reference_quiet_ms": quiet,
            "reference_median_ms": statistics.median(references) if references else None,
            "reference_max_ratio": max(references) / quiet if references and quiet else None,
            "slow_factor": SLOW_FACTOR,
            "slow_samples": slow_in_rounds,
            "remeasured": sum(s.phase != "r" for s in timed),
            "unresolved_samples": unresolved_samples,
            "unresolved": unresolved,
            "contention_seen": slow_in_rounds > 0,
            "entry_spread": statistics.median(spreads) if spreads else None,
            "load_average": [self._load_start, _load_average()],
        }

    # ------------------------------------------------------------------ private
    def _run_phase(
        self,
        job_of: Mapping[Any, str],
        payloads: Mapping[str, tuple[int, str] | None],
        done_before: int,
    ) -> bool:
        progress = self.progress
        if progress is not None and done_before:
            outer = progress

            def progress(done: int, total: int, eta: float | None) -> None:
                outer(done_before + done, done_before + total, eta)

        outcome = run_jobs(
            job_of,
            payloads,
            store=self.store,
            local=self._time,
            progress=progress,
            cancel=self.cancel,
        )
        self.cancelled = outcome.cancelled
        return not outcome.cancelled

    def _time(self, sample_id: str, payload: tuple[int, str] | None) -> dict[str, Any]:
        seq = len(self.store.entries)
        reference = self._time_reference()
        if payload is None:
            return {"seq": seq, "reference_ms": reference}
        round_index, job = payload
        module, shape = self.modules.get(job)
        share = self.config.min_run_time / self.config.rounds
        if job in (NETWORK_JOB, NETWORK_STEPS_JOB):
            share *= NETWORK_MIN_RUN_TIME_FACTOR
        warmup = (
            self.config.warmup_runs if job not in self._warm else min(1, self.config.warmup_runs)
        )
        self._warm.add(job)
        config = replace(self.config, min_run_time=share, warmup_runs=warmup)
        steps = None
        if job == NETWORK_STEPS_JOB:
            timing, steps = time_steps(module, (self.config.batch, *shape), config)
        else:
            timing = self.timer(job, module, (self.config.batch, *shape), config)
        self.ran_jobs.add(job)
        if round_index == 0 and sample_id.startswith("r|"):
            self.first_timed.add(job)
        result = {
            "seq": seq,
            "reference_ms": reference,
            "median_ms": float(timing.median_ms),
            "spread_ms": float(timing.spread_ms),
        }
        if steps is not None:
            result["steps"] = steps
        return result

    def _time_reference(self) -> float:
        if self._reference is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(WEIGHT_SEED)
                channels = REFERENCE_SHAPE[1]
                conv = nn.Conv2d(channels, channels, 3, padding=1)
                self._reference = nn.Sequential(conv, nn.ReLU()).eval()
        share = min(REFERENCE_MAX_S, self.config.min_run_time / self.config.rounds)
        config = replace(self.config, batch=1, min_run_time=share, warmup_runs=1)
        return float(self.timer(REFERENCE, self._reference, REFERENCE_SHAPE, config).median_ms)

    def _samples(self) -> list[_Sample]:
        samples = []
        for sample_id, result in self.store.entries.items():
            phase, _, rest = sample_id.partition("|")
            if rest == "end":
                samples.append(_Sample(phase, -1, None, int(result["seq"]), result["reference_ms"]))
                continue
            round_text, _, job = rest.partition("|")
            samples.append(
                _Sample(
                    phase,
                    int(round_text),
                    job,
                    int(result["seq"]),
                    float(result["reference_ms"]),
                    float(result["median_ms"]),
                    float(result["spread_ms"]),
                    steps=result.get("steps"),
                )
            )
        samples.sort(key=lambda s: s.seq)
        quiet = _quiet([s.reference_ms for s in samples])
        if quiet:
            limit = quiet * SLOW_FACTOR
            for index, sample in enumerate(samples):
                after = samples[index + 1].reference_ms if index + 1 < len(samples) else 0.0
                sample.slow = max(sample.reference_ms, after) > limit
        return samples


def _times_steps(
    baseline: nn.Module, config: LatencyConfig, structure: Mapping[str, list[StructureCost]]
) -> bool:
    """Whether the run times the structure costs inside the network: a step network on the
    CPU with torch (an ONNX graph or a CUDA stream has no step boundaries to time)."""
    return (
        isinstance(baseline, StepNetwork)
        and config.backend == "torch"
        and config.device == "cpu"
        and any(cost.steps for costs in structure.values() for cost in costs)
    )


def _structure_row(
    cost: StructureCost, alone_ms: float, in_network: Mapping[str, float]
) -> dict[str, Any]:
    """A structure cost's meta.json row: timed in the network when all its steps were, else
    alone (both recorded)."""
    if cost.steps and all(label in in_network for label in cost.steps):
        latency = sum(in_network[label] for label in cost.steps)
        return cost.to_meta(latency, timed="in network", alone_ms=float(alone_ms))
    return cost.to_meta(alone_ms, timed="alone")


def _sample_id(phase: str, round_index: int, job: str) -> str:
    return f"{phase}|{round_index}|{job}"


def _quiet(references: Sequence[float]) -> float | None:
    """The reference's quiet time: a low quantile of its timings (robust to one odd fast one)."""
    if not references:
        return None
    ordered = sorted(references)
    return float(ordered[int(QUIET_PERCENTILE * (len(ordered) - 1))])


def _load_average() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def _default_timer(backend: LatencyBackend) -> Timer:
    """The protocol's timer: the config's backend, and torch for the reference op."""
    torch_backend = get_backend("torch")

    def timer(
        what: str, module: nn.Module, shape: tuple[int, ...], config: LatencyConfig
    ) -> Timing:
        chosen = torch_backend if what == REFERENCE else backend
        return time_module(module, shape, config, backend=chosen)

    return timer


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
        session = self._session(module, example, config)
        feed = {session.get_inputs()[0].name: example.numpy()}
        for _ in range(config.warmup_runs):
            session.run(None, feed)
        return _benchmark_timing(
            "session.run(None, feed)",
            {"session": session, "feed": feed},
            config.threads,
            config.min_run_time,
        )

    def _session(self, module: nn.Module, example: torch.Tensor, config: LatencyConfig) -> Any:
        """One session per module, shape and thread count: the protocol's rounds time a module
        several times, and exporting it again each round would cost more than the timing."""
        cache = self.__dict__.setdefault("_sessions", weakref.WeakKeyDictionary())
        key = (tuple(example.shape), config.threads)
        sessions = cache.setdefault(module, {})
        if key not in sessions:
            sessions[key] = self._new_session(module, example, config)
        return sessions[key]

    def _new_session(self, module: nn.Module, example: torch.Tensor, config: LatencyConfig) -> Any:
        import onnxruntime

        model_bytes = _export_onnx(module, example)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(config.threads or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
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
    network: tuple[float, float] | None,
    structure: list[dict[str, Any]],
    allocator: str,
    network_baseline: str | None,
) -> dict[str, Any]:
    singles = sorted(
        (e for e in entries if e.end - e.start == 1 and e.keeps_all_convs), key=lambda e: e.end
    )
    table_ms = float(sum(e.latency_ms for e in singles))
    network_ms = float(network[0]) if network else None
    meta = {
        **fields,
        "family": family.name,
        "batch": config.batch,
        "backend": config.backend,
        "device": config.device,
        "threads": config.threads,
        "allocator": allocator,
        "min_run_time_s": config.min_run_time,
        "warmup_runs": config.warmup_runs,
        "rounds": config.rounds,
        "latency_protocol": {
            "version": PROTOCOL_VERSION,
            "rounds": config.rounds,
            "statistic": "median over rounds (each round's first quiet sample)",
            "reference": "conv 3x3 32->32 + ReLU on 1x32x28x28, timed before every sample",
            "quiet_percentile": QUIET_PERCENTILE,
            "slow_factor": SLOW_FACTOR,
            "remeasure_passes": REMEASURE_PASSES,
            "structure": "each structure cost timed inside the BN-folded original where it runs "
            "there (its steps, in the same rounds), alone where it does not",
        },
        "versions": library_versions(),
        "cpu": cpu_model(),
        "chain_digest": traced.digest(),
        "weights_digest": bundle.weights_digest,
        "latency_key": key,
        "latency_entries": len(entries),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "original_table_latency_ms": table_ms,
        # the keep-everything segments with their latencies: what the speed model swaps out
        "original_segments": [[*e.key, e.latency_ms] for e in singles],
        # the whole original network as deployed and measured (a classifier's BNs folded):
        # the speed model's N; network_latency_ms is the same figure under its older name
        "network_folded_latency_ms": network_ms,
        "network_latency_ms": network_ms,
        "network_latency_spread_ms": float(network[1]) if network else None,
        "network_baseline": network_baseline,
        "structure_costs": structure,
        "structure_complete": bool(family.structure_complete and structure),
        # signed: (table sum - measured network) / measured network; negative means the table
        # leaves out work (stem, pools, adds, classifier), positive that it double-counts.
        "additivity_error": (table_ms - network_ms) / network_ms if network_ms else None,
    }
    explained = explained_network_ms(meta)
    meta["explained_network_ms"] = explained
    # what the structure costs leave unexplained: (network - explained) / network
    meta["additivity_unexplained"] = (
        (network_ms - explained) / network_ms if network_ms and explained is not None else None
    )
    return meta


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
    """ONNX bytes of ``module`` at ``example``'s shape (static: a table times one batch size)."""
    return onnx_bytes(module, {"x": example}, ["y"], dynamic_batch=False, opset=17)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
