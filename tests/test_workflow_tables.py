"""The tables workflow on every family: cancel and resume, options per family, shipped tables that
are current (a rerun with the shipped settings computes nothing) and share one set of meta keys."""

from __future__ import annotations

import shutil
import threading

import pytest

from core.build_cache import DEMO_BATCH, DEMO_DATA, DEMO_THREADS
from core.errors import LayerMergeError
from core.latency import LatencyConfig
from core.tables import MANIFEST_PATH, read_manifest, read_meta
from core.workflows import tables

FAST = LatencyConfig(batch=2, threads=1, min_run_time=0.002, warmup_runs=0, network=False)
FAMILY_EXTRAS = {"unet_config"}  # meta keys one family records about its model
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
    assert set(read_meta(tmp_path)) - FAMILY_EXTRAS == shipped
