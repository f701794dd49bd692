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

Preprocessing is the user's, spelled as comma-separated options after the path
(``folder:PATH,norm=cifar,resize=none``), because a model only scores what it was trained to
score on images prepared its way:

- ``norm=imagenet`` | ``norm=cifar`` | ``norm=none`` | ``mean=M/M/M,std=S/S/S``: the per-channel
  normalisation (one or three values each; defaults: ``imagenet`` for folders, ``cifar`` for
  CIFAR-10);
- ``resize=none`` (the default: images are used at their own size) | ``resize=N``: the shorter
  side resized to N, then a centre N x N crop;
- ``crop=N``: a centre N x N crop (after the resize, if any): ``resize=256,crop=224`` is the
  ImageNet evaluation.

The input size then follows the data (CIFAR-10: 32; a folder: its images' size, which must be
one square size unless ``resize`` or ``crop`` makes it so). A caller that needs another size (the
model states one) gets a :class:`~core.errors.DataError` naming the option to add, never a silent
resize. :attr:`DataSplits.name` is the canonical spec with every option spelled out, so what was
used can be stored and read back. ``digits`` takes no options: its normalisation is computed from
its own finetune split.

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
from dataclasses import dataclass, field
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
    "NORMALISATIONS",
    "DIGITS_TRAIN_COPIES",
    "parse_data_spec",
    "load_data",
    "data_input_size",
    "check_above_chance",
    "data_record",
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
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar": (CIFAR10_MEAN, CIFAR10_STD),
    "none": None,  # pixels in [0, 1], as ToTensor gives them
}
DEFAULT_NORM = {"folder": "imagenet", "cifar10": "cifar"}
CIFAR10_SIZE = 32
_OPTIONS = ("norm", "mean", "std", "resize", "crop")
_MAX_SIDE = 4096
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
    """A parsed ``--data`` string: the dataset kind, its path, and how images are prepared.

    ``norm`` is a name of :data:`NORMALISATIONS` or ``"custom"`` (with ``mean`` and ``std``);
    None means the kind's default (:data:`DEFAULT_NORM`). ``resize`` and ``crop`` are sides in
    pixels, None for "as the images are". ``str()`` gives the canonical spelling, every option
    written out, which :func:`parse_data_spec` reads back to an equal spec.
    """

    kind: str  # one of DATA_KINDS
    path: Path | None = None  # absolute; None for "digits"
    norm: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    crop: int | None = None

    @property
    def normalisation(self) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
        """The normalisation in effect: ``(name, mean, std)``; mean and std None for ``none``."""
        name = self.norm or DEFAULT_NORM.get(self.kind, "none")
        if name == "custom":
            return name, self.mean, self.std
        stats = NORMALISATIONS[name]
        return (name, None, None) if stats is None else (name, *stats)

    @property
    def output_size(self) -> int | None:
        """The side the preprocessing makes (crop, else resize); None: the images' own size."""
        return self.crop or self.resize

    def __str__(self) -> str:
        if self.kind == "digits":
            return "digits"
        name, mean, std = self.normalisation
        parts = [f"{self.kind}:{self.path}"]
        if name == "custom":
            parts.append(f"mean={_floats(mean)},std={_floats(std)}")
        else:
            parts.append(f"norm={name}")
        parts.append(f"resize={self.resize or 'none'}")
        if self.crop is not None:
            parts.append(f"crop={self.crop}")
        return ",".join(parts)


