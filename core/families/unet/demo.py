"""Training the shipped weights of the demo diffusion UNet, ``digits_unet``.

``digits_unet`` (``core.families.unet.unet.DEMO_UNET_CONFIG``, about 177K parameters) learns the 16x16
digits of ``core.families.unet.data`` with DDPM's ε-prediction loss, from seeded initial weights, on the
train split only. Run once, in about ten minutes on a 2-core CPU::

    python -m core.families.unet.demo [--steps 3000] [--out cached_tables/demo_weights/digits_unet]

It writes a diffusers folder (``config.json`` and ``diffusion_pytorch_model.safetensors``, under
1 MB) and a ``digits_unet`` entry in ``cached_tables/demo_weights/metrics.json``: the holdout
ε-loss, and the digits Fréchet distance (``core.families.unet.quality``) of 256 DDIM samples to the
test split beside the floor (holdout vs test) and pure noise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import LayerMergeError
from core.families.unet.data import load_diffusion_digits
from core.families.unet.finetune import UNetFinetuneConfig, UNetFinetuneProgress, finetune_unet
from core.families.unet.quality import digits_fd
from core.families.unet.sampling import DEFAULT_SAMPLING_STEPS, ddim_sample
from core.families.unet.unet import (
    DEMO_UNET_CONFIG,
    DEMO_UNET_DIR,
    DEMO_UNET_NAME,
    save_unet_folder,
    unet_from_config,
)

__all__ = [
    "DEMO_STEPS",
    "DEMO_METRICS_PATH",
    "demo_finetune_config",
    "train_demo_unet",
    "main",
]

DEMO_STEPS = 3000  # ~180 epochs of the 1079 train digits at batch 64; ~10 min on 2 CPU threads
DEMO_METRICS_PATH = DEMO_UNET_DIR.parent / "metrics.json"
DEMO_LR = 1e-3  # from scratch, a small UNet takes a larger step than the paper's finetune lr
DEMO_BATCH_SIZE = 64
DEMO_WARMUP_STEPS = 100
DEMO_EMA_DECAY = 0.999  # DDPM samples from EMA weights; 0.9999 needs far more than 3000 steps
DEMO_GRAD_CLIP = 1.0  # diffusers' training examples clip at 1
QUALITY_SAMPLES = 256  # DDIM samples the FD is measured on (seed 0, 20 steps)


def demo_finetune_config(steps: int = DEMO_STEPS, seed: int = 0) -> UNetFinetuneConfig:
    """The recipe of the shipped weights: Adam, warm-up then cosine, EMA, gradient clipping."""
    return UNetFinetuneConfig(
        steps=steps,
        lr=DEMO_LR,
        batch_size=DEMO_BATCH_SIZE,
        seed=seed,
        ema_decay=DEMO_EMA_DECAY,
        eval_every=max(1, min(250, steps // 4)),
        warmup_steps=min(DEMO_WARMUP_STEPS, steps // 10),
        cosine=True,
        grad_clip=DEMO_GRAD_CLIP,
    )


def train_demo_unet(
    out_dir: str | Path = DEMO_UNET_DIR,
    *,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    progress: Callable[[UNetFinetuneProgress], None] | None = None,
    metrics_path: str | Path | None = DEMO_METRICS_PATH,
) -> dict[str, Any]:
    """Train ``digits_unet`` from seeded weights, save it, and measure it.

    Args:
        out_dir: the diffusers folder to write.
        steps: optimizer steps.
        seed: seeds the initial weights, the data order and the noise.
        progress: passed to :func:`core.families.unet.finetune.finetune_unet`.
        metrics_path: the ``metrics.json`` whose ``digits_unet`` entry is replaced (other entries
            stay); None writes none.

    Returns:
        JSON-able metrics: steps, training seconds, holdout ε-loss, FD of the samples, of the
        holdout split (the floor) and of noise, all against the test split, and the setup.
    """
    data = load_diffusion_digits(seed=0)  # the split every demo model is tested on
    unet = unet_from_config(DEMO_UNET_CONFIG, seed=seed)
    config = demo_finetune_config(steps, seed)
    started = time.perf_counter()
    result = finetune_unet(unet, data, config, progress=progress)
    train_seconds = time.perf_counter() - started
    if result.stopped:
        raise LayerMergeError("demo UNet training was stopped before it finished")
    out = save_unet_folder(result.unet, out_dir)

    samples = ddim_sample(result.unet, QUALITY_SAMPLES, steps=DEFAULT_SAMPLING_STEPS, seed=0)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    metrics: dict[str, Any] = {
        "model": DEMO_UNET_NAME,
        "data": data.name,
        "data_digest": data.digest,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "seed": seed,
        "steps": result.steps_done,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "ema_decay": config.ema_decay,
        "train_seconds": round(train_seconds, 1),
        "holdout_eps_loss_init": round(result.holdout_loss_before, 3),
        "holdout_eps_loss": round(result.holdout_loss_after, 3),
        "sampler": f"DDIM {DEFAULT_SAMPLING_STEPS} steps, eta 0, seed 0",
        "fd_samples": QUALITY_SAMPLES,
        "fd_samples_vs_test": round(digits_fd(samples, data.test), 3),
        "fd_holdout_vs_test": round(digits_fd(data.holdout, data.test), 3),
        "fd_noise_vs_test": round(digits_fd(noise, data.test), 3),
        "fd_kind": "digits_resnet penultimate features (not Inception FID)",
        "params": sum(p.numel() for p in result.unet.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "file_bytes": sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file()),
    }
    if metrics_path is not None:
        _merge_metrics(Path(metrics_path), {DEMO_UNET_NAME: metrics})
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.families.unet.demo [--steps N] [--seed S] [--out DIR] [--threads T]``."""
    parser = argparse.ArgumentParser(
        prog="python -m core.families.unet.demo",
        description="Train the shipped weights of the digits_unet demo diffusion model.",
    )
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, data order, noise")
    parser.add_argument("--out", type=Path, default=DEMO_UNET_DIR, help="diffusers folder")
    parser.add_argument(
        "--metrics", type=Path, default=DEMO_METRICS_PATH, help="metrics.json to update"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # train_seconds in metrics.json are for this many

    def report(update: UNetFinetuneProgress) -> None:
        if update.holdout_loss is not None:
            print(
                f"step {update.step}/{update.steps}  train {update.train_loss:.4f}  "
                f"holdout {update.holdout_loss:.2f}  {update.elapsed_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    try:
        metrics = train_demo_unet(
            args.out, steps=args.steps, seed=args.seed, progress=report, metrics_path=args.metrics
        )
    except LayerMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True), flush=True)
    return 0


def _merge_metrics(path: Path, entries: dict[str, Any]) -> None:
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**previous, **entries}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
