"""Latency table: one row per chain entry, real timings, the profiling protocol (driven by a fake
clock: no timing assertions), resume, cache, backends, CLI."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
import torchvision

from core import latency
from core.__main__ import main
from core.chain import trace_chain
from core.errors import LayerMergeError, TableMismatchError
from core.latency import (
    NETWORK_JOB,
    REFERENCE,
    LatencyBackend,
    LatencyConfig,
    Timing,
    get_backend,
    list_backends,
    measure_latency,
    merged_conv_module,
    register_backend,
    structure_module,
    time_module,
)
from core.models import build_model
from core.segments import count_table_entries, find_segments, segment_geometry
from core.speed import table_reliability, table_warning
from core.table_store import PartialStore
from core.tables import read_tables, write_meta

FAST = LatencyConfig(batch=2, threads=1, min_run_time=0.002, warmup_runs=1, rounds=2)


class FakeClock:
    """A timer that never runs anything: every module takes a made-up, fixed time per label, and
    every timing from call ``slow_from`` up to (not including) ``slow_to`` takes ``factor`` times
    as long, as when another job takes the CPU for a while."""

    def __init__(
        self, slow_from: int | None = None, slow_to: int | None = None, factor: float = 3.0
    ) -> None:
        self.slow_from, self.slow_to, self.factor = slow_from, slow_to, factor
        self.calls: list[tuple[str, bool]] = []  # (what was timed, in the slow phase)

    @staticmethod
    def base_ms(what: str) -> float:
        if what == REFERENCE:
            return 1.0
        if what == NETWORK_JOB:
            return 400.0  # more than the table and structure: predictions stay positive
        return 0.5 + (zlib.crc32(what.encode()) % 997) / 100  # fixed per geometry

    def __call__(self, what, module, shape, config) -> Timing:
        index = len(self.calls)
        slow = self.slow_from is not None and self.slow_from <= index < (
            self.slow_to if self.slow_to is not None else 1 << 60
        )
        self.calls.append((what, slow))
        return Timing(self.base_ms(what) * (self.factor if slow else 1.0), 0.0, 1)

    def jobs(self) -> list[str]:
        return [what for what, _ in self.calls if what != REFERENCE]


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def digits_resnet():
    bundle = build_model("digits_resnet")
    return bundle, trace_chain(bundle.model, bundle.input_size)


@pytest.mark.parametrize("name", ["digits_resnet", "digits_mobilenet"])
def test_one_row_per_chain_entry_with_matching_keys(name, tmp_path):
    bundle = build_model(name)
    chain = trace_chain(bundle.model, bundle.input_size)
    table = measure_latency(bundle, chain, FAST, out=tmp_path)
    expected = {
        (s.start, s.end, o.kernel, o.depthwise, o.stride): o.kept_convs
        for s in find_segments(chain)
        for o in s.options
    }
    assert len(table.entries) == count_table_entries(chain) == len(expected)
    assert {e.key: e.kept_convs for e in table.entries} == expected
    assert all(e.latency_ms > 0 and e.latency_spread_ms >= 0 for e in table.entries)
    # the files on disk say the same, and join with no importance table yet
    read = read_tables(tmp_path, require_importance=False)
    assert {e.key for e in read.entries} == set(expected)
    meta = json.loads((tmp_path / "meta.json").read_text())
    for field in (
        "model",
        "width",
        "input_shape",
        "batch",
        "backend",
        "device",
        "threads",
        "versions",
        "chain_digest",
        "weights_digest",
        "created",
        "original_table_latency_ms",
        "network_latency_ms",
        "additivity_error",
        "cpu",
    ):
        assert field in meta, field
    assert meta["chain_digest"] == chain.digest()
    assert meta["threads"] == 1 and meta["batch"] == 2
    # the protocol's record: settings later measurements reuse, the noise, the speed model's parts
    from core.benchmark import allocator_in_effect

    assert meta["allocator"] == allocator_in_effect() and meta["rounds"] == 2
    assert meta["latency_protocol"]["version"] == 2
    noise = meta["latency_noise"]
    assert noise["timed"] >= 2 * len({e.key for e in table.entries}) // 10
    assert noise["samples"] >= noise["timed"] and noise["reference_quiet_ms"] > 0
    assert meta["network_folded_latency_ms"] == meta["network_latency_ms"] > 0
    assert meta["network_baseline"] == "original, BN folded"
    assert [row[:5] for row in meta["original_segments"]] == [
        [p - 1, p, chain.convs[p].kernel, chain.convs[p].depthwise, chain.convs[p].stride]
        for p in range(1, chain.last_position + 1)
    ]
    kinds = {c["kind"] for c in meta["structure_costs"]}
    assert kinds == ({"fixed", "residual", "activation"} if chain.residuals else kinds)
    assert all(c["latency_ms"] > 0 for c in meta["structure_costs"])
    # a cost the original runs is timed inside it (its steps), the rest alone; both recorded
    for cost in meta["structure_costs"]:
        assert cost["timed"] == ("in network" if cost.get("steps") else "alone"), cost
        assert cost.get("alone_ms", 1.0) > 0
    assert meta["structure_complete"] and meta["explained_network_ms"] > 0
    singles = sum(e.latency_ms for e in table.entries if e.end - e.start == 1 and e.keeps_all_convs)
    assert meta["original_table_latency_ms"] == pytest.approx(singles)
    network = meta["network_latency_ms"]
    assert meta["additivity_error"] == pytest.approx((singles - network) / network)
    assert not (tmp_path / ".partial").exists()


def test_dense_7x7_option_is_slower_than_3x3_on_the_same_segment():
    bundle = build_model("resnet18", input_size=64)
    chain = trace_chain(bundle.model, 64)
    segment = next(
        s
        for s in find_segments(chain)
        if {3, 7} <= {o.kernel for o in s.options if not o.depthwise}
    )
    config = LatencyConfig(batch=4, threads=1, min_run_time=0.05)
    timings = {}
    for kernel in (3, 7):
        option = next(o for o in segment.options if o.kernel == kernel and not o.depthwise)
        geometry = segment_geometry(chain, segment.start, segment.end, option.kept_convs)
        shape = (4, geometry["in_channels"], geometry["input_height"], geometry["input_width"])
        timings[kernel] = time_module(merged_conv_module(geometry), shape, config).median_ms
    assert timings[7] > timings[3], timings


def test_interrupted_run_resumes_and_identical_rerun_measures_nothing(
    digits_resnet, tmp_path, monkeypatch
):
    bundle, chain = digits_resnet
    total = count_table_entries(chain)
    clock = FakeClock()

    def interrupt(done: int, total_: int, eta: float | None) -> None:
        if done >= 5:  # progress moves by (entry, round): entries sharing a geometry together
            raise _Interrupt

    with pytest.raises(_Interrupt):
        measure_latency(bundle, chain, FAST, out=tmp_path, progress=interrupt, timer=clock)
    assert not (tmp_path / "latency.csv").exists()  # nothing half-done is published
    before = len(clock.jobs())
    assert 0 < before < 2 * total

    resumed = measure_latency(bundle, chain, FAST, out=tmp_path, timer=clock)
    # every sample is timed once over both runs: the first run's samples are not timed again
    assert len(clock.jobs()) == len(set(clock.jobs())) * FAST.rounds
    assert resumed.complete and resumed.computed + resumed.cached == total
    assert [e.latency_ms for e in resumed.entries] == [
        clock.base_ms(json.dumps(_geometry(chain, e), sort_keys=True)) for e in resumed.entries
    ]

    calls = []
    torch_backend = get_backend("torch")
    original_call = type(torch_backend).__call__
    monkeypatch.setattr(
        type(torch_backend),
        "__call__",
        lambda self, *a, **k: calls.append(1) or original_call(self, *a, **k),
    )
    again = measure_latency(bundle, chain, FAST, out=tmp_path)
    assert (again.computed, again.cached, calls) == (0, total, [])
    assert [e.latency_ms for e in again.entries] == pytest.approx(
        [e.latency_ms for e in resumed.entries], rel=1e-5
    )
    # other settings are another table: measured again, into the same directory
    other = measure_latency(bundle, chain, LatencyConfig(batch=3, **_fast_rest()), out=tmp_path)
    assert other.computed == total and calls


def test_damaged_finished_table_is_measured_again_never_used(digits_resnet, tmp_path):
    bundle, chain = digits_resnet
    measure_latency(bundle, chain, FAST, out=tmp_path, timer=FakeClock())
    path = tmp_path / "latency.csv"
    path.write_text(path.read_text().replace("false", "maybe", 1))
    with pytest.raises(TableMismatchError, match="depthwise"):
        read_tables(tmp_path, require_importance=False)
    again = measure_latency(bundle, chain, FAST, out=tmp_path, timer=FakeClock())
    assert again.computed == count_table_entries(chain)
    read_tables(tmp_path, require_importance=False)  # repaired


def test_foreign_directory_is_refused(digits_resnet, tmp_path):
    bundle, chain = digits_resnet
    write_meta(tmp_path, {"chain_digest": "0123456789abcdef", "model": "resnet34"})
    with pytest.raises(TableMismatchError, match="another network"):
        measure_latency(bundle, chain, FAST, out=tmp_path)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "latency.csv").write_text("start,end\n")
    with pytest.raises(TableMismatchError, match="no meta.json"):
        measure_latency(bundle, chain, FAST, out=orphan)


def test_onnxruntime_backend_gives_positive_latencies(digits_resnet):
    pytest.importorskip("onnxruntime")
    bundle, chain = digits_resnet
    config = LatencyConfig(batch=2, backend="onnxruntime", threads=1, min_run_time=0.01)
    table = measure_latency(bundle, chain, config, entries=2)
    assert len(table.entries) == 2 and not table.complete
    assert all(e.latency_ms > 0 for e in table.entries)
    assert table.meta["backend"] == "onnxruntime"


def test_entry_filter_by_key(digits_resnet):
    bundle, chain = digits_resnet
    segment = find_segments(chain)[3]
    keys = [(segment.start, segment.end, o.kernel, o.depthwise, o.stride) for o in segment.options]
    table = measure_latency(bundle, chain, FAST, entries=keys)
    assert [e.key for e in table.entries] == keys
    with pytest.raises(LayerMergeError, match="not latency entries"):
        measure_latency(bundle, chain, FAST, entries=[(0, 99, 3, False, 1)])


def test_backend_registry_is_strict():
    assert {"torch", "onnxruntime"} <= set(list_backends())
    with pytest.raises(ValueError, match="already registered"):

        @register_backend("torch")
        class _Again(LatencyBackend):
            def __call__(self, module, example, config):  # pragma: no cover
                raise AssertionError

    with pytest.raises(LayerMergeError, match="unknown latency backend"):
        get_backend("tensorrt")
    with pytest.raises(LayerMergeError, match="runs on cpu"):
        get_backend("onnxruntime").check(LatencyConfig(device="cuda"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch": 0}, "batch"),
        ({"device": "tpu"}, "device"),
        ({"threads": 0}, "threads"),
        ({"min_run_time": -1.0}, "min run time"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(LayerMergeError, match=match):
        LatencyConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_refused_clearly():
    with pytest.raises(LayerMergeError, match="needs a CUDA GPU"):
        get_backend("torch").check(LatencyConfig(device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_timing_gives_positive_latencies(digits_resnet):
    bundle, chain = digits_resnet
    config = LatencyConfig(batch=8, device="cuda", min_run_time=0.01)
    table = measure_latency(bundle, chain, config, entries=3)
    assert all(e.latency_ms > 0 for e in table.entries)


def test_cli_profile_and_bad_input(tmp_path, capsys, monkeypatch):
    # a steady clock: on a busy test machine a real one may leave timings slow, and an identical
    # rerun of such a table measures it again
    monkeypatch.setattr(latency, "_default_timer", lambda backend: FakeClock())
    out = tmp_path / "tables"
    args = ["profile", "digits_resnet", "--out", str(out), "--batch", "2", "--threads", "1"]
    args += ["--rounds", "2", "--allocator", "default"]
    assert main([*args, "--min-run-time", "0.002", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["entries"] == len(read_tables(out, require_importance=False).entries)
    assert result["computed"] == result["entries"]
    assert main([*args, "--min-run-time", "0.002"]) == 0  # identical rerun, human output
    captured = capsys.readouterr()
    assert "0 measured now" in captured.out and "additivity error" in captured.out
    assert main(["profile", "digits_resnet", "--out", str(out), "--batch", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch" in err[0]
    assert main(["profile", "no_such_model", "--out", str(out)]) == 2


def _fast_rest() -> dict:
    return {"threads": 1, "min_run_time": 0.002, "warmup_runs": 1, "network": False, "rounds": 2}


def _geometry(chain, entry) -> dict:
    """The classifier family's latency geometry of a table entry (what the clock is told)."""
    geometry = segment_geometry(chain, entry.start, entry.end, entry.kept_convs)
    return {**geometry, "activation": chain.default_activation or "relu"}