@dataclass(frozen=True)
class DataSplits:
    """A dataset's three disjoint splits and what a model needs to know about them.

    Each split yields ``(image, label)`` with ``image`` a float tensor of shape
    ``(channels, input_size, input_size)``, normalised with ``mean``/``std``. The ``*_sources``
    fields give, for each row of a split, the index of the original image it was made from (digits:
    scikit-learn's order; CIFAR-10: the five train batches then the test batch; folders: files in
    sorted order, ``train/`` before ``val/``), so disjointness can be checked, not just trusted.
    """

    name: str  # the canonical spec: "digits", "folder:/abs/path,norm=imagenet,resize=none"
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
    # how images were prepared, JSON-able, for meta.json and checkpoints: norm (a name, "custom"
    # or "digits"), mean, std, resize, crop and the resulting input_size
    preprocessing: dict[str, Any] = field(default_factory=dict)

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
        spec: ``"digits"``, ``"folder:PATH"`` or ``"cifar10:PATH"``, the last two optionally
            followed by ``,norm=...``, ``,mean=.../...,std=.../...``, ``,resize=...`` and
            ``,crop=...`` (see the module docstring).

    Returns:
        The kind, the absolute path and the preprocessing options.

    Raises:
        DataError: the string names no known kind, a path is missing or given to ``digits``, or
            an option is unknown, repeated or has a bad value.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data spec must be a non-empty string, got {spec!r}; {_SPEC_HELP}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise DataError(f"unknown data spec {spec!r}; {_SPEC_HELP}")
    if kind == "digits":
        if sep:
            raise DataError(f"data spec {spec!r}: 'digits' takes no path or options; {_SPEC_HELP}")
        return DataSpec(kind="digits")
    # Options are trailing ",key=value" parts with a known key: a path may hold commas.
    parts = rest.split(",")
    options: dict[str, str] = {}
    while len(parts) > 1 and "=" in parts[-1]:
        key, _, value = parts[-1].partition("=")
        key = key.strip().lower()
        if key not in _OPTIONS:
            raise DataError(
                f"data spec {spec!r}: unknown option {key!r}; options are {', '.join(_OPTIONS)} "
                f"({_OPTION_HELP})"
            )
        if key in options:
            raise DataError(f"data spec {spec!r}: option {key!r} is given twice")
        options[key] = value.strip()
        parts.pop()
    path = ",".join(parts).strip()
    if not path:
        raise DataError(f"data spec {spec!r} has no path; write '{kind}:PATH'")
    # The default norm is written in, so a spec and its canonical spelling parse to equal specs.
    fields = {"norm": DEFAULT_NORM[kind], **_parse_options(spec, options)}
    return DataSpec(kind=kind, path=Path(path).expanduser().resolve(), **fields)


def data_input_size(spec: str | DataSpec) -> int:
    """The input size the data gives: what a model that states none should be traced at.

    ``digits`` and ``cifar10`` give 32 unless resized or cropped; a folder gives ``crop`` or
    ``resize`` when set, else its images' common side.

    Raises:
        DataError: a bad spec, or a folder whose images differ in size or are not square (the
            message names the ``resize``/``crop`` option that fixes it).
    """
    parsed = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if parsed.kind == "digits":
        return DIGITS_SIZE
    if parsed.output_size is not None:
        return parsed.output_size
    if parsed.kind == "cifar10":
        return CIFAR10_SIZE
    if parsed.path is None:
        raise DataError(f"data spec {str(parsed)!r} has no path")
    parts = _folder_parts(parsed.path)
    return _common_image_side([file for part in parts for file, _ in part.samples], parsed.path)


def check_above_chance(
    accuracy: float, num_classes: int, *, count: int | None = None
) -> str | None:
    """A warning when a model scores no better than guessing: its preprocessing probably differs.

    A trained model at chance level on held-out data almost always means its inputs are not
    prepared the way it was trained (another normalisation, size or resize), not that it is bad.
    With ``count`` images evaluated, scores within two standard errors of chance count as chance.

    Args:
        accuracy: top-1 accuracy in percent (as ``core.finetune.evaluate`` reports it).
        num_classes: the number of classes (chance is ``100 / num_classes`` percent).
        count: how many images the accuracy was measured on, if known.

    Returns:
        None when the accuracy is clearly above chance, else one line saying what to check.

    Example:
        >>> check_above_chance(9.8, 10) is not None
        True
    """
    if num_classes < 2:
        return None
    chance = 100.0 / num_classes
    margin = 0.0
    if count:
        p = 1.0 / num_classes
        margin = 200.0 * math.sqrt(p * (1 - p) / count)  # two standard errors, in percent
    if accuracy > chance + margin:
        return None
    return (
        f"the original model scores {accuracy:.1f}% on held-out data, no better than chance "
        f"({chance:.1f}% for {num_classes} classes): its preprocessing or input size probably "
        "does not match how it was trained; check the --data options (norm=..., resize=..., "
        "crop=...) and --input-size"
    )


def data_record(data: Any) -> dict[str, Any]:
    """What a result made on ``data`` records of it (meta.json's ``data_spec``): the canonical
    ``--data`` spec, and how its images were prepared (normalisation name, mean, std, resize,
    crop, input size) where the data says (:attr:`DataSplits.preprocessing`)."""
    return {"spec": str(data.name), **dict(getattr(data, "preprocessing", None) or {})}


