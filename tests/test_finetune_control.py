"""The finetune control: the original finetuned with the same recipe, cached, and reported beside.

Real models and data throughout: the digits_resnet demo classifier on the bundled digits, and a
tiny diffusers UNet on the digits for the UNet family; a few steps each.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from core.__main__ import main
from core.families.unet.unet import save_unet_folder, unet_from_config
from core.segments import keep_everything_solution
from core.solution import save_solution
from core.workflows.control import CONTROL_RESULT_NAME, control_key, finetune_control
from core.workflows.finetune import finetune
from core.workflows.model import LoadedModel, load_data, load_model
from tests.helpers import TINY_UNET_CONFIG, random_solution

CLASSIFIER_OPTIONS = {"steps": 3, "batch_size": 8, "lr": 0.05, "seed": 1, "device": "cpu"}
UNET_OPTIONS = {"steps": 2, "batch_size": 8, "seed": 1, "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def resnet() -> LoadedModel:
    return load_model("digits_resnet")


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = tmp_path_factory.mktemp("tiny_unet")
    save_unet_folder(unet_from_config(TINY_UNET_CONFIG, seed=1), folder)
    return load_model(f"diffusers:{folder}")


def _setup(model: LoadedModel, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    data = load_data(model, "digits")
    config = model.family.finetune_config(options, data)
    segments = model.family.segments(model.traced)
    solution = random_solution(model.chain, random.Random(4), segments=segments)
    return data, config, solution


def _counter() -> tuple[list[int], Any]:
    steps: list[int] = []
    return steps, lambda report: steps.append(report.step)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("which", ["resnet", "unet"])
def test_control_is_the_original_finetuned_and_leaves_the_compressed_run_alone(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model: LoadedModel = request.getfixturevalue(which)
    data, config, solution = _setup(
        model, CLASSIFIER_OPTIONS if which == "resnet" else UNET_OPTIONS
    )
    original = {k: v.clone() for k, v in model.bundle.model.state_dict().items()}
    cache = tmp_path / "controls"
    plain = finetune(model, solution, data, config, out=tmp_path / "plain")
    steps, counter = _counter()
    done = finetune(
        model,
        solution,
        data,
        config,
        out=tmp_path / "with",
        control=True,
        control_cache=cache,
        control_progress=counter,
    )
    control = done.control
    assert control is not None and control.status == "completed" and not control.reused
    assert steps == list(range(1, plain.total_steps + 1))  # the same recipe: as many steps
    assert control.step == plain.total_steps
    # the control is the original finetuned: the original's own training form (every conv and
    # activation kept, the original's weights), moved away from those weights by training ...
    keep = keep_everything_solution(model.chain)
    untrained = model.family.training_form(model.bundle.model, model.traced, keep)
    evaluate = model.family.evaluate
    assert evaluate(untrained, data) == pytest.approx(evaluate(model.bundle.model, data))
    trained = control.network.state_dict()
    assert untrained.state_dict().keys() == trained.keys()
    assert not _same(untrained.state_dict(), trained), "the control was not trained"
    assert _same(model.bundle.model.state_dict(), original)  # ... which is left untouched
    # its figures are its own evaluation, recorded beside the original's
    figures = evaluate(control.network, data)
    assert dict(control.figures) == pytest.approx(figures)
    quality = next(iter(model.family.figures()))
    assert done.metrics[f"{quality}_control"] == pytest.approx(figures[quality])
    # the compressed network is exactly what a run without the control gives
    assert _same(done.network.state_dict(), plain.network.state_dict())
    assert _same(done.merged.state_dict(), plain.merged.state_dict())
    # the summary states the compressed figure against both
    summary = json.loads((tmp_path / "with" / "metrics.json").read_text())
    comparison = summary["comparison"]
    assert comparison["control"] == pytest.approx(figures[quality])
    assert comparison["vs_control"] == pytest.approx(comparison["compressed"] - figures[quality])
    assert comparison["vs_original"] == pytest.approx(
        comparison["compressed"] - comparison["original"]
    )
    assert "vs control" in comparison["line"] and "original finetuned" in comparison["line"]
    assert summary["control"]["key"] == control_key(model, data, config)
    assert plain.comparison is not None and plain.comparison["control"] is None
    assert "vs control" not in plain.comparison["line"]


def test_a_control_of_the_same_original_and_recipe_is_reused(
    resnet: LoadedModel, tmp_path: Path
) -> None:
    data, config, _ = _setup(resnet, CLASSIFIER_OPTIONS)
    cache = tmp_path / "controls"
    steps, counter = _counter()
    first = finetune_control(resnet, data, config, cache=cache, progress=counter)
    assert steps and not first.reused
    assert (first.folder / CONTROL_RESULT_NAME).is_file()
    steps.clear()
    again = finetune_control(resnet, data, config, cache=cache, progress=counter)
    assert steps == [] and again.reused  # nothing trained the second time
    assert again.figures == first.figures and again.key == first.key
    # the checkpoint interval does not change the result, so it shares the key ...
    other_interval = resnet.family.finetune_config(
        {**CLASSIFIER_OPTIONS, "checkpoint_every": 1}, data
    )
    assert control_key(resnet, data, other_interval) == first.key
    # ... while another learning rate is another recipe, trained afresh
    other = resnet.family.finetune_config({**CLASSIFIER_OPTIONS, "lr": 0.01}, data)
    assert control_key(resnet, data, other) != first.key
    third = finetune_control(resnet, data, other, cache=cache, progress=counter)
    assert steps and not third.reused


def test_finetune_checkpoint_and_summary_record_the_data_spec(
    resnet: LoadedModel, tmp_path: Path
) -> None:
    data, config, solution = _setup(resnet, CLASSIFIER_OPTIONS)
    done = finetune(resnet, solution, data, config, out=tmp_path / "ft")
    expected = {"spec": "digits", "input_size": 32, "norm": "digits", "resize": 32}
    assert expected.items() <= dict(done.data_spec).items()
    assert len(done.data_spec["mean"]) == 3 and len(done.data_spec["std"]) == 3
    summary = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert summary["data_spec"] == done.data_spec
    state = torch.load(done.state, weights_only=True)  # plain values: weights_only reads them
    assert state["metadata"]["data"] == done.data_spec
    compressed = torch.load(done.compressed, weights_only=True)
    assert compressed["metrics"]["data_spec"] == done.data_spec


def test_cli_control_prints_the_vs_control_line(resnet: LoadedModel, tmp_path: Path) -> None:
    _, _, solution = _setup(resnet, CLASSIFIER_OPTIONS)
    path = tmp_path / "solution.json"
    save_solution(solution, path)
    argv = [
        "finetune", "digits_resnet", "--solution", str(path), "--data", "digits",
        "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "8", "--device", "cpu",
        "--control",
    ]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "control (original finetuned the same way)" in text and "vs control" in text
    assert "control [" in err.getvalue()  # the control's own progress bar
    assert f"written to {tmp_path / 'controls'}" in text  # beside --out by default
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main([*argv, "--json"])
    result = json.loads(out.getvalue())
    assert code == 0 and result["control"]["reused"]  # the same recipe again: reused
    assert result["comparison"]["vs_control"] is not None


def test_cli_control_cache_that_is_a_file_is_refused_before_any_work(
    resnet: LoadedModel, tmp_path: Path
) -> None:
    _, _, solution = _setup(resnet, CLASSIFIER_OPTIONS)
    path = tmp_path / "solution.json"
    save_solution(solution, path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = [
        "finetune", "digits_resnet", "--solution", str(path), "--data", "digits",
        "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "8",
    ]  # fmt: skip
    for extra, says in (
        (["--control", "--control-cache", str(blocker)], "control cache"),
        (["--control-cache", str(tmp_path / "c")], "only used with --control"),
    ):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main([*base, *extra])
        assert code == 2 and says in err.getvalue(), err.getvalue()
        assert "finetune [" not in err.getvalue()  # refused before any training
        assert len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()
