"""Datasets: the bundled digits demo task, image folders and CIFAR-10 python folders.

Every dataset comes as three seeded, disjoint splits (DESIGN.md, LAYERMERGE.md §4):

- ``finetune``: what importance estimation and finetuning train on;
- ``holdout``: what importance estimation evaluates on (never trained on);
- ``test``: what the final accuracy is reported on.

The splits are drawn from the *original* images before any augmentation, so no test image is an
augmented copy of a training image. A ``--data SPEC`` string names the dataset:

- ``digits``: scikit-learn's bundled 8x8 digits (no download) made into a task where depth matters;
- ``folder:PATH``: a torchvision ``ImageFolder`` root (class subfolders), optionally split into
  ``train/`` and ``val/`` (or ``test/``) subfolders;
- ``cifar10:PATH``: a CIFAR-10 python-batch folder as torchvision downloads it (never downloaded).

Example:
    >>> splits = load_data("digits", seed=0)
    >>> image, label = splits.test[0]
    >>> image.shape
    torch.Size([3, 32, 32])
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from core.errors import DataError

__all__ = [
    "DataSpec",
    "DataSplits",
    "DATA_KINDS",
    "DIGITS_TRAIN_COPIES",
    "parse_data_spec",
    "load_data",
    "digits_arrays",
]

DATA_KINDS = ("digits", "folder", "cifar10")
DATA_VERSION = 1  # bump when a split or augmentation recipe changes: it invalidates cached tables

HOLDOUT_FRACTION = 0.2  # of all images (of the train images where a test split is given)
TEST_FRACTION = 0.2  # of all images, where the dataset has no test split of its own

# The digits demo task. On plain 8x8 digits a linear model already scores 96%, so every
# compression would look free; these transforms make depth matter (issue 3, item 4).
DIGITS_SIZE = 32  # side of the upscaled images
DIGITS_TRAIN_COPIES = 6  # augmented versions of each finetune image (holdout and test: one each)
DIGITS_MAX_ROTATION_DEG = 30.0
DIGITS_SCALE_RANGE = (0.75, 1.25)
DIGITS_MAX_SHIFT_PX = 4.0  # in pixels of the 32x32 image
DIGITS_NOISE_STD = 0.2  # Gaussian pixel noise on the [0, 1] image, clamped back to [0, 1]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
FOLDER_INPUT_SIZE = 224  # the torchvision models' resolution
FOLDER_TRAIN_NAMES = ("train",)
FOLDER_TEST_NAMES = ("val", "test")

# Globals a CIFAR-10 batch pickle may name: what numpy arrays need, and nothing else. Anything else means the
# file is not a CIFAR batch, and unpickling it could run arbitrary code.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    # Python 3 writes bytes as _codecs.encode(text, "latin1") under protocol 2 (torch's
    # weights_only unpickler allows it for the same reason): it only encodes a string.
    ("_codecs", "encode"): ("_codecs", "encode"),
}


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` string: the dataset kind and, for files on disk, its path."""

    kind: str  # one of DATA_KINDS
    path: Path | None = None  # absolute; None for "digits"

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class DataSplits:
    """A dataset's three disjoint splits and what a model needs to know about them.

    Each split yields ``(image, label)`` with ``image`` a float tensor of shape
    ``(channels, input_size, input_size)``, normalised with ``mean``/``std``. The ``*_sources``
    fields give, for each row of a split, the index of the original image it was made from (digits:
    scikit-learn's order; CIFAR-10: the five train batches then the test batch; folders: files in
    sorted order, ``train/`` before ``val/``), so disjointness can be checked, not just trusted.
    """

    name: str  # the canonical spec, e.g. "digits" or "folder:/abs/path"
    finetune: Dataset
    holdout: Dataset
    test: Dataset
    num_classes: int
    input_size: int
    channels: int
    digest: str  # content digest of spec, seed, sizes and recipe: part of table cache keys
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    finetune_sources: tuple[int, ...]
    holdout_sources: tuple[int, ...]
    test_sources: tuple[int, ...]

    @property
    def sizes(self) -> dict[str, int]:
        """Number of rows in each split (augmented copies counted)."""
        return {
            "finetune": len(self.finetune_sources),
            "holdout": len(self.holdout_sources),
            "test": len(self.test_sources),
        }


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a ``--data`` string into a :class:`DataSpec`.

    Only the syntax is checked here; whether the path holds a usable dataset is checked by
    :func:`load_data`, which reads it.

    Args:
        spec: ``"digits"``, ``"folder:PATH"`` or ``"cifar10:PATH"``.

    Returns:
        The kind and, for files on disk, the absolute path.

    Raises:
        DataError: the string names no known kind, or a path is missing or given to ``digits``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be a non-empty string, got {spec!r}; {_SPEC_HELP}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data spec {spec!r}; {_SPEC_HELP}")
    if kind == "digits":
        if sep:
            raise DataError(f"data spec {spec!r}: 'digits' takes no path; {_SPEC_HELP}")
        return DataSpec(kind="digits")
    if not rest.strip():
        raise DataError(f"data spec {spec!r} has no path; write '{kind}:PATH'")
    return DataSpec(kind=kind, path=Path(rest.strip()).expanduser().resolve())