def load_data(spec: str | DataSpec, *, input_size: int | None = None, seed: int = 0) -> DataSplits:
    """Load a dataset as seeded, disjoint finetune/holdout/test splits.

    Splits are made on the original images before augmentation, and the same spec, size and seed
    always give the same splits (and, for digits, the same augmented pixels).

    Args:
        spec: a ``--data`` string or a parsed :class:`DataSpec`.
        input_size: side of the square images the model takes, or None to follow the data
            (:func:`data_input_size`). For CIFAR-10 and folders it must equal what the spec's
            preprocessing gives: images are never resized unless the spec says so. For digits
            it sets the upscaled size (default 32).
        seed: seeds the split and the digits augmentation.

    Returns:
        The three splits with class count, image size, channels, a cache digest, and the
        canonical spec (``name``) and ``preprocessing`` to store with results.

    Raises:
        DataError: a bad spec, a missing or empty folder, files that are not the named format,
            or an ``input_size`` the data does not give (naming the option to add).

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
        _check_size(parsed, CIFAR10_SIZE, input_size, "CIFAR-10 images are")
        return _load_cifar10(parsed, seed)
    return _load_folder(parsed, input_size, seed)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 original 8x8 digits in [0, 1] and their labels, as scikit-learn ships them.

    Returns:
        ``images`` of shape (1797, 8, 8), float32, and ``labels`` of shape (1797,), int64.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # sklearn stores 0..16
    return images, bunch.target.astype(np.int64)


_SPEC_HELP = (
    "use 'digits', 'folder:PATH' (an ImageFolder root) or 'cifar10:PATH', the last two with "
    "optional ',norm=imagenet|cifar|none', ',resize=none|N' and ',crop=N'"
)
_OPTION_HELP = (
    "norm=imagenet|cifar|none, or mean=M/M/M,std=S/S/S; resize=none|N (shorter side to N, then "
    "a centre N x N crop); crop=N (a centre crop)"
)


def _parse_options(spec: str, options: dict[str, str]) -> dict[str, Any]:
    """Check and convert ``--data`` options; the result fills :class:`DataSpec`'s fields."""
    result: dict[str, Any] = {}
    if "norm" in options and ("mean" in options or "std" in options):
        raise DataError(f"data spec {spec!r}: give either norm=... or mean=...,std=..., not both")
    if ("mean" in options) != ("std" in options):
        raise DataError(f"data spec {spec!r}: mean=... and std=... go together")
    if "norm" in options:
        norm = options["norm"].lower()
        if norm not in NORMALISATIONS:
            raise DataError(
                f"data spec {spec!r}: unknown norm {options['norm']!r}; use "
                f"{', '.join(NORMALISATIONS)}, or mean=M/M/M,std=S/S/S"
            )
        result["norm"] = norm
    if "mean" in options:
        mean = _parse_floats(spec, "mean", options["mean"])
        std = _parse_floats(spec, "std", options["std"])
        if len(mean) != len(std):
            raise DataError(f"data spec {spec!r}: mean and std need as many values")
        if any(v <= 0 for v in std):
            raise DataError(f"data spec {spec!r}: std values must be positive")
        result.update(norm="custom", mean=mean, std=std)
    if "resize" in options:
        value = options["resize"].lower()
        result["resize"] = None if value == "none" else _parse_side(spec, "resize", value)
    if "crop" in options:
        result["crop"] = _parse_side(spec, "crop", options["crop"])
    resize, crop = result.get("resize"), result.get("crop")
    if resize is not None and crop is not None and crop > resize:
        raise DataError(f"data spec {spec!r}: crop={crop} is larger than resize={resize}")
    return result


