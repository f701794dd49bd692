"""core.families.unet data, ε-loss, DDIM sampling, digits FD, UNet finetuning and the shipped demo UNet.

Everything runs for real (no mocks) on a tiny seeded UNet where a trained one is not needed, so
each test takes seconds on a 2-core CPU.
"""

from __future__ import annotations

import functools
import json
import threading

import numpy as np
import pytest
import torch
from torch import nn

from core.data import _split_indices, digits_arrays, load_data
from core.errors import DataError, LayerMergeError
from core.families.unet.data import (
    DIFFUSION_DIGITS_SIZE,
    DiffusionData,
    load_diffusion_data,
    load_diffusion_digits,
)
from core.families.unet.demo import train_demo_unet
from core.families.unet.finetune import UNetFinetuneConfig, UNetFinetuneProgress, finetune_unet
from core.families.unet.loss import (
    NUM_TRAIN_TIMESTEPS,
    antithetic_timesteps,
    epsilon_loss,
    make_train_scheduler,
    training_loss,
)
from core.families.unet.quality import digits_fd, frechet_distance
from core.families.unet.sampling import ddim_sample, sample_grid, time_sampling
from core.families.unet.unet import DEMO_UNET_CONFIG, build_unet, unet_from_config
from core.finetune import FinetuneConfigError

# Two resolutions, no attention, 8/16 channels: a forward pass of 64 images takes milliseconds.
TINY_CONFIG = {
    "sample_size": DIFFUSION_DIGITS_SIZE,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
}


def tiny_unet(seed: int = 0) -> nn.Module:
    return unet_from_config(TINY_CONFIG, seed=seed)


@functools.cache
def small_data() -> DiffusionData:
    """The digits with a 64-image holdout, so each holdout evaluation is cheap."""
    full = load_diffusion_digits()
    return DiffusionData(
        name=full.name,
        train=full.train,
        holdout=full.holdout[:64],
        test=full.test,
        digest=full.digest,
        size=full.size,
    )


# --------------------------------------------------------------------------- data


def test_digits_splits_have_the_shape_range_and_split_of_the_classifier_path() -> None:
    data = load_diffusion_digits()
    images, _ = digits_arrays()
    train_idx, holdout_idx, test_idx = _split_indices(len(images), 0)
    assert data.name == "digits" and data.size == 16
    for split, idx in ((data.train, train_idx), (data.holdout, holdout_idx), (data.test, test_idx)):
        assert split.shape == (len(idx), 1, 16, 16)
        assert split.dtype == torch.float32
        assert float(split.min()) >= -1.0 and float(split.max()) <= 1.0
    assert float(data.train.min()) == -1.0 and float(data.train.max()) > 0.9
    assert len(data.train) + len(data.holdout) + len(data.test) == len(images)

    classifier = load_data("digits")  # the splits the shipped classifiers were trained/tested on
    assert tuple(test_idx) == classifier.test_sources
    assert tuple(holdout_idx) == classifier.holdout_sources
    assert set(train_idx) == set(classifier.finetune_sources)
    assert not set(train_idx) & set(test_idx) and not set(holdout_idx) & set(test_idx)
    # Row k of the test split is original digit test_idx[k], upscaled and mapped to [-1, 1].
    original = torch.from_numpy(images[test_idx[5]])[None, None]  # (1, 1, 8, 8)
    upscaled = torch.nn.functional.interpolate(original, size=16, mode="bilinear")
    assert torch.allclose(data.test[5:6], upscaled * 2 - 1, atol=1e-6)


def test_digits_digest_follows_the_recipe_and_other_specs_are_refused() -> None:
    assert load_diffusion_digits().digest == load_diffusion_data("digits").digest
    assert load_diffusion_digits(size=24).digest != load_diffusion_digits().digest
    assert load_diffusion_digits(size=24).train.shape[-1] == 24
    assert load_diffusion_digits(seed=1).digest != load_diffusion_digits().digest
    with pytest.raises(DataError, match="only the bundled digits"):
        load_diffusion_data("cifar10:/tmp/nowhere")
    with pytest.raises(DataError, match="at least 8"):
        load_diffusion_digits(size=4)


# --------------------------------------------------------------------------- ε-loss


def test_antithetic_timesteps_pair_t_with_T_minus_1_minus_t() -> None:
    for count in (1, 7, 10):
        t = antithetic_timesteps(count, torch.Generator().manual_seed(0))
        assert t.shape == (count,) and t.dtype == torch.int64
        assert int(t.min()) >= 0 and int(t.max()) < NUM_TRAIN_TIMESTEPS
        half = count // 2 + 1
        mirrored = t[half:]
        assert torch.equal(mirrored, NUM_TRAIN_TIMESTEPS - 1 - t[: len(mirrored)])


