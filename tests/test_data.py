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
    check_above_chance,
    data_input_size,
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


@pytest.mark.parametrize(
    ("options", "canonical", "norm", "resize", "crop"),
    [
        ("", "norm=imagenet,resize=none", "imagenet", None, None),
        (",norm=cifar,resize=none", "norm=cifar,resize=none", "cifar", None, None),
        (",NORM=None", "norm=none,resize=none", "none", None, None),
        (",resize=256,crop=224", "norm=imagenet,resize=256,crop=224", "imagenet", 256, 224),
        (",crop=28", "norm=imagenet,resize=none,crop=28", "imagenet", None, 28),
        (
            ",mean=0.5,std=0.25/0.5/1",
            "mean=0.5/0.5/0.5,std=0.25/0.5/1,resize=none",
            "custom",
            None,
            None,
        ),
    ],
)
def test_preprocessing_options_parse_and_spell_canonically(
    tmp_path: Path, options: str, canonical: str, norm: str, resize: int | None, crop: int | None
) -> None:
    spec = parse_data_spec(f"folder:{tmp_path}{options}")
    assert (spec.normalisation[0], spec.resize, spec.crop) == (norm, resize, crop)
    assert str(spec) == f"folder:{tmp_path},{canonical}"
    assert parse_data_spec(str(spec)) == spec


def test_a_path_with_commas_keeps_them(tmp_path: Path) -> None:
    spec = parse_data_spec(f"cifar10:{tmp_path}/a,b,norm=none")
    assert spec.path == tmp_path / "a,b" and spec.norm == "none"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (",colour=red", "unknown option 'colour'"),
        (",norm=cifar,norm=none", "given twice"),
        (",norm=mnist", "unknown norm 'mnist'"),
        (",norm=cifar,mean=0.5,std=0.5", "either norm"),
        (",mean=0.5", "go together"),
        (",mean=a/b/c,std=1", "1 or 3 numbers"),
        (",mean=0.1/0.2,std=1/1", "1 or 3 numbers"),
        (",mean=0.5,std=0", "positive"),
        (",resize=big", "side in pixels"),
        (",resize=2", "side in pixels"),
        (",resize=32,crop=64", "larger than resize"),
    ],
)
def test_bad_preprocessing_options_name_the_fix(tmp_path: Path, options: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        parse_data_spec(f"folder:{tmp_path}{options}")
    assert "\n" not in str(info.value)


def test_digits_takes_no_options() -> None:
    with pytest.raises(DataError, match="no path or options"):
        parse_data_spec("digits:norm=none")


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
    splits = load_data(f"folder:{tmp_path},resize=24", input_size=24, seed=1)
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
    again = load_data(f"folder:{tmp_path},resize=24", seed=1)  # the size follows the data
    assert again.test_sources == splits.test_sources and again.digest == splits.digest
    other = load_data(f"folder:{tmp_path},resize=24", input_size=24, seed=2)
    assert other.digest != splits.digest


def test_image_folder_with_train_val_subfolders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 5, "b": 5})
    _write_images(tmp_path / "val", {"a": 2, "b": 2}, seed=1)
    splits = load_data(f"folder:{tmp_path},resize=16", input_size=16, seed=0)
    _assert_disjoint(splits)
    assert len(splits.test) == 4  # val/ is the test split, as given
    assert set(splits.test_sources) == {10, 11, 12, 13}  # indexed after train/'s 10 files
    assert len(splits.finetune) + len(splits.holdout) == 10
    assert splits.class_names == ("a", "b")


def test_image_folder_with_train_val_test_subfolders(tmp_path: Path) -> None:
    _write_images(tmp_path / "train", {"a": 3, "b": 3})
    _write_images(tmp_path / "val", {"a": 1, "b": 1}, seed=1)
    _write_images(tmp_path / "test", {"a": 2, "b": 2}, seed=2)
    splits = load_data(f"folder:{tmp_path},resize=16", input_size=16)
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


def _write_square_images(folder: Path, classes: dict[str, int], side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"img{i}.png")


