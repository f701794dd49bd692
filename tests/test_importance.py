"""Importance table: entry networks, both modes, resume and cache, local vs dask, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.__main__ import main
from core.chain import trace_chain
from core.errors import DataError, LayerMergeError
from core.importance import (
    EntryScore,
    ImportanceConfig,
    ModelRecipe,
    entry_seed,
    entry_solution,
    estimate_importance,
    normalize_importance,
)
from core.models import build_model
from core.segments import find_segments, keep_everything_solution, validate_solution
from core.surgery import build_training_network, original_network
from core.tables import TableEntry, read_importance_csv

# Distortion mode on a small calibration batch: the whole table in a few seconds.
QUICK = ImportanceConfig(mode="distortion", calibration_images=32)
# Finetune mode cut to the bone: enough to exercise training, seeding and evaluation.
TINY = ImportanceConfig(steps=2, batch_size=8, eval_images=48)


class _Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def digits_resnet():
    bundle = build_model("digits_resnet")
    return bundle, trace_chain(bundle.model, bundle.input_size)


def _all_keys(chain):
    return [
        (s.start, s.end, o.kernel, o.depthwise, o.stride)
        for s in find_segments(chain, include_removals=True)
        for o in s.options
    ]


def test_entry_network_differs_from_the_original_in_its_segment_only(digits_resnet):
    bundle, chain = digits_resnet
    keep = keep_everything_solution(chain)
    for segment in find_segments(chain, include_removals=True):
        for option in segment.options:
            entry = TableEntry(
                segment.start,
                segment.end,
                option.kernel,
                option.depthwise,
                option.stride,
                option.kept_convs,
            )
            solution = entry_solution(chain, entry)
            validate_solution(chain, solution)
            inside = [s for s in solution.segments if s.start < entry.end and s.end > entry.start]
            assert [s.key for s in inside] == [entry.key]
            outside = {s.key for s in solution.segments} - {entry.key}
            assert outside <= {s.key for s in keep.segments}
            assert set(solution.kept_activations) == set(solution.boundaries)
    # a single-layer entry that keeps its conv is the original network itself
    single = next(s for s in find_segments(chain) if s.end - s.start == 1)
    option = single.full_option
    entry = TableEntry(single.start, single.end, option.kernel, option.depthwise, option.stride,
                       option.kept_convs)  # fmt: skip
    x = torch.randn(2, *chain.input_shape)
    with torch.inference_mode():
        same = build_training_network(bundle.model, chain, entry_solution(chain, entry)).eval()
        assert torch.allclose(same(x), original_network(bundle.model, chain).eval()(x))


def test_distortion_mode_scores_every_entry_with_removals(digits_resnet, tmp_path):
    bundle, chain = digits_resnet
    table = estimate_importance(bundle, chain, "digits", QUICK, out=tmp_path, threads=1)
    assert [e.key for e in table.entries] == _all_keys(chain)
    removals = [e for e in table.entries if e.is_removal]
    assert len(removals) == len(chain.reducible_convs) > 0
    for entry in table.entries:
        assert math.isfinite(entry.importance) and 0 < entry.importance <= 1 + 1e-9
        if entry.end - entry.start == 1 and not entry.is_removal:
            assert entry.importance == pytest.approx(1.0)  # the original network: no distortion
    merged = [e for e in table.entries if e.end - e.start > 1]
    assert min(e.importance for e in merged) < 1.0
    rows = read_importance_csv(tmp_path / "importance.csv")
    assert [r.key for r in rows] == [e.key for e in table.entries]
    meta = json.loads((tmp_path / "meta.json").read_text())
    for field in ("chain_digest", "weights_digest", "data_digest", "importance_settings_digest"):
        assert meta[field]
    assert meta["importance_mode"] == "distortion" and meta["importance_entries"] == len(rows)


def test_interrupted_run_resumes_and_identical_rerun_computes_nothing(digits_resnet, tmp_path):
    bundle, chain = digits_resnet
    total = len(_all_keys(chain))
    stopped_at = []

    def interrupt(done: int, total_: int, eta: float | None) -> None:
        if done >= 4:
            stopped_at.append(done)
            raise _Interrupt

    with pytest.raises(_Interrupt):
        estimate_importance(
            bundle, chain, "digits", QUICK, out=tmp_path, progress=interrupt, threads=1
        )
    assert not (tmp_path / "importance.csv").exists()
    resumed = estimate_importance(bundle, chain, "digits", QUICK, out=tmp_path, threads=1)
    assert resumed.cached == stopped_at[0] and resumed.computed == total - stopped_at[0]
    again = estimate_importance(bundle, chain, "digits", QUICK, out=tmp_path, threads=1)
    assert (again.computed, again.cached, again.networks_trained) == (0, total, 0)
    assert [e.importance for e in again.entries] == pytest.approx(
        [e.importance for e in resumed.entries]
    )


def test_finetune_mode_and_the_reinit_convention(digits_resnet):
    bundle, chain = digits_resnet
    singles = [
        (s.start, s.end, s.full_option.kernel, s.full_option.depthwise, s.full_option.stride)
        for s in find_segments(chain)
        if s.end - s.start == 1
    ][:2]
    shared = estimate_importance(bundle, chain, "digits", TINY, entries=singles, threads=1)
    assert shared.networks_trained == 1  # both are the original network: one run
    assert shared.entries[0].importance == shared.entries[1].importance
    assert shared.meta["importance_settings"]["steps"] == 2
    reinit = estimate_importance(
        bundle, chain, "digits", ImportanceConfig(**{**vars(TINY), "reinit_single": True}),
        entries=singles, threads=1,
    )  # fmt: skip
    assert reinit.networks_trained == 2


@pytest.mark.slow
def test_dask_cluster_gives_the_same_importance_as_local_processes(digits_resnet):
    distributed = pytest.importorskip("distributed")
    bundle, chain = digits_resnet
    keys = [k for k in _all_keys(chain) if k[1] - k[0] > 1 or k[2] == 0][:4]
    local = estimate_importance(bundle, chain, "digits", TINY, jobs=2, entries=keys)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
    ):
        remote = estimate_importance(
            bundle, chain, "digits", TINY, cluster=cluster.scheduler_address, entries=keys
        )
    assert remote.meta["importance_runner"].startswith("dask:")
    assert [e.key for e in remote.entries] == [e.key for e in local.entries] == keys
    assert [e.importance for e in remote.entries] == [e.importance for e in local.entries]
    assert [e.delta_loss for e in remote.entries] == [e.delta_loss for e in local.entries]


def test_normalizations():
    score = EntryScore(
        accuracy=90.0,
        loss=0.6,
        delta_acc=-5.0,
        delta_loss=0.2,
        base_accuracy=95.0,
        base_loss=0.4,
        distortion=0.3,
        kl=0.1,
    )
    assert normalize_importance(score, "acc") == pytest.approx(math.exp(-0.05))
    assert normalize_importance(score, "loss") == pytest.approx(math.exp(-0.5))
    assert normalize_importance(score, "distortion") == pytest.approx(math.exp(-0.3))
    assert normalize_importance(score, "kl") == pytest.approx(math.exp(-0.1))
    with pytest.raises(LayerMergeError):
        normalize_importance(score, "f1")
    assert entry_seed(0, "identity") == entry_seed(0, "identity") != entry_seed(1, "identity")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "guess"}, "mode"),
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"normalization": "kl"}, "distortion"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(LayerMergeError, match=match):
        ImportanceConfig(**kwargs)


def test_bad_runs_are_refused(digits_resnet):
    bundle, chain = digits_resnet
    with pytest.raises(LayerMergeError, match="jobs"):
        estimate_importance(bundle, chain, "digits", QUICK, jobs=0)
    with pytest.raises(DataError):
        estimate_importance(bundle, chain, "imagenet", QUICK)
    with pytest.raises(LayerMergeError, match="not entries"):
        estimate_importance(bundle, chain, "digits", QUICK, entries=[(0, 99, 3, False, 1)])
    big = build_model("resnet18", input_size=32)
    with pytest.raises(DataError, match="1000 outputs"):
        estimate_importance(big, trace_chain(big.model, 32), "digits", QUICK)


def test_cli_importance_and_bad_input(tmp_path, capsys):
    out = tmp_path / "tables"
    args = ["importance", "digits_resnet", "--data", "digits", "--out", str(out)]
    args += ["--calibration-images", "16", "--threads", "1"]
    assert main([*args, "--mode", "distortion", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (
        result["entries"] == result["computed"] == len(read_importance_csv(out / "importance.csv"))
    )
    assert main([*args, "--mode", "distortion"]) == 0
    assert "0 computed now" in capsys.readouterr().out
    for bad in (["--jobs", "0"], ["--mode", "guess"], ["--steps", "-3"]):
        assert main([*args, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:")


def test_model_recipe_rebuilds_the_same_weights(digits_resnet):
    bundle, _ = digits_resnet
    for recipe in (
        ModelRecipe.from_bundle(bundle),
        ModelRecipe.from_bundle(bundle, portable=True),
    ):
        assert recipe.build().weights_digest == bundle.weights_digest
    given = build_model("digits_resnet", weights=bundle.model.state_dict())
    recipe = ModelRecipe.from_bundle(given)
    assert recipe.weights_path is None and recipe.weights_bytes  # never was a file: bytes
    assert recipe.build().weights_digest == given.weights_digest
    tampered = ModelRecipe(**{**vars(recipe), "weights_digest": "0" * 16})
    with pytest.raises(LayerMergeError, match="rebuilt"):
        tampered.build()