def _parse_floats(spec: str, key: str, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise DataError(
            f"data spec {spec!r}: {key}={text!r} must be 1 or 3 numbers separated by '/', "
            f"e.g. {key}=0.5/0.5/0.5"
        )
    return values * 3 if len(values) == 1 else values


def _parse_side(spec: str, key: str, text: str) -> int:
    if not text.isdigit() or not 8 <= int(text) <= _MAX_SIDE:
        raise DataError(
            f"data spec {spec!r}: {key}={text!r} must be a side in pixels from 8 to {_MAX_SIDE}"
            + (" or 'none'" if key == "resize" else "")
        )
    return int(text)


def _floats(values: tuple[float, ...] | None) -> str:
    return "/".join(f"{v:g}" for v in values or ())


def _check_size(parsed: DataSpec, native: int, input_size: int | None, what: str) -> int:
    """The side the data gives; a DataError naming the fix when the model wants another."""
    given = parsed.output_size or native
    if input_size is None or input_size == given:
        return given
    if parsed.output_size is None:
        fix = (
            f"add resize={input_size} to --data ({parsed.kind}:PATH,resize={input_size}) to "
            f"resize them, or give the model its data's size (--input-size {native})"
        )
        raise DataError(
            f"{what} {native}x{native} but the model takes {input_size}x{input_size}: {fix}"
        )
    raise DataError(
        f"--data {str(parsed)!r} makes {given}x{given} images but the model takes "
        f"{input_size}x{input_size}: change resize/crop to {input_size}, or --input-size to {given}"
    )


def _preprocessing(parsed: DataSpec, input_size: int) -> dict[str, Any]:
    name, mean, std = parsed.normalisation
    return {
        "norm": name,
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "resize": parsed.resize,
        "crop": parsed.crop,
        "input_size": input_size,
    }


def _to_float(parsed: DataSpec) -> list[Callable]:
    """uint8 image tensor -> float in [0, 1], normalised as the spec says."""
    from torchvision.transforms import v2

    _, mean, std = parsed.normalisation
    steps: list[Callable] = [v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        steps.append(v2.Normalize(list(mean), list(std)))
    return steps


def _transforms(parsed: DataSpec, size: int, *, pil: bool) -> tuple[Callable, Callable]:
    """(finetune, evaluation) transforms making ``size`` x ``size`` images as the spec says.

    Evaluation: the optional resize (shorter side) and centre crop, nothing else. Finetuning:
    at the images' own size, the CIFAR recipe (random crop with 1/8 padding, horizontal flip);
    when resized, the ImageNet recipe (RandomResizedCrop, horizontal flip).
    """
    from torchvision.transforms import v2

    first: list[Callable] = [v2.ToImage()] if pil else []
    geometry: list[Callable] = []
    if parsed.resize is not None:
        geometry.append(v2.Resize(parsed.resize, antialias=True))
    if parsed.output_size is not None:
        geometry.append(v2.CenterCrop(size))
    evaluate = v2.Compose([*first, *geometry, *_to_float(parsed)])
    if parsed.resize is not None:
        augment: list[Callable] = [v2.RandomResizedCrop(size, antialias=True)]
    else:
        crop = [v2.CenterCrop(parsed.crop)] if parsed.crop is not None else []
        augment = [*crop, v2.RandomCrop(size, padding=size // 8)]
    train = v2.Compose([*first, *augment, v2.RandomHorizontalFlip(), *_to_float(parsed)])
    return train, evaluate


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
        preprocessing={
            "norm": "digits",  # the finetune split's own statistics
            "mean": [mean] * 3,
            "std": [std] * 3,
            "resize": input_size,  # 8x8 originals upscaled
            "crop": None,
            "input_size": input_size,
        },
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


def _load_cifar10(parsed: DataSpec, seed: int) -> DataSplits:
    path = parsed.path
    assert path is not None  # checked by load_data
    input_size = parsed.output_size or CIFAR10_SIZE
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
    train_transform, eval_transform = _transforms(parsed, input_size, pil=False)
    sizes = {
        name: (folder / name).stat().st_size
        for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    }
    preprocessing = _preprocessing(parsed, input_size)
    digest = _digest(
        {
            "spec": f"cifar10:{folder}",
            "seed": seed,
            "input_size": input_size,
            "preprocessing": preprocessing,
            "files": sizes,
            "splits": [len(finetune_idx), len(holdout_idx), len(test_idx)],
        }
    )
    _, mean, std = parsed.normalisation
    return DataSplits(
        name=str(parsed),
        finetune=_TensorImages(pixels, targets, finetune_idx, train_transform),
        holdout=_TensorImages(pixels, targets, holdout_idx, eval_transform),
        test=_TensorImages(pixels, targets, test_idx, eval_transform),
        num_classes=len(class_names),
        input_size=input_size,
        channels=3,
        digest=digest,
        class_names=class_names,
        mean=mean or (0.0, 0.0, 0.0),
        std=std or (1.0, 1.0, 1.0),
        finetune_sources=tuple(int(i) for i in finetune_idx),
        holdout_sources=tuple(int(i) for i in holdout_idx),
        test_sources=tuple(int(i) for i in test_idx),
        preprocessing=preprocessing,
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


def _load_folder(parsed: DataSpec, input_size: int | None, seed: int) -> DataSplits:
    path = parsed.path
    assert path is not None  # checked by load_data
    parts = _folder_parts(path)
    samples = [sample for part in parts for sample in part.samples]
    offsets = np.cumsum([0] + [len(p) for p in parts])
    if len(parts) == 3:  # train/, val/ and test/: use them as they are
        finetune_idx, holdout_idx = np.arange(offsets[1]), np.arange(offsets[1], offsets[2])
        test_idx = np.arange(offsets[2], offsets[3])
    elif len(parts) == 2:
        finetune_idx, holdout_idx = _split_two(np.arange(offsets[1]), HOLDOUT_FRACTION, seed)
        test_idx = np.arange(offsets[1], offsets[2])
    else:
        finetune_idx, holdout_idx, test_idx = _split_indices(len(parts[0]), seed)
    for split, indices in (
        ("finetune", finetune_idx),
        ("holdout", holdout_idx),
        ("test", test_idx),
    ):
        if len(indices) == 0:
            raise DataError(f"image folder {path} has too few images: the {split} split is empty")
    native = 0
    if parsed.output_size is None:  # used as they are: one square size for every image
        native = _common_image_side([file for file, _ in samples], path)
    size = _check_size(parsed, native, input_size, f"the images in {path} are")
    loader = parts[0].loader
    train_transform, eval_transform = _transforms(parsed, size, pil=True)
    files = [(str(Path(f).relative_to(path)), Path(f).stat().st_size) for f, _ in samples]
    preprocessing = _preprocessing(parsed, size)
    digest = _digest(
        {
            "spec": f"folder:{path}",
            "seed": seed,
            "input_size": size,
            "preprocessing": preprocessing,
            "classes": parts[0].classes,
            "files": files,
            "splits": [len(finetune_idx), len(holdout_idx), len(test_idx)],
        }
    )
    _, mean, std = parsed.normalisation
    return DataSplits(
        name=str(parsed),
        finetune=_FileImages(samples, finetune_idx, loader, train_transform),
        holdout=_FileImages(samples, holdout_idx, loader, eval_transform),
        test=_FileImages(samples, test_idx, loader, eval_transform),
        num_classes=len(parts[0].classes),
        input_size=size,
        channels=3,
        digest=digest,
        class_names=tuple(parts[0].classes),
        mean=mean or (0.0, 0.0, 0.0),
        std=std or (1.0, 1.0, 1.0),
        finetune_sources=tuple(int(i) for i in finetune_idx),
        holdout_sources=tuple(int(i) for i in holdout_idx),
        test_sources=tuple(int(i) for i in test_idx),
        preprocessing=preprocessing,
    )


def _folder_parts(path: Path) -> list[Any]:
    """The ImageFolders of ``path``: train/ then val/ and test/ when given, else the root."""
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"image folder path {path} is not a folder")
    train_dir = next((path / n for n in FOLDER_TRAIN_NAMES if (path / n).is_dir()), None)
    test_dirs = [path / n for n in FOLDER_TEST_NAMES if (path / n).is_dir()]
    if train_dir is None or not test_dirs:
        return [_image_folder(path)]
    parts = [_image_folder(train_dir), *(_image_folder(d) for d in test_dirs)]
    for part, folder in zip(parts[1:], test_dirs, strict=True):
        if part.classes != parts[0].classes:
            raise DataError(
                f"{folder} has classes {part.classes} but {train_dir} has {parts[0].classes}; "
                "the split folders must hold the same class subfolders"
            )
    return parts


def _common_image_side(files: Sequence[str], root: Path) -> int:
    """The side every image in ``files`` has; a DataError naming the option that fixes others.

    Only image headers are read, not pixels.
    """
    from PIL import Image

    sizes: dict[tuple[int, int], str] = {}
    for file in files:
        try:
            with Image.open(file) as image:
                sizes.setdefault(image.size, file)
        except OSError as exc:
            raise DataError(f"image {file} cannot be read: {exc}") from exc
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = list(sizes)[:2]
            raise DataError(
                f"the images in {root} differ in size ({w1}x{h1} and {w2}x{h2}); add resize=N to "
                "--data (shorter side to N, centre-cropped to N x N), e.g. "
                f"folder:{root},resize={min(w1, h1, w2, h2)}"
            )
    if not sizes:
        raise DataError(f"image folder {root} holds no images")
    width, height = next(iter(sizes))
    if width != height:
        raise DataError(
            f"the images in {root} are {width}x{height}; models take square inputs: add "
            f"resize={min(width, height)} to --data (shorter side, then a centre crop)"
        )
    return width


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
