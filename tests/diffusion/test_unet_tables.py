"""UNet latency and ε-loss importance tables, and the DP on them (identity upsample segments)."""

from __future__ import annotations

import math

import pytest
import torch

from core.__main__ import main
from core.dp import frontier, restricted_tables, solve
from core.families.unet.chain import trace_unet, unet_segments
from core.families.unet.data import load_diffusion_digits
from core.families.unet.importance import (
    ORIGINAL_JOB,
    UNetImportanceConfig,
    entry_job_id,
    estimate_unet_importance,
)
from core.families.unet.latency import entry_module, measure_unet_latency
from core.families.unet.unet import (
    DEMO_UNET_CONFIG,
    UNetBundle,
    unet_from_config,
    unet_state_digest,
)
from core.importance import estimate_importance
from core.latency import LatencyConfig
from core.tables import TableEntry, read_importance_csv, read_meta, read_tables

FAST = LatencyConfig(batch=2, min_run_time=0.01, warmup_runs=0, threads=1)


@pytest.fixture(scope="module")
def unet_tables(tmp_path_factory: pytest.TempPathFactory):
    """Real tables of the demo UNet architecture, measured and scored with tiny settings."""
    model = unet_from_config(DEMO_UNET_CONFIG)
    bundle = UNetBundle(
        model, "digits_unet", dict(DEMO_UNET_CONFIG), "seeded", None, unet_state_digest(model)
    )
    uchain = trace_unet(model)
    directory = tmp_path_factory.mktemp("unet_tables")
    measure_unet_latency(bundle, uchain, FAST, out=directory)
    estimate_unet_importance(
        bundle,
        uchain,
        load_diffusion_digits(),
        UNetImportanceConfig(steps=1, holdout_images=16),
        out=directory,
    )
    return uchain, read_tables(directory)


def test_every_entry_is_in_both_tables(unet_tables) -> None:
    uchain, tables = unet_tables
    expected = {
        (s.start, s.end, o.kernel, o.depthwise, o.stride)
        for s in unet_segments(uchain)
        for o in s.options
    }
    removals = {e.key for e in tables.entries if e.is_removal}
    assert {e.key for e in tables.entries} - removals == {k for k in expected if k[2] != 0}
    identity = [e for e in tables.entries if e.identity_segment]
    assert [e.end for e in identity] == list(uchain.upsample_convs)
    assert all(e.latency_ms == 0.0 for e in identity)
    assert all(e.latency_ms > 0 for e in tables.entries if not e.is_removal)
    assert all(math.isfinite(e.importance) and e.importance > 0 for e in tables.entries)
    assert tables.meta["family"] == "unet"
    assert tables.meta["importance_mode"] == "finetune"
    assert tables.meta["importance_normalization"] == "loss"
    assert tables.meta["original_table_latency_ms"] > 0
    assert tables.meta["network_latency_ms"] > 0


def test_single_kept_convs_share_the_original_run(unet_tables) -> None:
    _, tables = unet_tables
    singles = [e for e in tables.entries if e.end - e.start == 1 and not e.is_removal]
    assert {entry_job_id(e) for e in singles} == {ORIGINAL_JOB}
    assert all(e.delta_loss == 0.0 and e.importance == 1.0 for e in singles)
    merged = [e for e in tables.entries if e.end - e.start == 2]
    assert len({entry_job_id(e) for e in merged}) == len(merged)


def test_layermerge_may_choose_identity_upsamples_depth_may_not(unet_tables) -> None:
    uchain, tables = unet_tables
    upsample = uchain.upsample_convs[0]
    lm_keys = {e.key for e in restricted_tables(tables, "layermerge").entries}
    depth_keys = {e.key for e in restricted_tables(tables, "depth").entries}
    identity_key = (upsample - 1, upsample, 0, False, 1)
    assert identity_key in lm_keys
    assert identity_key not in depth_keys
    fastest = frontier(tables, method="layermerge")[0]
    assert upsample not in fastest.solution().kept_convs  # the fastest drops it: it costs 0


def test_classification_removals_are_not_identity_segments() -> None:
    removal = TableEntry(0, 1, 0, False, 1, (), latency_ms=0.0, importance=1.0)
    assert not removal.identity_segment