def test_partial_store_ignores_foreign_or_corrupt_files(tmp_path):
    store = PartialStore(tmp_path, "x", {"key": "a"})
    store.entries["1,2,3,0,1"] = {"latency_ms": 1.0}
    store.save()
    assert PartialStore(tmp_path, "x", {"key": "a"}).entries == store.entries
    assert PartialStore(tmp_path, "x", {"key": "b"}).entries == {}
    store.path.write_text("{not json")
    assert PartialStore(tmp_path, "x", {"key": "a"}).entries == {}


# ---------------------------------------------------------------------------------------------
# The profiling protocol, driven by a fake clock


def test_contention_detector_flags_a_slow_phase_and_remeasures_those_samples(digits_resnet):
    bundle, chain = digits_resnet
    config = LatencyConfig(batch=2, rounds=3)
    quiet = measure_latency(bundle, chain, config, timer=FakeClock())
    assert not quiet.meta["latency_noise"]["contention_seen"]
    assert quiet.meta["latency_noise"]["remeasured"] == 0

    # another job takes the CPU for a while in the middle of the rounds
    clock = FakeClock(slow_from=40, slow_to=80)
    table = measure_latency(bundle, chain, config, timer=clock)
    noise = table.meta["latency_noise"]
    assert noise["contention_seen"] and noise["slow_samples"] > 0
    assert noise["remeasured"] >= noise["slow_samples"] and noise["unresolved"] == 0
    # every job timed in the slow phase was timed again after it ...
    in_rounds = len(set(clock.jobs())) * config.rounds  # the rounds' job timings come first
    slow_jobs = {what for what, slow in clock.calls if slow and what != REFERENCE}
    assert slow_jobs and slow_jobs <= set(clock.jobs()[in_rounds:])
    # ... so the table holds the quiet times exactly, as if nothing had happened
    assert [e.latency_ms for e in table.entries] == [e.latency_ms for e in quiet.entries]
    assert table.meta["network_folded_latency_ms"] == quiet.meta["network_folded_latency_ms"]
    reliability = table_reliability(table.meta)
    assert reliability.contention_seen and not any("slow" in r for r in reliability.reasons)