def load_data(spec: str | DataSpec, *, input_size: int | None = None, seed: int = 0) -> DataSplits:
    """Load a dataset as seeded, disjoint finetune/holdout/test splits.

    Splits are made on the original images before augmentation, and the same spec, size and seed
    always give the same splits (and, for digits, the same augmented pixels).

    Args:
        spec: a ``--data`` string or a parsed :class:`DataSpec`.
        input_size: side of the square images models see; defaults to 32 for digits and CIFAR-10
            and 224 for image folders.
        seed: seeds the split and the digits augmentation.

    Returns:
        The three splits with class count, image size, channels and a cache digest.

    Raises:
        DataError: a bad spec, a missing or empty folder, or files that are not the named format.

    Example:
        >>> splits = load_data("digits")
        >>> splits.num_classes, splits.input_size, splits.channels
        (10, 32, 3)
    """
    parsed = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 8
    ):
        raise DataError(f"input size must be an integer of at least 8, got {input_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if parsed.kind == "digits":
        return _load_digits(input_size or DIGITS_SIZE, seed)
    if parsed.path is None:
        raise DataError(f"data spec {str(parsed)!r} has no path")
    if parsed.kind == "cifar10":
        return _load_cifar10(parsed.path, input_size or 32, seed)
    return _load_folder(parsed.path, input_size or FOLDER_INPUT_SIZE, seed)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 original 8x8 digits in [0, 1] and their labels, as scikit-learn ships them.

    Returns:
        ``images`` of shape (1797, 8, 8), float32, and ``labels`` of shape (1797,), int64.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # sklearn stores 0..16
    return images, bunch.target.astype(np.int64)


_SPEC_HELP = "use 'digits', 'folder:PATH' (an ImageFolder root) or 'cifar10:PATH'"


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=4)
def _load_digits(input_size: int, seed: int) -> DataSplits:
    # Cached: each importance worker and every app page asks for the same few seconds of work.
    images, labels = digits_arrays()
    count = len(labels)
    finetune_idx, holdout_idx, test_idx = _split_indices(count, seed)

    finetune_src = np.repeat(finetune_idx, DIGITS_TRAIN_COPIES)
    grey = {
        "finetune": _augment_digits(images[finetune_src], input_size, _generator(seed, 1)),
        "holdout": _augment_digits(images[holdout_idx], input_size, _generator(seed, 2)),
        "test": _augment_digits(images[test_idx], input_size, _generator(seed, 3)),
    }
    # Normalise with the finetune split's statistics only: holdout and test stay unseen.
    mean = float(grey["finetune"].mean())
    std = float(grey["finetune"].std())
    sources = {"finetune": finetune_src, "holdout": holdout_idx, "test": test_idx}
    datasets = {}
    for split, pixels in grey.items():
        # (N, 1, S, S) -> (N, 3, S, S) as a view: torchvision architectures expect three
        # channels, and the repeat costs no memory.
        normalised = ((pixels - mean) / std).expand(-1, 3, -1, -1)
        datasets[split] = TensorDataset(normalised, torch.from_numpy(labels[sources[split]]))
    digest = _digest(
        {
            "spec": "digits",
            "seed": seed,
            "input_size": input_size,
            "copies": DIGITS_TRAIN_COPIES,
            "rotation": DIGITS_MAX_ROTATION_DEG,
            "scale": DIGITS_SCALE_RANGE,
            "shift": DIGITS_MAX_SHIFT_PX,
            "noise": DIGITS_NOISE_STD,
            "sizes": [len(finetune_src), len(holdout_idx), len(test_idx)],
        }
    )
    return DataSplits(
        name="digits",
        finetune=datasets["finetune"],
        holdout=datasets["holdout"],
        test=datasets["test"],
        num_classes=10,
        input_size=input_size,
        channels=3,
        digest=digest,
        class_names=tuple(str(d) for d in range(10)),
        mean=(mean,) * 3,
        std=(std,) * 3,
        finetune_sources=tuple(int(i) for i in finetune_src),
        holdout_sources=tuple(int(i) for i in holdout_idx),
        test_sources=tuple(int(i) for i in test_idx),
    )


