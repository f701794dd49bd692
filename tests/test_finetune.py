"""core.finetune: a killed or cancelled finetune resumes to exactly the uninterrupted result."""

from __future__ import annotations

import functools
import math
import os
import pickle
import random
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from core.chain import trace_chain
from core.errors import DataError, UnsafeCheckpointError
from core.finetune import (
    FinetuneConfig,
    FinetuneConfigError,
    FinetuneProgress,
    evaluate,
    finetune,
    learning_rate_at,
    load_finetune_checkpoint,
    network_from_finetune_checkpoint,
)
from core.models import build_model
from core.network import StepNetwork
from core.surgery import build_training_network
from tests.helpers import random_solution

SIZE = 16  # a small input keeps each step fast; the demo models pool adaptively
# 48 images in batches of 8: 6 steps per epoch, so 8 steps cross an epoch boundary
CONFIG = FinetuneConfig(steps=8, batch_size=8, checkpoint_every=2, lr=0.05, seed=3)


class Killed(Exception):
    """Raised from the progress callback: the run dies as if the process were killed."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@functools.cache
def _setup() -> tuple[torch.nn.Module, StepNetwork, TensorDataset]:
    # digits_mobilenet has dropout in its head: resuming must restore the RNG to match exactly
    bundle = build_model("digits_mobilenet", input_size=SIZE)
    chain = trace_chain(bundle.model, SIZE)
    solution = random_solution(chain, random.Random(2))
    network = build_training_network(bundle.model, chain, solution)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(48, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 10, (48,), generator=generator)
    return bundle.model, network, TensorDataset(images, labels)


@functools.cache
def _uninterrupted() -> dict[str, torch.Tensor]:
    _, network, data = _setup()
    result = finetune(network, data, config=CONFIG)
    assert result.status == "completed" and result.step == CONFIG.steps
    return result.network.state_dict()


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_finetune_resumes_to_the_same_step_count_and_weights(tmp_path: Path) -> None:
    _, network, data = _setup()
    checkpoint = tmp_path / "checkpoint.pt"

    def kill_at_step_5(report: FinetuneProgress) -> None:
        if report.step == 5:
            raise Killed

    with pytest.raises(Killed):
        finetune(network, data, config=CONFIG, checkpoint_path=checkpoint, progress=kill_at_step_5)
    saved = torch.load(checkpoint, weights_only=True)  # plain tensors and values only
    assert saved["step"] == 4 and saved["status"] == "running"
    assert isinstance(saved["rng"]["torch"], torch.Tensor)

    reports: list[FinetuneProgress] = []
    result = finetune(
        network, data, config=CONFIG, checkpoint_path=checkpoint, progress=reports.append
    )
    assert result.status == "completed"
    assert result.resumed_from == 4 and result.step == result.total_steps == CONFIG.steps
    assert [r.step for r in reports] == [5, 6, 7, 8]
    assert _same_weights(result.network.state_dict(), _uninterrupted())
    assert torch.load(checkpoint, weights_only=True)["status"] == "completed"


def test_cancel_returns_cleanly_with_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    _, network, data = _setup()
    checkpoint = tmp_path / "checkpoint.pt"
    cancel = threading.Event()

    def cancel_at_step_3(report: FinetuneProgress) -> None:
        if report.step == 3:
            cancel.set()

    result = finetune(
        network,
        data,
        config=CONFIG,
        checkpoint_path=checkpoint,
        progress=cancel_at_step_3,
        cancel=cancel,
    )
    assert result.status == "cancelled" and result.step == 3
    assert load_finetune_checkpoint(checkpoint)["status"] == "cancelled"

    # the app's worker thread: resume off the main thread, with a device-only change
    box: dict[str, Any] = {}
    config = FinetuneConfig(**{**CONFIG.to_dict(), "checkpoint_every": 5, "device": "cpu"})
    worker = threading.Thread(
        target=lambda: box.update(
            result=finetune(network, data, config=config, checkpoint_path=checkpoint)
        )
    )
    worker.start()
    worker.join()
    resumed = box["result"]
    assert resumed.status == "completed" and resumed.resumed_from == 3
    assert resumed.step == CONFIG.steps
    assert _same_weights(resumed.network.state_dict(), _uninterrupted())
    rebuilt = network_from_finetune_checkpoint(load_finetune_checkpoint(checkpoint))
    assert _same_weights(rebuilt.state_dict(), _uninterrupted())


def test_finetune_leaves_its_input_alone_and_reports_progress() -> None:
    teacher, network, data = _setup()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    reports: list[FinetuneProgress] = []
    config = FinetuneConfig(
        steps=3,
        batch_size=8,
        optimizer="adamw",
        lr=1e-3,
        label_smoothing=0.1,
        distill_alpha=0.5,
        grad_clip=1.0,
    )
    result = finetune(network, data, config=config, teacher=teacher, progress=reports.append)
    assert _same_weights(network.state_dict(), before)
    assert result.network is not network and not result.network.training
    assert [r.step for r in reports] == [1, 2, 3]
    assert all(math.isfinite(r.loss) and 0 <= r.accuracy <= 100 for r in reports)
    assert reports[-1].eta_s == 0 and reports[0].total_steps == 3
    evaluation = evaluate(result.network, data)
    assert evaluation.count == 48 and 0 <= evaluation.accuracy <= 100
    assert evaluate(result.network, data, limit=5).count == 5


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    rates = [learning_rate_at(s, 10, 1.0, warmup_steps=2) for s in range(10)]
    assert rates[:2] == [0.5, 1.0]
    assert rates[2] == 1.0 and all(a >= b for a, b in zip(rates[2:], rates[3:], strict=False))
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert learning_rate_at(5, 10, 0.1, cosine=False) == 0.1


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "rmsprop"},
        {"lr": 0},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"epochs": 0},
        {"steps": -1},
        {"batch_size": 1.5},
        {"label_smoothing": 1.0},
        {"distill_alpha": 2.0},
        {"device": "tpu"},
        {"checkpoint_every": 0},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(FinetuneConfigError, match=next(iter(options))):
        FinetuneConfig(**options)


def test_config_round_trips_and_refuses_unknown_keys() -> None:
    assert FinetuneConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(FinetuneConfigError, match="unknown finetune options: lrr"):
        FinetuneConfig.from_dict({"lrr": 0.1})


def test_resume_refuses_another_network_or_other_options(tmp_path: Path) -> None:
    teacher, network, data = _setup()
    checkpoint = tmp_path / "checkpoint.pt"
    finetune(
        network, data, config=FinetuneConfig(steps=1, batch_size=8), checkpoint_path=checkpoint
    )
    with pytest.raises(FinetuneConfigError, match="lr=0.02, not 0.1"):
        finetune(
            network,
            data,
            config=FinetuneConfig(steps=1, batch_size=8, lr=0.1),
            checkpoint_path=checkpoint,
        )
    other_chain = trace_chain(teacher, SIZE)
    other = build_training_network(
        teacher, other_chain, random_solution(other_chain, random.Random(9))
    )
    with pytest.raises(FinetuneConfigError, match="another network"):
        finetune(
            other, data, config=FinetuneConfig(steps=1, batch_size=8), checkpoint_path=checkpoint
        )
    with pytest.raises(FinetuneConfigError, match="teacher"):
        finetune(network, data, config=FinetuneConfig(distill_alpha=0.3))
    with pytest.raises(DataError, match="empty"):
        finetune(network, TensorDataset(torch.zeros(0, 3, SIZE, SIZE), torch.zeros(0)))


def test_unsafe_checkpoints_are_refused_without_running(tmp_path: Path) -> None:
    _, network, data = _setup()
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(pickle.dumps({"format": "layermerge-finetune", "step": Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling"):
        finetune(
            network, data, config=FinetuneConfig(steps=1, batch_size=8), checkpoint_path=checkpoint
        )
    assert not marker.exists()

    torch.save({"format": "layermerge-finetune", "format_version": 1}, checkpoint)
    with pytest.raises(UnsafeCheckpointError, match="lacks 'status'"):
        load_finetune_checkpoint(checkpoint)