def test_contention_that_never_ends_makes_the_table_unreliable(digits_resnet):
    bundle, chain = digits_resnet
    clock = FakeClock(slow_from=60)  # from the middle of the rounds to the end of the run
    table = measure_latency(bundle, chain, LatencyConfig(batch=2, rounds=3), timer=clock)
    noise = table.meta["latency_noise"]
    assert noise["contention_seen"] and noise["unresolved"] > 0
    warning = table_warning(table.meta, "DIR")
    assert warning is not None and "\n" not in warning
    assert warning.startswith("warning: latency table DIR is unreliable") and "slow" in warning


def test_cli_profile_warns_in_one_line_when_the_table_is_unreliable(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(latency, "_default_timer", lambda backend: FakeClock(slow_from=60))
    args = ["profile", "digits_resnet", "--out", str(tmp_path), "--batch", "2"]
    assert main([*args, "--rounds", "3", "--allocator", "default", "--json"]) == 0
    captured = capsys.readouterr()
    warnings_ = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "unreliable" in warnings_[0]
    result = json.loads(captured.out)
    assert result["warning"] == warnings_[0] and result["noise"]["unresolved"] > 0

    # an identical rerun reads the table back, warning again; with --remeasure it times it again,
    # and on a quiet machine the warning is gone
    monkeypatch.setattr(latency, "_default_timer", lambda backend: FakeClock())
    assert main([*args, "--rounds", "3", "--allocator", "default", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["computed"] == 0 and "stayed slow" in captured.err
    again = [*args, "--rounds", "3", "--allocator", "default", "--remeasure", "--json"]
    assert main(again) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["computed"] == result["entries"] and result["noise"]["unresolved"] == 0
    assert "stayed slow" not in captured.err

    # the same profile on a quiet machine warns of nothing
    args[3] = str(tmp_path / "quiet")
    assert main([*args, "--rounds", "3", "--allocator", "default", "--no-network"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["digits_resnet", "digits_mobilenet"])
def test_every_structure_cost_builds_and_runs_at_its_shape(name):
    from core.families import family_for

    bundle = build_model(name)
    family = family_for(name)
    chain = family.trace(bundle)
    costs = family.structure_costs(chain)
    assert {c.kind for c in costs} >= {"fixed", "activation"}
    assert [c.position for c in costs if c.kind == "activation"] == list(
        range(1, chain.last_position + 1)
    )
    assert [(c.start, c.end) for c in costs if c.kind == "residual"] == [
        (r.start, r.end) for r in chain.residuals
    ]
    for cost in costs:
        module, shape = structure_module(cost.geometry)
        with torch.no_grad():
            out = module(torch.randn(2, *shape))
        assert out.shape[0] == 2


@pytest.mark.parametrize(
    ("builder", "size"),
    [
        (lambda: torchvision.models.resnet18(), 64),
        (lambda: torchvision.models.resnet50(), 64),
        (lambda: torchvision.models.mobilenet_v2(), 64),
        (lambda: build_model("digits_resnet").model, 32),
    ],
    ids=["resnet18", "resnet50", "mobilenet_v2", "digits_resnet"],
)
def test_structure_steps_are_steps_the_folded_original_runs(builder, size):
    """The profiler times a structure cost inside the network by its step labels: every label
    must be one the BN-folded original runs, and every step that is not a main-path conv must
    belong to exactly one cost (else the in-network times would miss or double-count it)."""
    from core.benchmark import folded_original
    from core.latency import chain_structure_costs, time_steps

    model = builder().eval()
    chain = trace_chain(model, size)
    original = folded_original(model, chain)
    _, timed = original.timed_forward(torch.randn(1, *chain.input_shape))
    labels = [label for label, seconds in timed]
    costs = chain_structure_costs(chain)
    claimed = [label for cost in costs for label in cost.steps]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= set(labels)
    linear = {f"act{p}" for p in range(1, chain.last_position + 1) if not chain.activations[p]}
    unclaimed = set(labels) - set(claimed)
    assert all(label.startswith("merged") for label in unclaimed), unclaimed - linear
    for cost in costs:
        if cost.kind == "activation":
            assert bool(cost.steps) == bool(chain.activations[cost.position])
    timing, steps = time_steps(original, (1, *chain.input_shape), LatencyConfig(min_run_time=0.001))
    assert set(steps) == set(labels) and timing.runs >= 3 and timing.median_ms > 0