def _augment_digits(images: np.ndarray, size: int, generator: torch.Generator) -> torch.Tensor:
    """Upscale 8x8 digits to ``size`` with a random affine transform, then add pixel noise.

    Upscaling and the affine transform are one bilinear ``grid_sample`` from the 8x8 original, so
    the digits are interpolated once, not blurred twice.

    Returns:
        A (N, 1, size, size) float tensor in [0, 1].
    """
    count = len(images)
    source = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    angle = (torch.rand(count, generator=generator) * 2 - 1) * math.radians(DIGITS_MAX_ROTATION_DEG)
    low, high = DIGITS_SCALE_RANGE
    scale = low + torch.rand(count, generator=generator) * (high - low)
    # Shifts in normalised coordinates: the image spans [-1, 1], so one pixel is 2 / size.
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * (2 * DIGITS_MAX_SHIFT_PX / size)
    # affine_grid maps output coordinates to input ones: the inverse of "scale, rotate, shift".
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], dim=1),
            torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta, [count, 1, size, size], align_corners=False)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noise = torch.randn(warped.shape, generator=generator) * DIGITS_NOISE_STD
    return (warped + noise).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(path: Path, input_size: int, seed: int) -> DataSplits:
    folder = _cifar10_folder(path)
    train_images, train_labels = [], []
    for name in CIFAR10_TRAIN_BATCHES:
        images, labels = _read_cifar_batch(folder / name)
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    class_names = _read_cifar_meta(folder / "batches.meta")
    images = np.concatenate([*train_images, test_images])  # (N, 32, 32, 3) uint8
    labels = np.concatenate([*train_labels, test_labels])
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise DataError(
            f"{folder}: labels range over {int(labels.min())}..{int(labels.max())} but "
            f"batches.meta names {len(class_names)} classes"
        )
    train_count = sum(len(x) for x in train_labels)
    # The official test batch is the test split; holdout is drawn from the train batches.
    finetune_idx, holdout_idx = _split_two(np.arange(train_count), HOLDOUT_FRACTION, seed)
    test_idx = np.arange(train_count, len(labels))
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, 3, 32, 32)
    targets = torch.from_numpy(labels.astype(np.int64))
    train_transform, eval_transform = _cifar_transforms(input_size)
    sizes = {
        name: (folder / name).stat().st_size
        for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    }
    digest = _digest(
        {
            "spec": f"cifar10:{folder}",
            "seed": seed,
            "input_size": input_size,
            "files": sizes,
            "splits": [len(finetune_idx), len(holdout_idx), len(test_idx)],
        }
    )
    return DataSplits(
        name=f"cifar10:{path}",
        finetune=_TensorImages(pixels, targets, finetune_idx, train_transform),
        holdout=_TensorImages(pixels, targets, holdout_idx, eval_transform),
        test=_TensorImages(pixels, targets, test_idx, eval_transform),
        num_classes=len(class_names),
        input_size=input_size,
        channels=3,
        digest=digest,
        class_names=class_names,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        finetune_sources=tuple(int(i) for i in finetune_idx),
        holdout_sources=tuple(int(i) for i in holdout_idx),
        test_sources=tuple(int(i) for i in test_idx),
    )