def test_epsilon_loss_is_seeded_batch_independent_and_keeps_the_training_flag() -> None:
    unet = tiny_unet()
    images = load_diffusion_digits().holdout[:40]
    unet.train()
    first = epsilon_loss(unet, images, seed=3, batch_size=16)
    assert unet.training  # restored
    assert epsilon_loss(unet, images, seed=3, batch_size=16) == first
    assert epsilon_loss(unet, images, seed=3, batch_size=40) == pytest.approx(first, rel=1e-5)
    assert epsilon_loss(unet, images, seed=4, batch_size=16) != first
    # A sum over 256 pixels: an untrained UNet's per-pixel MSE is about 1.
    assert 100 < first < 1000
    with pytest.raises(LayerMergeError, match="no images"):
        epsilon_loss(unet, images[:0])


def test_epsilon_loss_is_the_pixel_sum_of_squared_noise_error() -> None:
    # A "UNet" that predicts zero noise scores E|ε|² = C·H·W, whatever the images.
    class ZeroNoise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> object:
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    images = load_diffusion_digits().test
    assert epsilon_loss(ZeroNoise(), images) == pytest.approx(256, rel=0.02)


def test_training_loss_has_a_gradient_and_follows_its_generator() -> None:
    unet = tiny_unet()
    images = load_diffusion_digits().train[:8]
    scheduler = make_train_scheduler()
    loss = training_loss(unet, images, torch.Generator().manual_seed(0), scheduler)
    loss.backward()
    assert loss.dim() == 0 and loss.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    again = training_loss(unet, images, torch.Generator().manual_seed(0), scheduler)
    assert float(again.detach()) == pytest.approx(float(loss.detach()))


# --------------------------------------------------------------------------- sampling


def test_ddim_sample_is_seeded_batch_independent_and_in_range() -> None:
    unet = tiny_unet()
    calls: list[tuple[int, int]] = []
    first = ddim_sample(unet, 6, steps=3, seed=1, progress=lambda d, n: calls.append((d, n)))
    assert first.shape == (6, 1, 16, 16) and first.dtype == torch.float32
    assert float(first.min()) >= -1.0 and float(first.max()) <= 1.0
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert torch.equal(ddim_sample(unet, 6, steps=3, seed=1), first)
    assert torch.allclose(ddim_sample(unet, 6, steps=3, seed=1, batch_size=4), first, atol=1e-5)
    assert not torch.allclose(ddim_sample(unet, 6, steps=3, seed=2), first)
    noisy = ddim_sample(unet, 4, steps=3, seed=1, eta=1.0)
    noisy_by_one = ddim_sample(unet, 4, steps=3, seed=1, eta=1.0, batch_size=1)
    assert torch.allclose(noisy_by_one, noisy, atol=1e-4)
    with pytest.raises(LayerMergeError, match="steps"):
        ddim_sample(unet, 2, steps=0)


def test_sample_grid_and_sampling_time() -> None:
    images = torch.cat([torch.full((3, 1, 16, 16), -1.0), torch.full((3, 1, 16, 16), 1.0)])
    grid = sample_grid(images, nrow=3)
    assert grid.dtype == np.uint8 and grid.shape == (2 * 17 + 1, 3 * 17 + 1)
    assert grid[1:17, 1:17].max() == 0 and grid[18:34, 1:17].min() == 255
    assert time_sampling(tiny_unet(), count=2, steps=2, repeats=1) > 0


# --------------------------------------------------------------------------- quality


def test_frechet_distance_known_cases() -> None:
    features = np.random.default_rng(0).normal(size=(400, 6))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    # A shift moves only the mean: FD = |shift|².
    assert frechet_distance(features, features + 0.5) == pytest.approx(6 * 0.25, rel=1e-6)
    # b = 2(a − μ_a): μ_b = 0 and Σ_b = 4Σ_a, so FD = |μ_a|² + tr(Σ_a + 4Σ_a − 2·2Σ_a).
    centred = 2 * (features - features.mean(axis=0))
    expected = (features.mean(axis=0) ** 2).sum() + np.trace(np.cov(features, rowvar=False))
    assert frechet_distance(features, centred) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LayerMergeError, match="at least 2 samples"):
        frechet_distance(features[:1], features)
    with pytest.raises(LayerMergeError, match="one D"):
        frechet_distance(features, features[:, :3])


