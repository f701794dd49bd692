"""core.workflows and core.flow: one implementation serves every family, through the protocol.

The CLI tests run each workflow end to end (tests/test_cli_compress.py,
tests/diffusion/test_cli_unet.py); these check what the CLI does not show: ``core.flow.compress``
on a UNet, the figures each family names per stage, a measurement cancelled before it starts,
and that an option given as 0 counts as given.
"""

from __future__ import annotations

import copy
import random
import threading
from pathlib import Path

import pytest
import torch

from core.families import family_for
from core.flow import compress
from core.segments import keep_everything_solution
from core.tables import read_tables
from core.workflows.evaluate import evaluate, stage_metrics
from core.workflows.finetune import finetune
from core.workflows.measure import measure
from core.workflows.model import load_data, load_model
from tests.helpers import random_solution

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", ["digits_resnet", "digits_unet"])
def test_flow_compress_serves_every_family_and_leaves_the_model_alone(name: str) -> None:
    model = load_model(name)
    original = copy.deepcopy(model.bundle.model)
    tables = read_tables(ROOT / "cached_tables" / name)
    result = compress(
        model.bundle.model, tables, budget_fraction=0.7, input_size=model.bundle.input_size
    )
    assert result.solution.latency_ms <= 0.7 * tables.original_latency_ms + 1e-9
    assert result.chain == model.chain and result.traced.digest() == model.traced.digest()
    family = model.family
    assert family.merge_error(result.training_network, result.merged_network, result.traced) < 1e-4
    for key, value in original.state_dict().items():
        assert torch.equal(value, model.bundle.model.state_dict()[key]), key
    summary = family.network_summary(result.merged_network, result.traced)
    assert summary["depth"] < family.network_summary(original, result.traced)["depth"]


def test_each_family_names_the_figures_of_each_stage() -> None:
    cnn = load_model("digits_resnet")
    data = load_data(cnn, "digits")
    scored = evaluate(cnn, data)
    assert scored.quality == "accuracy" and scored.higher_is_better and scored.value > 50.0
    family = cnn.family
    assert set(stage_metrics(family, "finetune", "surgery", cnn.bundle.model, data)) == {
        "accuracy_after_surgery",
        "loss_after_surgery",
    }
    assert stage_metrics(family, "finetune", "finetuned", cnn.bundle.model, data) == {}

    unet = load_model("digits_unet")
    diffusion = load_data(unet, "digits")
    loss = evaluate(unet, diffusion)
    assert loss.quality == "ε-loss" and not loss.higher_is_better and loss.value > 0
    names = {
        stage: set(stage_metrics(unet.family, "finetune", stage, unet.bundle.model, diffusion))
        for stage in ("original", "merged")
    }
    assert names == {"original": {"eps_loss_original"}, "merged": {"eps_loss_merged"}}
    before = stage_metrics(unet.family, "compress", "original", unet.bundle.model, diffusion)
    assert before == {"eps_loss_before": loss.value}


def test_a_cancelled_measurement_times_nothing() -> None:
    model = load_model("digits_mobilenet")
    cancel = threading.Event()
    cancel.set()
    done = measure(model, keep_everything_solution(model.chain), rounds=1, cancel=cancel)
    assert done.status == "cancelled" and done.comparisons == ()
    assert done.baseline == "original, BN folded"
    assert done.original["depth"] == done.compressed["depth"] == len(model.chain.convs)


def test_an_option_given_as_zero_is_given() -> None:
    family = family_for("digits_resnet")
    options = {"warmup": 0.0, "label_smoothing": 0.0, "distill": 0.0, "batch_size": 8}
    config = family.finetune_config(options, None)
    assert config.warmup_fraction == 0.0 and config.batch_size == 8
    assert family.finetune_config({}, None).warmup_fraction > 0


def test_a_watched_finetune_reports_each_stage_and_its_run_state_while_it_trains(
    tmp_path: Path,
) -> None:
    """What the app's finetune job watches: the same workflow as the CLI, seen from outside."""
    model = load_model("digits_resnet")
    data = load_data(model, "digits")
    family = model.family
    config = family.finetune_config({"steps": 6, "batch_size": 8, "device": "cpu"}, data)
    segments = family.segments(model.traced)
    solution = random_solution(model.chain, random.Random(4), segments=segments)
    seen: list[tuple[str, int, dict[str, float]]] = []
    points: list[tuple[dict[str, float | None], bool]] = []
    done = finetune(
        model,
        solution,
        data,
        config,
        out=tmp_path / "ft",
        progress=lambda report: points.append(family.curve_point(report)),
        evaluated=lambda stage, step, figures: seen.append((stage, step, dict(figures))),
        evaluations=3,
    )
    assert done.status == "completed"
    stages = [(stage, step) for stage, step, _ in seen]
    assert stages == [
        ("original", 0),
        ("surgery", 0),
        ("interim", 2),
        ("interim", 4),
        ("merged", 6),
    ]
    assert done.config["checkpoint_every"] == 2  # the run state is written where it is evaluated
    figures = {stage: figures for stage, _, figures in seen}
    assert figures["original"]["accuracy"] == done.metrics["accuracy_before"]
    assert figures["surgery"]["accuracy"] == done.metrics["accuracy_after_surgery"]
    assert figures["merged"]["accuracy"] == done.metrics["accuracy_after"]
    assert all(0.0 <= f["accuracy"] <= 100.0 for stage, _, f in seen if stage == "interim")
    assert len(points) == 6 and all(set(p) == {"loss", "accuracy"} and not m for p, m in points)
