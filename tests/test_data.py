"""Tests for core.data: the digits demo task, image folders, CIFAR-10 folders and their splits."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data
from core.data import (
    DIGITS_TRAIN_COPIES,
    DataSpec,
    DataSplits,
    digits_arrays,
    load_data,
    parse_data_spec,
)
from core.errors import DataError, LayerMergeError


def _assert_disjoint(splits: DataSplits) -> None:
    finetune = set(splits.finetune_sources)
    holdout = set(splits.holdout_sources)
    test = set(splits.test_sources)
    assert not finetune & holdout
    assert not finetune & test
    assert not holdout & test
    assert len(splits.finetune) == len(splits.finetune_sources)
    assert len(splits.holdout) == len(splits.holdout_sources)
    assert len(splits.test) == len(splits.test_sources)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("digits", "digits"),
        (" DIGITS ", "digits"),
        ("folder:/x/y", "folder"),
        ("cifar10:c", "cifar10"),
    ],
)
def test_parse_data_spec(spec: str, kind: str) -> None:
    parsed = parse_data_spec(spec)
    assert parsed.kind == kind
    assert (parsed.path is None) == (kind == "digits")
    if parsed.path is not None:
        assert parsed.path.is_absolute()


@pytest.mark.parametrize("spec", ["", "  ", "mnist", "folder", "folder:", "cifar10: ", "digits:x"])
def test_bad_specs_raise_data_error(spec: str) -> None:
    with pytest.raises(DataError) as info:
        parse_data_spec(spec)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, LayerMergeError)


def test_spec_round_trips_through_str(tmp_path: Path) -> None:
    spec = parse_data_spec(f"folder:{tmp_path}")
    assert parse_data_spec(str(spec)) == spec
    assert str(DataSpec("digits")) == "digits"


@pytest.mark.parametrize("size", [0, -1, 3.5, True])
def test_bad_input_size_raises(size: object) -> None:
    with pytest.raises(DataError, match="input size"):
        load_data("digits", input_size=size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- digits


def test_digits_splits_disjoint_on_originals() -> None:
    splits = load_data("digits", seed=0)
    _assert_disjoint(splits)
    count = len(digits_arrays()[1])
    originals = (
        set(splits.finetune_sources) | set(splits.holdout_sources) | set(splits.test_sources)
    )
    assert originals == set(range(count))  # every original image is used exactly once
    assert len(splits.finetune_sources) == DIGITS_TRAIN_COPIES * len(set(splits.finetune_sources))
    assert (splits.num_classes, splits.input_size, splits.channels) == (10, 32, 3)


def test_digits_tensors_shape_normalisation_and_labels() -> None:
    splits = load_data("digits", seed=0)
    images, labels = splits.finetune.tensors
    assert images.shape == (len(splits.finetune), 3, 32, 32)
    assert images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated into three channels
    assert abs(float(images.mean())) < 0.05
    assert abs(float(images.std()) - 1.0) < 0.05
    _, original_labels = digits_arrays()
    assert labels.tolist() == original_labels[list(splits.finetune_sources)].tolist()
    test_images, test_labels = splits.test.tensors
    assert test_labels.tolist() == original_labels[list(splits.test_sources)].tolist()
    # Augmented copies of one original differ: the transforms are random per copy.
    assert not torch.equal(images[0], images[1])


def test_digits_deterministic_under_seed() -> None:
    first = load_data("digits", seed=3)
    core.data._load_digits.cache_clear()  # really recompute, not the cached object
    second = load_data("digits", seed=3)
    assert first is not second
    assert first.digest == second.digest
    assert first.test_sources == second.test_sources
    assert torch.equal(first.test.tensors[0], second.test.tensors[0])
    assert torch.equal(first.finetune.tensors[0], second.finetune.tensors[0])
    other = load_data("digits", seed=4)
    assert other.digest != first.digest
    assert other.test_sources != first.test_sources


def test_digits_input_size_option() -> None:
    splits = load_data("digits", input_size=16, seed=0)
    assert splits.test[0][0].shape == (3, 16, 16)
    assert splits.digest != load_data("digits", seed=0).digest


# --------------------------------------------------------------------------- image folders


def _write_images(folder: Path, classes: dict[str, int], *, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img{i}.png")


def test_image_folder_split_disjoint_and_deterministic(tmp_path: Path) -> None:
    _write_images(tmp_path, {"cat": 6, "dog": 5, "eel": 4})
    splits = load_data(f"folder:{tmp_path}", input_size=24, seed=1)
    _assert_disjoint(splits)
    total = len(splits.finetune) + len(splits.holdout) + len(splits.test)
    assert total == 15
    assert splits.class_names == ("cat", "dog", "eel")
    assert splits.num_classes == 3
    image, label = splits.test[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert 0 <= label < 3
    image, _ = splits.finetune[0]  # train-time augmentation still gives the model's size
    assert image.shape == (3, 24, 24)
    again = load_data(f"folder:{tmp_path}", input_size=24, seed=1)
    assert again.test_sources == splits.test_sources and again.digest == splits.digest
    other = load_data(f"folder:{tmp_path}", input_size=24, seed=2)
    assert other.digest != splits.digest


def test_image_folder_with_train_val_subfolders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 5, "b": 5})
    _write_images(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    splits = load_data(f"folder:{tmp_path}", input_size=16, seed=0)
    _assert_disjoint(splits)
    assert len(splits.test) == 4  # val/ is the test split, as given
    assert set(splits.test_sources) == {10, 11, 12, 13}  # indexed after train/'s 10 files
    assert len(splits.finetune) + len(splits.holdout) == 10
    assert splits.class_names == ("a", "b")


def test_image_folder_with_train_val_test_subfolders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 3, "b": 3})
    _write_images(tmp_path / "val", {"a": 1, "b": 1}, seed=1)
    _write_images(tmp_path / "test", {"a": 2, "b": 2}, seed=2)
    splits = load_data(f"folder:{tmp_path}", input_size=16)
    _assert_disjoint(splits)
    assert splits.finetune_sources == tuple(range(6))  # all given splits are used as they are
    assert splits.holdout_sources == (6, 7)
    assert splits.test_sources == (8, 9, 10, 11)


def test_image_folder_mismatched_split_classes(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 3, "b": 3})
    _write_images(tmp_path / "val", {"a": 2, "c": 2})
    with pytest.raises(DataError, match="same class subfolders"):
        load_data(f"folder:{tmp_path}")


def test_missing_and_empty_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_data(f"folder:{tmp_path / 'nowhere'}")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(DataError, match="cannot be used"):
        load_data(f"folder:{tmp_path}")  # no class folders
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match="cannot be used"):
        load_data(f"folder:{tmp_path}")  # a class folder with no images
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_data(f"folder:{tmp_path / 'file.txt'}")


def test_too_small_image_folder(tmp_path: Path) -> None:
    _write_images(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(DataError, match="too few images"):
        load_data(f"folder:{tmp_path}")


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, *, per_batch: int = 8, seed: int = 0) -> Path:
    """A tiny CIFAR-10 python folder, pickled as the real one reads back with latin1 (str keys)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "labels": [int(x) for x in rng.integers(0, 10, size=per_batch)],
            "data": rng.integers(0, 255, size=(per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    meta = {"label_names": list("abcdefghij"), "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def test_cifar10_folder_loads_with_disjoint_splits(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    splits = load_data(f"cifar10:{tmp_path}", seed=0)
    _assert_disjoint(splits)
    assert set(splits.test_sources) == set(range(40, 48))  # the official test batch
    assert len(splits.finetune) + len(splits.holdout) == 40
    assert splits.class_names == tuple("abcdefghij")
    image, label = splits.test[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    image, _ = splits.finetune[0]
    assert image.shape == (3, 32, 32)
    # The batch folder itself works as well as the root torchvision is given.
    inner = load_data(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", seed=0)
    assert inner.finetune_sources == splits.finetune_sources
    again = load_data(f"cifar10:{tmp_path}", seed=0)
    assert again.digest == splits.digest and again.holdout_sources == splits.holdout_sources
    resized = load_data(f"cifar10:{tmp_path}", seed=0, input_size=40)
    assert resized.test[0][0].shape == (3, 40, 40)


def test_cifar10_pixels_are_decoded_channel_major(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path)
    with (folder / "test_batch").open("rb") as handle:
        raw = pickle.load(handle)  # our own fixture: safe to unpickle here
    splits = load_data(f"cifar10:{tmp_path}", seed=0)
    image, _ = splits.test[0]
    mean, std = torch.tensor(splits.mean)[:, None, None], torch.tensor(splits.std)[:, None, None]
    pixels = (image * std + mean) * 255
    expected = torch.from_numpy(raw["data"][0].reshape(3, 32, 32).astype(np.float32))
    assert torch.allclose(pixels, expected, atol=1e-3)


def test_cifar10_missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'none'}")
    with pytest.raises(DataError, match="not a CIFAR-10 python folder"):
        load_data(f"cifar10:{tmp_path}")
    folder = _write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_data(f"cifar10:{tmp_path}")


def test_cifar10_malicious_batch_is_refused(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    with (folder / "data_batch_1").open("wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": []}, handle, protocol=2)
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        load_data(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar10_corrupt_batch_is_refused(tmp_path: Path) -> None:
    folder = _write_cifar(tmp_path)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="test_batch"):
        load_data(f"cifar10:{tmp_path}")