def test_digits_fd_separates_real_digits_from_noise() -> None:
    data = load_diffusion_digits()
    floor = digits_fd(data.holdout)  # vs the test split
    noise = torch.randn(data.holdout.shape, generator=torch.Generator().manual_seed(0))
    noise_fd = digits_fd(noise.clamp(-1, 1))
    assert floor < 2.0
    assert noise_fd > 30 * floor and noise_fd > 50


# --------------------------------------------------------------------------- finetuning


def test_finetune_unet_lowers_the_holdout_loss_and_reports_progress() -> None:
    unet = tiny_unet()
    reports: list[UNetFinetuneProgress] = []
    config = UNetFinetuneConfig(steps=12, lr=2e-3, batch_size=32, eval_every=6)
    result = finetune_unet(unet, small_data(), config, progress=reports.append)
    assert result.network is unet and not unet.training
    assert result.step == result.total_steps == 12 and result.status == "completed"
    assert result.holdout_loss_after < 0.7 * result.holdout_loss_before
    assert [r.step for r in reports] == list(range(1, 13)) and result.history == reports
    assert [r.step for r in reports if r.holdout_loss is not None] == [6, 12]
    assert reports[-1].holdout_loss == pytest.approx(result.holdout_loss_after)
    assert result.loss == reports[-1].loss == reports[-1].train_loss
    assert reports[0].eta_s is not None and reports[-1].eta_s == 0.0
    assert reports[-1].readout().startswith(f"loss {reports[-1].train_loss:.4f} holdout ")


def test_finetune_unet_is_seeded_and_honours_cancel() -> None:
    config = UNetFinetuneConfig(steps=20, lr=1e-3, batch_size=16, eval_every=50, ema_decay=0.9)
    cancel = threading.Event()

    def cancel_after_three(report: UNetFinetuneProgress) -> None:
        if report.step >= 3:
            cancel.set()

    stopped = finetune_unet(
        tiny_unet(), small_data(), config, progress=cancel_after_three, cancel=cancel
    )
    assert stopped.status == "cancelled" and stopped.step == 3 and len(stopped.history) == 3
    again = finetune_unet(tiny_unet(), small_data(), config, cancel=threading.Event())
    once_more = finetune_unet(tiny_unet(), small_data(), config, progress=None)
    assert again.step == 20 and again.status == "completed"
    assert again.holdout_loss_after == once_more.holdout_loss_after
    assert again.history[-1].train_loss == once_more.history[-1].train_loss


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 0},
        {"lr": -1.0},
        {"batch_size": 0},
        {"seed": -1},
        {"ema_decay": 1.0},
        {"eval_every": 0},
        {"warmup_steps": 300},
        {"grad_clip": 0.0},
    ],
)
def test_unet_finetune_config_refuses_out_of_range_values(options: dict) -> None:
    with pytest.raises(FinetuneConfigError, match=next(iter(options))):
        UNetFinetuneConfig(**options)


# --------------------------------------------------------------------------- the demo UNet


def test_shipped_demo_unet_draws_digits() -> None:
    bundle = build_unet("digits_unet")
    assert bundle.weights_source == "shipped"
    assert sum(p.numel() for p in bundle.model.parameters()) < 200_000
    samples = ddim_sample(bundle.model, 128, steps=10, seed=0, batch_size=128)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    test = load_diffusion_digits().test
    fd, noise_fd = digits_fd(samples, test), digits_fd(noise, test)
    assert fd < noise_fd / 20, (fd, noise_fd)  # shipped: about 2.4 against 119


def test_train_demo_unet_writes_a_loadable_folder_and_merges_metrics(tmp_path) -> None:
    metrics_path = tmp_path / "metrics.json"
    metrics_path.write_text(json.dumps({"other": {"kept": True}}))
    metrics = train_demo_unet(tmp_path / "unet", steps=2, metrics_path=metrics_path)
    assert metrics["steps"] == 2 and metrics["params"] == sum(
        p.numel() for p in unet_from_config(DEMO_UNET_CONFIG).parameters()
    )
    assert metrics["fd_holdout_vs_test"] < metrics["fd_noise_vs_test"]
    written = json.loads(metrics_path.read_text())
    assert written["other"] == {"kept": True} and written["digits_unet"] == metrics
    loaded = build_unet(f"diffusers:{tmp_path / 'unet'}")
    assert loaded.weights_source == "folder" and loaded.config["sample_size"] == 16
