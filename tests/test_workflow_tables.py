"""The tables workflow on every family: cancel and resume, options per family, shipped tables that
are current (a rerun with the shipped settings computes nothing) and share one set of meta keys."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from core.build_cache import DEMO_BATCH, DEMO_DATA, DEMO_THREADS
from core.errors import DataError, LayerMergeError
from core.families import family_for
from core.families.unet.unet import DEMO_UNET_CONFIG, save_unet_folder, unet_from_config
from core.importance import ImportanceConfig
from core.importance_estimate import (
    estimate_importance_seconds,
    job_threads,
    measure_step_costs,
)
from core.latency import LatencyConfig
from core.tables import MANIFEST_PATH, read_manifest, read_meta
from core.workflows import tables
from tests.helpers import one_line_error, run_cli

FAST = LatencyConfig(batch=2, threads=1, min_run_time=0.002, warmup_runs=0, network=False)
FAMILY_EXTRAS = {"unet_config"}  # meta keys one family records about its model
NEW_KEYS = {"data_spec"}  # recorded by fresh tables, absent from the shipped ones (optional)
LEGACY_KEYS = {"kind", "importance_config", "importance_distinct_runs", "base_loss"}


@pytest.mark.parametrize("model", ["digits_resnet", "digits_unet"])
def test_a_cancelled_profile_writes_no_table_and_the_next_run_resumes(model, tmp_path):
    cancel = threading.Event()

    def stop_soon(done: int, total: int, eta: float | None) -> None:
        if done:
            cancel.set()  # the user presses stop once something is measured

    stopped = tables.profile(model, out=tmp_path, config=FAST, progress=stop_soon, cancel=cancel)
    assert stopped.cancelled and not stopped.complete
    assert not (tmp_path / "latency.csv").exists()
    assert len(stopped.entries) == stopped.computed + stopped.identity_entries  # finished ones
    resumed = tables.profile(model, out=tmp_path, config=FAST)
    assert resumed.complete and resumed.cached == stopped.computed > 0
    assert resumed.computed > 0  # the first run really stopped early
    assert resumed.computed + resumed.cached == len(resumed.entries) - resumed.identity_entries
    assert read_meta(tmp_path)["family"] == resumed.family


def test_each_family_refuses_the_options_that_do_not_apply():
    with pytest.raises(LayerMergeError, match="unknown importance options"):
        tables.importance("digits_resnet", data="digits", settings={"holdout_images": 3})
    with pytest.raises(LayerMergeError, match="--reinit-single is not supported"):
        tables.importance("digits_unet", data="digits", settings={"reinit_single": True})
    with pytest.raises(LayerMergeError, match="cannot build no_such_model|unknown model"):
        tables.profile("no_such_model")


def test_data_the_family_cannot_learn_from_is_refused_before_it_is_loaded(tmp_path):
    rgb = unet_from_config({**DEMO_UNET_CONFIG, "in_channels": 3, "out_channels": 3}, seed=1)
    folder = save_unet_folder(rgb, tmp_path / "rgb")
    model = f"diffusers:{folder}"
    family, bundle, _ = tables.load_traced(model)
    assert family.data_problem("digits", bundle) == tables_error(model)
    assert family_for("digits_resnet").data_problem("digits", bundle) is None
    with pytest.raises(DataError) as caught:
        tables.importance(model, data="digits", out=tmp_path / "t", settings={"steps": 0})
    assert str(caught.value) == tables_error(model)
    assert not (tmp_path / "t").exists()  # refused before anything was written
    with pytest.raises(DataError, match="only the bundled digits"):
        tables.importance("digits_unet", data="folder:/nowhere", settings={"steps": 0})


def tables_error(model: str) -> str:
    """The one line a 3-channel UNet gets: the digits have one channel."""
    return (
        f"{model} takes 3-channel images, and the only diffusion data so far is the bundled "
        "digits (1 channel): importance and finetuning need images it can learn from"
    )


@pytest.mark.parametrize("entry", read_manifest(), ids=lambda e: e["dir"])
def test_shipped_tables_are_current_and_share_one_set_of_meta_keys(entry, tmp_path):
    shipped = MANIFEST_PATH.parent / entry["dir"]
    copy = tmp_path / entry["dir"]
    shutil.copytree(shipped, copy)
    config = LatencyConfig(batch=DEMO_BATCH, threads=DEMO_THREADS)
    latency = tables.profile(entry["model"], width=entry["width"], out=copy, config=config)
    importance = tables.importance(entry["model"], width=entry["width"], data=DEMO_DATA, out=copy)
    assert (latency.computed, importance.computed, importance.networks_trained) == (0, 0, 0)
    keys = set(read_meta(shipped)) - FAMILY_EXTRAS
    reference = set(read_meta(MANIFEST_PATH.parent / "digits_resnet")) - FAMILY_EXTRAS
    assert keys == reference and not keys & LEGACY_KEYS
    assert read_meta(copy) == read_meta(shipped)  # read back, nothing rewritten


@pytest.mark.parametrize(
    "model, settings",
    [
        ("digits_resnet", {"mode": "distortion", "calibration_images": 16}),
        ("digits_unet", {"steps": 0, "eval_images": 16}),
    ],
)
def test_fresh_tables_of_every_family_have_the_shipped_meta_keys(model, settings, tmp_path):
    tables.profile(model, out=tmp_path, config=FAST)
    result = tables.importance(model, data="digits", out=tmp_path, settings=settings)
    assert result.complete and result.meta["importance_entries"] == len(result.entries)
    shipped = set(read_meta(MANIFEST_PATH.parent / "digits_resnet")) - FAMILY_EXTRAS
    assert set(read_meta(tmp_path)) - FAMILY_EXTRAS - NEW_KEYS == shipped - NEW_KEYS
    assert read_meta(tmp_path)["data_spec"]["spec"] == "digits"


def test_meta_records_the_data_spec_and_its_preprocessing(tmp_path):
    settings = {"mode": "distortion", "calibration_images": 16}
    result = tables.importance("digits_resnet", data="digits", out=tmp_path, settings=settings)
    record = read_meta(tmp_path)["data_spec"]
    assert record == result.meta["data_spec"]
    assert record["spec"] == "digits" and record["norm"] == "digits"
    assert record["input_size"] == 32 and record["resize"] == 32 and record["crop"] is None
    assert len(record["mean"]) == len(record["std"]) == 3 and min(record["std"]) > 0


def _untrained_head() -> dict[str, torch.Tensor]:
    """digits_resnet's shipped weights with the classifier zeroed: every logit 0, so it always
    answers class 0 (about 10% of the digits), as a model fed the wrong preprocessing does."""
    _, bundle, _ = tables.load_traced("digits_resnet")
    weights = {name: value.clone() for name, value in bundle.model.state_dict().items()}
    weights["fc.weight"].zero_()
    weights["fc.bias"].zero_()
    return weights


def test_importance_stops_when_the_original_scores_at_chance(tmp_path):
    settings = {"mode": "distortion", "calibration_images": 16}
    with pytest.raises(DataError, match="no better than chance") as caught:
        tables.importance(
            "digits_resnet",
            data="digits",
            weights=_untrained_head(),
            out=tmp_path,
            settings=settings,
        )
    assert "\n" not in str(caught.value) and "preprocessing" in str(caught.value)
    assert not (tmp_path / "importance.csv").exists()


def test_the_cli_says_so_in_one_line_with_exit_2(tmp_path, capsys):
    weights = tmp_path / "head0.th"
    torch.save(_untrained_head(), weights)
    args = ["importance", "digits_resnet", "--weights", str(weights), "--data", "digits"]
    code, _, err = run_cli(capsys, *args, "--mode", "distortion", "--out", str(tmp_path / "t"))
    assert "no better than chance" in one_line_error(code, err)


def test_the_time_estimate_counts_networks_and_scales_with_the_settings():
    family, bundle, traced = tables.load_traced("digits_resnet")
    data = family.load_data("digits", bundle, traced)
    config = ImportanceConfig(steps=10, eval_images=100)
    costs = measure_step_costs(bundle, traced, data, config, threads=job_threads(1))
    assert costs.step_seconds > 0 and costs.image_seconds > 0
    estimate = estimate_importance_seconds(bundle, traced, data, config, costs=costs)
    assert estimate.costs == costs  # the same batch and threads: not measured again
    # 34 entries, of which the single-layer ones that keep their conv share one network
    assert (estimate.entries, estimate.networks) == (34, 23)
    per_network = 10 * costs.step_seconds + 100 * costs.image_seconds
    assert estimate.seconds == pytest.approx(23 * per_network + 100 * costs.image_seconds)
    longer = estimate_importance_seconds(
        bundle, traced, data, ImportanceConfig(steps=20, eval_images=100), costs=costs
    )
    assert longer.seconds > estimate.seconds and "estimate" in longer.describe()
    quick = estimate_importance_seconds(
        bundle, traced, data, ImportanceConfig(mode="distortion"), costs=costs
    )
    assert quick.steps == 0 and quick.seconds < estimate.seconds
