"""Latency table: one row per chain entry, real timings, resume, cache, backends, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from core.__main__ import main
from core.chain import trace_chain
from core.errors import LayerMergeError, TableMismatchError
from core.latency import (
    LatencyBackend,
    LatencyConfig,
    get_backend,
    list_backends,
    measure_latency,
    merged_conv_module,
    register_backend,
    time_module,
)
from core.models import build_model
from core.segments import count_table_entries, find_segments, segment_geometry
from core.table_store import PartialStore
from core.tables import read_tables, write_meta

FAST = LatencyConfig(batch=2, threads=1, min_run_time=0.002, warmup_runs=1)


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
    stopped_at = []

    def interrupt(done: int, total_: int, eta: float | None) -> None:
        if done >= 5:  # progress moves by geometry: entries sharing one are done together
            stopped_at.append(done)
            raise _Interrupt

    with pytest.raises(_Interrupt):
        measure_latency(bundle, chain, FAST, out=tmp_path, progress=interrupt)
    assert not (tmp_path / "latency.csv").exists()  # nothing half-done is published

    resumed = measure_latency(bundle, chain, FAST, out=tmp_path)
    assert (resumed.cached, resumed.computed) == (stopped_at[0], total - stopped_at[0])

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
    measure_latency(bundle, chain, FAST, out=tmp_path)
    path = tmp_path / "latency.csv"
    path.write_text(path.read_text().replace("false", "maybe", 1))
    with pytest.raises(TableMismatchError, match="depthwise"):
        read_tables(tmp_path, require_importance=False)
    again = measure_latency(bundle, chain, FAST, out=tmp_path)
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


def test_cli_profile_and_bad_input(tmp_path, capsys):
    out = tmp_path / "tables"
    args = ["profile", "digits_resnet", "--out", str(out), "--batch", "2", "--threads", "1"]
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
    return {"threads": 1, "min_run_time": 0.002, "warmup_runs": 1, "network": False}


def test_partial_store_ignores_foreign_or_corrupt_files(tmp_path):
    store = PartialStore(tmp_path, "x", {"key": "a"})
    store.entries["1,2,3,0,1"] = {"latency_ms": 1.0}
    store.save()
    assert PartialStore(tmp_path, "x", {"key": "a"}).entries == store.entries
    assert PartialStore(tmp_path, "x", {"key": "b"}).entries == {}
    store.path.write_text("{not json")
    assert PartialStore(tmp_path, "x", {"key": "a"}).entries == {}