def test_dp_solution_builds_and_merges(unet_tables) -> None:
    from core.families.unet.flow import apply_unet_solution

    uchain, tables = unet_tables
    model = unet_from_config(DEMO_UNET_CONFIG)
    for fraction in (0.9, 0.6):
        solution = solve(tables, budget_fraction=fraction)
        result = apply_unet_solution(model, uchain, solution)
        x = torch.randn(2, 1, 16, 16)
        t = torch.tensor([3, 800])
        with torch.no_grad():
            a = result.training_network(x, t).sample
            b = result.merged_network(x, t).sample
        assert float((a - b).abs().max() / a.abs().max()) < 1e-4


def test_entry_modules_have_the_entry_geometry(unet_tables) -> None:
    uchain, _ = unet_tables
    for segment in unet_segments(uchain):
        for option in segment.options:
            if option.is_removal:
                continue
            module = entry_module(uchain, segment, option)
            conv = module[0]
            assert conv.kernel_size == (option.kernel, option.kernel)
            assert conv.in_channels == uchain.chain.convs[segment.start + 1].in_channels
            assert conv.out_channels == uchain.chain.convs[segment.end].out_channels


def test_a_killed_importance_run_resumes_and_gives_the_same_table(tmp_path) -> None:
    model = unet_from_config(DEMO_UNET_CONFIG)
    bundle = UNetBundle(
        model, "digits_unet", dict(DEMO_UNET_CONFIG), "seeded", None, unet_state_digest(model)
    )
    uchain = trace_unet(model)
    data = load_diffusion_digits()
    config = UNetImportanceConfig(steps=1, holdout_images=16)
    calls = []

    def stop_after_two_runs(done: int, total: int, eta: float | None) -> None:
        calls.append(done)
        if len(calls) == 3:  # the call at the start, then one per finished run
            raise KeyboardInterrupt  # what Ctrl-C or a killed worker looks like to the caller

    with pytest.raises(KeyboardInterrupt):
        estimate_importance(
            bundle, uchain, data, config, out=tmp_path, progress=stop_after_two_runs
        )
    assert not (tmp_path / "importance.csv").exists()
    resumed = estimate_importance(bundle, uchain, data, config, out=tmp_path)
    assert resumed.cached == calls[-1] > 0 and resumed.computed == len(resumed.entries) - calls[-1]
    assert resumed.networks_trained == resumed.meta["importance_networks"] - 2
    assert not (tmp_path / ".partial").exists()  # removed once the table is written
    fresh = estimate_importance(bundle, uchain, data, config)
    assert [(e.key, e.importance) for e in resumed.entries] == [
        (e.key, e.importance) for e in fresh.entries
    ]
    again = estimate_importance(bundle, uchain, data, config, out=tmp_path)
    assert (again.computed, again.networks_trained) == (0, 0)  # read back, nothing run


@pytest.mark.slow
def test_unet_importance_on_a_dask_cluster_equals_the_one_in_this_process(tmp_path, capsys) -> None:
    distributed = pytest.importorskip("distributed")
    args = ["importance", "digits_unet", "--data", "digits", "--steps", "1", "--eval-images", "16"]
    args += ["--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "here")]) == 0
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert main([*args, "--out", str(tmp_path / "there"), "--cluster", address]) == 0
    capsys.readouterr()
    here = read_importance_csv(tmp_path / "here" / "importance.csv")
    there = read_importance_csv(tmp_path / "there" / "importance.csv")
    assert [(e.key, e.importance, e.delta_loss) for e in there] == [
        (e.key, e.importance, e.delta_loss) for e in here
    ]
    meta = read_meta(tmp_path / "there")
    assert meta["importance_runner"] == f"dask:{address}" and meta["family"] == "unet"
    assert meta["importance_settings"]["steps"] == 1


def test_unet_options_that_do_not_apply_are_refused_in_one_line(tmp_path, capsys) -> None:
    base = ["importance", "digits_unet", "--data", "digits", "--out", str(tmp_path)]
    for extra, message in (
        (["--mode", "distortion"], "--mode distortion is not supported"),
        (["--reinit-single"], "--reinit-single is not supported"),
        (["--calibration-images", "16"], "--calibration-images is not supported"),
        (["--normalization", "acc"], "--normalization acc is not supported"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "importance.csv").exists()
