"""The command that trains the digits demo models' shipped weights.

The architectures live in :mod:`core.demo_architectures` (the registry builds them from there, so
this module may use the registry without an import cycle).

Train and ship their weights (about a minute each on a 2-core CPU)::

    python -m core.demo_models train [--out cached_tables/demo_weights]

This writes ``digits_resnet.pt`` and ``digits_mobilenet.pt`` (plain state_dicts) and
``metrics.json`` with their test accuracy beside a linear model's on the same task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core.demo_architectures import DigitsMobileNet, DigitsResNet
from core.errors import LayerMergeError

__all__ = [
    "DigitsResNet",
    "DigitsMobileNet",
    "DEMO_MODELS",
    "DEFAULT_EPOCHS",
    "train_demo_model",
    "linear_baseline",
    "evaluate",
    "main",
]

DEMO_MODELS = ("digits_resnet", "digits_mobilenet")
DEFAULT_EPOCHS = {"digits_resnet": 5, "digits_mobilenet": 4}  # ~1 min each on 2 CPU threads
DATA_SEED = 0  # the split the shipped weights are trained and tested on: the default one
BATCH_SIZE = 128
LEARNING_RATE = 0.1  # SGD with Nesterov momentum, one-cycle: fast convergence in few epochs
WEIGHT_DECAY = 5e-4
LINEAR_C_GRID = (0.001, 0.01, 0.1)  # the linear baseline's regularisation, chosen on holdout


def train_demo_model(
    name: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    out_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a digits demo model from seeded initial weights and report its test accuracy.

    Trains on the digits finetune split (seed :data:`DATA_SEED`, the split every user of the
    demo gets), so the test split the accuracy is measured on was never seen.

    Args:
        name: ``digits_resnet`` or ``digits_mobilenet``.
        epochs: passes over the finetune split; defaults to :data:`DEFAULT_EPOCHS`.
        seed: seeds the initial weights and the batch order.
        out_path: where to save the trained state_dict (``torch.save(model.state_dict())``), or
            None to save nothing.
        progress: called with one line per epoch (``print`` in the command line).

    Returns:
        JSON-able metrics: test and holdout accuracy (%), test loss, training seconds, epochs,
        parameter count, threads and, when saved, the file's size.

    Raises:
        LayerMergeError: ``name`` is not a demo model, or ``epochs`` is not positive.

    Note:
        Sets ``torch.set_flush_denormal(True)`` for the process (torch offers no getter to
        restore it); it only affects numbers below ~1e-38.
    """
    from core.data import load_data
    from core.models import get_model_info

    if name not in DEMO_MODELS:
        raise LayerMergeError(f"unknown demo model {name!r}; choose one of {DEMO_MODELS}")
    epochs = DEFAULT_EPOCHS[name] if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise LayerMergeError(f"epochs must be a positive integer, got {epochs!r}")
    data = load_data("digits", seed=DATA_SEED)
    # Denormal floats appear in the gradients after a few steps and slow CPU training about
    # tenfold (measured: 2.4 s instead of 0.19 s a batch); flushing them changes no result.
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    model = get_model_info(name).builder(width=1.0, num_classes=data.num_classes)
    # channels_last is about twice as fast for depthwise convs on CPU; the saved state_dict is
    # converted back, so it loads into an ordinary model.
    model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        data.finetune,
        batch_size=BATCH_SIZE,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=LEARNING_RATE,
        momentum=0.9,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=epochs * len(loader), pct_start=0.2
    )
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for images, labels in loader:
            images = images.contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(labels)
            seen += len(labels)
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(
                f"{name} epoch {epoch + 1}/{epochs}: loss {total_loss / seen:.4f} ({elapsed:.0f} s)"
            )
    train_seconds = time.perf_counter() - started
    model = model.to(memory_format=torch.contiguous_format).eval()
    test_accuracy, test_loss = evaluate(model, data.test)
    holdout_accuracy, _ = evaluate(model, data.holdout)
    metrics: dict[str, Any] = {
        "model": name,
        "epochs": epochs,
        "seed": seed,
        "data": data.name,
        "data_digest": data.digest,
        "finetune_images": len(data.finetune_sources),
        "test_images": len(data.test_sources),
        "test_accuracy": round(test_accuracy, 2),
        "holdout_accuracy": round(holdout_accuracy, 2),
        "test_loss": round(test_loss, 4),
        "train_seconds": round(train_seconds, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        # Other work on the machine slows training: the load shows how honest train_seconds is.
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(out_path)  # never leave half a weights file behind
        metrics["file_bytes"] = out_path.stat().st_size
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 512) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` in eval mode over ``dataset``."""
    was_training = model.training
    model.eval()
    correct, total_loss, count = 0, 0.0, 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        logits = model(images)
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    model.train(was_training)
    if count == 0:
        raise LayerMergeError("cannot evaluate on an empty dataset")
    return 100.0 * correct / count, total_loss / count


def linear_baseline(*, seed: int = DATA_SEED) -> dict[str, Any]:
    """Logistic regression on raw pixels of the digits task: how far depth gets beyond linear.

    The regularisation strength is chosen on the holdout split among :data:`LINEAR_C_GRID`, so the
    baseline is a fair one, and the accuracy is reported on the test split.

    Returns:
        Test and holdout accuracy (%), the chosen ``C`` and the fitting time.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from core.data import load_data

    data = load_data("digits", seed=seed)
    features = {
        split: _grey_pixels(getattr(data, split)) for split in ("finetune", "holdout", "test")
    }
    started = time.perf_counter()
    best: tuple[float, float, Any] | None = None
    for c_value in LINEAR_C_GRID:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # 200 iterations are plenty
            classifier = LogisticRegression(C=c_value, max_iter=200).fit(*features["finetune"])
        holdout = 100.0 * classifier.score(*features["holdout"])
        if best is None or holdout > best[0]:
            best = (holdout, c_value, classifier)
    holdout_accuracy, c_value, classifier = best  # type: ignore[misc]
    return {
        "model": "logistic_regression_raw_pixels",
        "C": c_value,
        "test_accuracy": round(100.0 * classifier.score(*features["test"]), 2),
        "holdout_accuracy": round(holdout_accuracy, 2),
        "fit_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.demo_models train``: train both demo models and write their weights.

    Returns:
        The exit code: 0, or 2 with one line on stderr for bad input.
    """
    from core.models import DEMO_WEIGHTS_DIR

    parser = argparse.ArgumentParser(
        prog="python -m core.demo_models", description="Train the digits demo models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the demo models and save their weights")
    train.add_argument("--out", type=Path, default=DEMO_WEIGHTS_DIR, help="output folder")
    train.add_argument("--models", nargs="+", choices=DEMO_MODELS, default=list(DEMO_MODELS))
    train.add_argument("--epochs", type=int, default=None, help="epochs (default: per model)")
    train.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    try:
        torch.set_num_threads(args.threads)  # timings in metrics.json are for this many threads
        results: dict[str, Any] = {}
        for name in args.models:
            print(f"training {name} ...", flush=True)
            results[name] = train_demo_model(
                name,
                epochs=args.epochs,
                seed=args.seed,
                out_path=args.out / f"{name}.pt",
                progress=lambda line: print(line, flush=True),
            )
            print(json.dumps(results[name]), flush=True)
        print("fitting the linear baseline ...", flush=True)
        results["linear_baseline"] = linear_baseline()
        print(json.dumps(results["linear_baseline"]), flush=True)
    except LayerMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics_path = args.out / "metrics.json"
    previous = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics_path.write_text(json.dumps({**previous, **results}, indent=2, sort_keys=True) + "\n")
    print(f"wrote {metrics_path}")
    return 0


def _grey_pixels(dataset: Dataset) -> tuple[Any, Any]:
    if not isinstance(dataset, TensorDataset):
        raise LayerMergeError("the linear baseline needs the digits TensorDataset")
    images, labels = dataset.tensors
    return images[:, 0].reshape(len(images), -1).numpy(), labels.numpy()  # one grey channel


if __name__ == "__main__":
    sys.exit(main())