def _cifar10_folder(path: Path) -> Path:
    # Accept both the root torchvision is given and the batch folder inside it.
    if not path.exists():
        raise DataError(f"CIFAR-10 folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"CIFAR-10 path {path} is not a folder")
    for folder in (path / CIFAR10_FOLDER, path):
        if (folder / CIFAR10_TEST_BATCH).is_file():
            missing = [
                name
                for name in (*CIFAR10_TRAIN_BATCHES, "batches.meta")
                if not (folder / name).is_file()
            ]
            if missing:
                raise DataError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}")
            return folder
    raise DataError(
        f"{path} is not a CIFAR-10 python folder: expected {CIFAR10_FOLDER}/ with data_batch_1..5, "
        "test_batch and batches.meta (this app never downloads it)"
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _safe_unpickle(path)
    data = batch.get("data", batch.get(b"data")) if isinstance(batch, dict) else None
    labels = batch.get("labels", batch.get(b"labels")) if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 batch: it lacks 'data' and 'labels'")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    labels_array = np.asarray(labels)
    if labels_array.shape != (len(data),) or not np.issubdtype(labels_array.dtype, np.integer):
        raise DataError(f"{path}: expected {len(data)} integer labels, got {labels_array.shape}")
    # CIFAR rows are channel-major: 1024 red, 1024 green, 1024 blue values.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels_array.astype(np.int64)


def _read_cifar_meta(path: Path) -> tuple[str, ...]:
    meta = _safe_unpickle(path)
    names = meta.get("label_names", meta.get(b"label_names")) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise DataError(f"{path} is not CIFAR-10 batches.meta: it lacks 'label_names'")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _safe_unpickle(path: Path) -> Any:
    """Read a CIFAR pickle allowing only numpy arrays: a foreign pickle cannot run code.

    torchvision's own ``CIFAR10`` calls ``pickle.load`` (after an MD5 check that also rejects any
    re-packed or reduced copy); this reader accepts the same files without trusting them.
    """
    try:
        with path.open("rb") as handle:
            return _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch file: {exc}") from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} cannot be read as a CIFAR-10 batch: {exc}") from exc


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _SAFE_PICKLE_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays)")
        return getattr(importlib.import_module(target[0]), target[1])


def _cifar_transforms(input_size: int) -> tuple[Callable, Callable]:
    from torchvision.transforms import v2

    resize = [] if input_size == 32 else [v2.Resize(input_size, antialias=True)]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
    train = v2.Compose(
        [*resize, v2.RandomCrop(input_size, padding=input_size // 8), v2.RandomHorizontalFlip()]
        + to_float
    )
    return train, v2.Compose(resize + to_float)


class _TensorImages(Dataset):
    """Rows ``indices`` of a uint8 image tensor, each passed through ``transform``."""

    def __init__(
        self, pixels: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, transform: Callable
    ) -> None:
        self.pixels = pixels
        self.labels = labels
        self.indices = indices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        index = int(self.indices[item])
        return self.transform(self.pixels[index]), int(self.labels[index])


# --------------------------------------------------------------------------- image folders


def _load_folder(path: Path, input_size: int, seed: int) -> DataSplits:
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"image folder path {path} is not a folder")
    train_dir = next((path / n for n in FOLDER_TRAIN_NAMES if (path / n).is_dir()), None)
    test_dirs = [path / n for n in FOLDER_TEST_NAMES if (path / n).is_dir()]
    if train_dir is not None and test_dirs:
        parts = [_image_folder(train_dir), *(_image_folder(d) for d in test_dirs)]
        for part, folder in zip(parts[1:], test_dirs, strict=True):
            if part.classes != parts[0].classes:
                raise DataError(
                    f"{folder} has classes {part.classes} but {train_dir} has {parts[0].classes}; "
                    "the split folders must hold the same class subfolders"
                )
        offsets = np.cumsum([0] + [len(p) for p in parts])
        train_idx = np.arange(len(parts[0]))
        if len(parts) == 3:  # train/, val/ and test/: use them as they are
            finetune_idx, holdout_idx = train_idx, np.arange(offsets[1], offsets[2])
            test_idx = np.arange(offsets[2], offsets[3])
        else:
            finetune_idx, holdout_idx = _split_two(train_idx, HOLDOUT_FRACTION, seed)
            test_idx = np.arange(offsets[1], offsets[2])
    else:
        parts = [_image_folder(path)]
        offsets = np.array([0, len(parts[0])])
        finetune_idx, holdout_idx, test_idx = _split_indices(len(parts[0]), seed)
    for split, indices in (
        ("finetune", finetune_idx),
        ("holdout", holdout_idx),
        ("test", test_idx),
    ):
        if len(indices) == 0:
            raise DataError(f"image folder {path} has too few images: the {split} split is empty")
    samples = [sample for part in parts for sample in part.samples]
    loader = parts[0].loader
    train_transform, eval_transform = _folder_transforms(input_size)
    files = [(str(Path(f).relative_to(path)), Path(f).stat().st_size) for f, _ in samples]
    digest = _digest(
        {
            "spec": f"folder:{path}",
            "seed": seed,
            "input_size": input_size,
            "classes": parts[0].classes,
            "files": files,
            "splits": [len(finetune_idx), len(holdout_idx), len(test_idx)],
        }
    )
    return DataSplits(
        name=f"folder:{path}",
        finetune=_FileImages(samples, finetune_idx, loader, train_transform),
        holdout=_FileImages(samples, holdout_idx, loader, eval_transform),
        test=_FileImages(samples, test_idx, loader, eval_transform),
        num_classes=len(parts[0].classes),
        input_size=input_size,
        channels=3,
        digest=digest,
        class_names=tuple(parts[0].classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        finetune_sources=tuple(int(i) for i in finetune_idx),
        holdout_sources=tuple(int(i) for i in holdout_idx),
        test_sources=tuple(int(i) for i in test_idx),
    )


def _image_folder(path: Path) -> Any:
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path))
    except FileNotFoundError as exc:
        # ImageFolder says "Couldn't find any class folder" or "Found no valid file for the
        # classes ..."; both mean the folder cannot be used as it is.
        raise DataError(
            f"image folder {path} cannot be used: {exc} (expected one subfolder of images per class)"
        ) from exc
    except OSError as exc:
        raise DataError(f"image folder {path} cannot be read: {exc}") from exc


