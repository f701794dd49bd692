"""Every model of every family, through the family protocol only: trace, cut, merge, save, load.

Parametrized over :func:`core.families.list_models`, so a model (or a family) added to a registry
gets these checks without a line of test code. The full-size torchvision models are ``slow``
(``pytest -m "not slow"`` skips them during development; ``make test`` runs everything).
"""

from __future__ import annotations

import random

import pytest
import torch

from core import export
from core.errors import UnsafeCheckpointError
from core.families import family_for, list_families, list_models
from core.segments import keep_everything_solution
from tests.helpers import random_solution

FAST_MODELS = {"digits_resnet", "digits_mobilenet", "digits_unet"}
MODELS = [
    pytest.param(name, marks=() if name in FAST_MODELS else pytest.mark.slow)
    for name in list_models()
]
SOLUTIONS_PER_MODEL = 4
TOLERANCE = 1e-4  # merged vs training form, relative (float64 composition, float32 weights)
MAX_SIDE = 64  # torchvision models run at 64 px here: the same chain shape, far faster


def _load(name: str):
    family = family_for(name)
    bundle = family.load(name)
    if bundle.input_size > MAX_SIDE:
        bundle = family.load(name, input_size=MAX_SIDE)
    return family, bundle


def test_the_built_in_families_are_registered_and_claim_their_models() -> None:
    assert list_families()[:2] == ["classifier", "unet"]
    assert "digits_unet" in list_models()
    assert family_for("digits_unet").name == "unet"
    assert family_for("diffusers:/some/folder").name == "unet"
    assert family_for("resnet18").name == family_for("my.module:build").name == "classifier"


@pytest.mark.parametrize("name", MODELS)
def test_random_solutions_merge_exactly_and_checkpoints_load_back(name: str, tmp_path) -> None:
    family, bundle = _load(name)
    traced = family.trace(bundle)
    chain = family.chain_of(traced)
    assert traced.digest() == family.trace(bundle).digest()  # stable within a process
    segments = family.segments(traced)
    rng = random.Random(7)
    solutions = [keep_everything_solution(chain)] + [
        random_solution(chain, rng, max_length=3, segments=segments)
        for _ in range(SOLUTIONS_PER_MODEL)
    ]
    for number, solution in enumerate(solutions):
        training = family.training_form(bundle.model, traced, solution)
        merged = family.merge(training, traced, solution)
        assert family.merge_error(training, merged, traced) <= TOLERANCE, solution.segments
        checkpoint = family.checkpoint(merged, bundle, traced, solution, metrics={"n": number})
        path = tmp_path / f"{number}.pt"
        torch.save(checkpoint, path)
        loaded = export.load(path)  # dispatches on the checkpoint's format
        assert isinstance(loaded, torch.nn.Module) and not loaded.training
        assert family.merge_error(merged, loaded, traced) <= 1e-6


@pytest.mark.parametrize("name", sorted(FAST_MODELS))
def test_the_task_evaluates_the_original(name: str) -> None:
    family, bundle = _load(name)
    traced = family.trace(bundle)
    data = family.load_data("digits", bundle, traced)
    figures = family.evaluate(bundle.model, data)
    assert figures and all(torch.isfinite(torch.tensor(v)) for v in figures.values())
    if family.task.higher_is_better:  # a trained demo classifier is far above chance (10%)
        assert next(iter(figures.values())) > 50.0


def test_a_checkpoint_of_no_family_is_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else", "state_dict": {}}, path)
    with pytest.raises(
        UnsafeCheckpointError, match="not a LayerMerge compressed checkpoint"
    ) as info:
        export.load(path)
    assert "\n" not in str(info.value)
