"""Proof that the model-family protocol is real: a third family, defined only here, runs the flow.

``ToyAutoencoderFamily`` is a small conv autoencoder with a reconstruction (MSE) task: no classes,
no accuracy, an output the size of its input. It is registered from this file with
``@register_family`` and then goes through the same core calls the CLI and the app make — chain,
latency table, importance table (distortion mode, with the family's own estimator), the DP,
compress, save, and ``core.export.load`` — without a line of ``core/`` or ``pages/`` knowing it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from core import export
from core.dp import solve
from core.families import family_for, list_models, register_family, unregister_family
from core.families.base import TaskInfo
from core.families.classifier.family import ClassifierFamily
from core.importance import EntryScore, ImportanceConfig, ImportanceEstimator, entry_solution
from core.latency import LatencyConfig
from core.models import ModelBundle, state_dict_digest
from core.surgery import build_training_network, original_network
from core.tables import read_tables
from core.workflows.compress import compress
from core.workflows.model import load_model
from core.workflows.tables import importance, profile

TOY = "toy_autoencoder"
SIDE = 16
TOY_FORMAT = "toy-autoencoder-compressed"


class ConvAutoencoder(nn.Module):
    """conv-BN-ReLU ×3 then a conv back to the image: a plain chain with no head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, H, W)
        return self.decoder(self.encoder(x))


@dataclass(frozen=True)
class Images:
    """The toy task's data: images to reconstruct, in three splits."""

    name: str
    digest: str  # what table cache keys hold of the data
    finetune: torch.Tensor
    holdout: torch.Tensor
    test: torch.Tensor


def _images(seed: int, count: int) -> torch.Tensor:
    """Smooth random images (low-frequency noise upsampled), so reconstruction is learnable."""
    coarse = torch.randn(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=(SIDE, SIDE), mode="bilinear")


class ReconstructionDistortion(ImportanceEstimator):
    """Distortion mode for an autoencoder: how far a modified network's output moves, and its
    reconstruction MSE against the input (no labels, so no accuracy)."""

    mode = "distortion"
    config_type = ImportanceConfig

    def __init__(self, model: nn.Module, chain: Any, data: Images, config: Any) -> None:
        super().__init__(model, chain, data, config)
        self.images = data.holdout[: config.calibration_images or 32]
        with torch.inference_mode():
            self.reference = self._original()(self.images)

    @classmethod
    def resolve(cls, config: ImportanceConfig, data: Images) -> ImportanceConfig:
        return config.resolved(len(data.finetune))  # the defaults, normalization included

    def __call__(self, chain: Any, entry: Any, *, seed: int = 0) -> EntryScore:
        self._check_traced(chain)
        started = time.perf_counter()
        _, base_loss = self.base
        network = build_training_network(self.model, chain, entry_solution(chain, entry)).eval()
        with torch.inference_mode():
            output = network(self.images)
        distortion = float(((output - self.reference) ** 2).sum() / (self.reference**2).sum())
        loss = float(((output - self.images) ** 2).mean())
        return EntryScore(
            accuracy=math.nan,
            loss=loss,
            delta_acc=math.nan,
            delta_loss=loss - base_loss,
            base_accuracy=math.nan,
            base_loss=base_loss,
            distortion=distortion,
            seconds=time.perf_counter() - started,
        )

    def _evaluate(self, network: nn.Module) -> tuple[float, float]:
        with torch.inference_mode():
            return math.nan, float(((network(self.images) - self.images) ** 2).mean())

    def _original(self) -> nn.Module:
        return original_network(self.model, self.traced).eval()


class ToyAutoencoderFamily(ClassifierFamily):
    """A CNN family in structure (traced, cut and merged like a classifier), another task."""

    name = "toy_autoencoder_family"
    task = TaskInfo(name="reconstruction", quality="mse", higher_is_better=False, panel="none")
    checkpoint_format = TOY_FORMAT

    def claims(self, model: str) -> bool:
        return model == TOY

    def model_names(self) -> list[str]:
        return [TOY]

    def states_input_size(self, model: str) -> bool:
        return True

    def load(self, model: str, *, weights=None, width=1.0, input_size=None) -> ModelBundle:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = ConvAutoencoder().eval()
        return ModelBundle(
            model=network,
            name=model,
            width=1.0,
            num_classes=0,
            input_size=SIDE,
            weights_source="seeded",
            weights_path=None,
            weights_digest=state_dict_digest(network.state_dict()),
        )

    def checkpoint(self, network, bundle, traced, solution, *, metrics=None) -> dict[str, Any]:
        return {**super().checkpoint(network, bundle, traced, solution, metrics=metrics),
                "format": TOY_FORMAT}  # fmt: skip

    def from_checkpoint(self, checkpoint: Mapping[str, Any], *, name: str = "checkpoint"):
        as_classifier = {**checkpoint, "format": ClassifierFamily.checkpoint_format}
        return super().from_checkpoint(as_classifier, name=name)

    def load_data(self, spec: str, bundle: Any, traced: Any, *, seed: int = 0) -> Images:
        digest = f"toy-{spec}-{seed}"
        return Images(spec, digest, _images(seed, 64), _images(seed + 1, 32), _images(seed + 2, 32))

    def evaluate(self, network: nn.Module, data: Images) -> dict[str, float]:
        with torch.inference_mode():
            return {"mse": float(((network.eval()(data.test) - data.test) ** 2).mean())}

    def importance_estimator(self, mode: str) -> type:
        return ReconstructionDistortion

    def recipe(self, bundle: ModelBundle, *, portable: bool = False) -> Any:
        return None  # this family's tables run in this process only (no worker rebuilds it)


@pytest.fixture()
def toy_family() -> Iterator[ToyAutoencoderFamily]:
    register_family(ToyAutoencoderFamily)
    try:
        yield family_for(TOY)
    finally:
        unregister_family(ToyAutoencoderFamily.name)


def test_a_third_family_runs_chain_tables_solve_compress_and_load(toy_family, tmp_path) -> None:
    assert isinstance(toy_family, ToyAutoencoderFamily) and TOY in list_models()
    tables_dir = tmp_path / "tables"
    latency = profile(
        TOY, out=tables_dir, config=LatencyConfig(batch=2, threads=1, min_run_time=0.005)
    )
    assert latency.family == ToyAutoencoderFamily.name and latency.complete
    scores = importance(
        TOY, data="random", out=tables_dir, settings={"mode": "distortion", "calibration_images": 8}
    )
    assert scores.complete and scores.entries
    tables = read_tables(tables_dir)
    assert {e.key for e in latency.entries} <= {e.key for e in tables.entries}  # + removals

    solution = solve(tables, budget_fraction=0.8)
    assert solution.latency_ms <= 0.8 * tables.original_latency_ms + 1e-9
    result = compress(load_model(TOY), solution, out=tmp_path / "toy.pt")
    assert result.merge_error <= 1e-4

    loaded = export.load(tmp_path / "toy.pt")  # found by its format, rebuilt by the toy family
    x = _images(9, 4)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), result.merged(x), rtol=1e-5, atol=1e-6)
    assert loaded(x).shape == x.shape  # an image out, not logits
    assert torch.load(tmp_path / "toy.pt", weights_only=True)["format"] == TOY_FORMAT


def test_the_toy_family_is_gone_after_unregistering(toy_family) -> None:
    unregister_family(ToyAutoencoderFamily.name)
    assert TOY not in list_models()
    assert family_for(TOY).name == "classifier"  # an unknown name falls to the classifiers
    register_family(ToyAutoencoderFamily)  # the fixture unregisters it again