def _folder_transforms(input_size: int) -> tuple[Callable, Callable]:
    from torchvision.transforms import v2

    to_float = [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    train = v2.Compose(
        [v2.RandomResizedCrop(input_size, antialias=True), v2.RandomHorizontalFlip(), *to_float]
    )
    # The usual ImageNet evaluation: resize to 256/224 of the size, then centre-crop.
    evaluate = v2.Compose(
        [
            v2.Resize(round(input_size * 256 / 224), antialias=True),
            v2.CenterCrop(input_size),
            *to_float,
        ]
    )
    return train, evaluate


class _FileImages(Dataset):
    """Rows ``indices`` of an ImageFolder's ``(file, class)`` samples, loaded and transformed."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        indices: np.ndarray,
        loader: Callable[[str], Any],
        transform: Callable,
    ) -> None:
        self.samples = list(samples)
        self.indices = indices
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        file, label = self.samples[int(self.indices[item])]
        try:
            image = self.loader(file)
        except OSError as exc:
            raise DataError(f"image {file} cannot be read: {exc}") from exc
        return self.transform(image), label


# --------------------------------------------------------------------------- splits and digests


def _split_indices(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded, disjoint finetune/holdout/test indices over ``count`` original images."""
    order = torch.randperm(count, generator=_generator(seed, 0)).numpy()
    test_count = round(count * TEST_FRACTION)
    holdout_count = round(count * HOLDOUT_FRACTION)
    test = np.sort(order[:test_count])
    holdout = np.sort(order[test_count : test_count + holdout_count])
    finetune = np.sort(order[test_count + holdout_count :])
    return finetune, holdout, test


def _split_two(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``indices`` into (rest, a ``fraction`` of them)."""
    order = torch.randperm(len(indices), generator=_generator(seed, 0)).numpy()
    taken = round(len(indices) * fraction)
    return np.sort(indices[order[taken:]]), np.sort(indices[order[:taken]])


def _generator(seed: int, stream: int) -> torch.Generator:
    # Independent streams per use, so e.g. the number of train copies never changes test pixels.
    derived = int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(derived)


def _digest(fields: dict[str, Any]) -> str:
    text = json.dumps({"version": DATA_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