def test_folder_input_size_follows_its_images(tmp_path: Path) -> None:
    _write_square_images(tmp_path, {"a": 4, "b": 4}, side=20)
    assert data_input_size(f"folder:{tmp_path}") == 20
    splits = load_data(f"folder:{tmp_path}")
    assert splits.input_size == 20 and splits.test[0][0].shape == (3, 20, 20)
    assert splits.finetune[0][0].shape == (3, 20, 20)
    assert data_input_size(f"folder:{tmp_path},resize=24,crop=16") == 16
    cropped = load_data(f"folder:{tmp_path},resize=24,crop=16", input_size=16)
    assert cropped.test[0][0].shape == (3, 16, 16) and cropped.finetune[0][0].shape == (3, 16, 16)
    with pytest.raises(DataError, match=r"20x20 but the model takes 224x224.*resize=224"):
        load_data(f"folder:{tmp_path}", input_size=224)


def test_folder_of_mixed_or_oblong_images_asks_for_resize(tmp_path: Path) -> None:
    _write_images(tmp_path / "oblong", {"a": 3, "b": 3})  # 10 wide, 12 high
    with pytest.raises(DataError, match=r"are 10x12; .*resize=10"):
        load_data(f"folder:{tmp_path / 'oblong'}")
    mixed = tmp_path / "mixed"
    _write_square_images(mixed, {"a": 3, "b": 3}, side=16)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(mixed / "a" / "big.png")
    with pytest.raises(DataError, match=r"differ in size .*resize=16"):
        data_input_size(f"folder:{mixed}")
    assert load_data(f"folder:{mixed},resize=16").input_size == 16


@pytest.mark.parametrize(
    ("options", "mean", "std"),
    [
        ("", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        (",norm=imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        (",norm=none", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        (",mean=0.5,std=0.2/0.3/0.4", (0.5, 0.5, 0.5), (0.2, 0.3, 0.4)),
    ],
)
def test_normalisation_is_the_users(tmp_path: Path, options: str, mean: tuple, std: tuple) -> None:
    folder = _write_cifar(tmp_path)
    with (folder / "test_batch").open("rb") as handle:
        raw = pickle.load(handle)  # our own fixture: safe to unpickle here
    splits = load_data(f"cifar10:{tmp_path}{options}")
    pixels = torch.from_numpy(raw["data"][0].reshape(3, 32, 32).astype(np.float32)) / 255
    expected = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(splits.test[0][0], expected, atol=1e-5)
    assert splits.mean == pytest.approx(mean) and splits.std == pytest.approx(std)
    recorded = splits.preprocessing
    assert recorded["input_size"] == 32 and recorded["resize"] is None
    if recorded["norm"] == "none":
        assert recorded["mean"] is None and recorded["std"] is None
    else:
        assert recorded["mean"] == pytest.approx(list(mean))
    assert splits.name.startswith(f"cifar10:{tmp_path}") and ",resize=none" in splits.name
    assert parse_data_spec(splits.name) == parse_data_spec(f"cifar10:{tmp_path}{options}")


@pytest.mark.parametrize(
    ("accuracy", "classes", "count", "warns"),
    [
        (10.0, 10, None, True),
        (9.0, 10, None, True),
        (10.5, 10, None, False),
        (12.0, 10, 100, True),  # within two standard errors (6 points) of chance on 100 images
        (12.0, 10, 100_000, False),
        (90.0, 10, 100, False),
        (50.0, 2, None, True),
        (0.0, 1, None, False),  # one class: no chance level to compare with
    ],
)
def test_check_above_chance(accuracy: float, classes: int, count: int | None, warns: bool) -> None:
    message = check_above_chance(accuracy, classes, count=count)
    assert (message is not None) == warns
    if message:
        assert "preprocessing or input size" in message and "\n" not in message


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
    resized = load_data(f"cifar10:{tmp_path},resize=40", seed=0, input_size=40)
    assert resized.test[0][0].shape == (3, 40, 40) and resized.input_size == 40
    assert resized.finetune[0][0].shape == (3, 40, 40)
    assert resized.digest != splits.digest


def test_cifar10_is_never_resized_silently(tmp_path: Path) -> None:
    """A model stating 224 on 32x32 CIFAR-10 gets the option to add, not a silent resize."""
    _write_cifar(tmp_path)
    with pytest.raises(DataError, match=r"32x32 but the model takes 224x224.*resize=224") as info:
        load_data(f"cifar10:{tmp_path}", input_size=224)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="makes 40x40 images but the model takes 32x32"):
        load_data(f"cifar10:{tmp_path},resize=40", input_size=32)


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
