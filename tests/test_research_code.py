"""Research code as published, taken with no rewrite: a CIFAR ResNet file, its checkpoint, its data.

``tests/research/resnet_cifar.py`` is written the way published CIFAR ResNets are (functional
``F.relu``, ``view``-flatten, ``F.avg_pool2d`` by the map's size, a lambda "option A" shortcut).
It must trace, merge exactly, keep one chain digest across processes, load its checkpoint as
saved (``{'state_dict': ...}`` with ``module.`` keys, a ``.th`` name), and be evaluated on an
image folder exactly as a plain torchvision loop evaluates it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.chain import Chain, trace_chain
from core.data import CIFAR10_MEAN, CIFAR10_STD, data_input_size, load_data
from core.errors import UnsafeCheckpointError
from core.families import family_named
from core.families.classifier.checkpoint import (
    build_checkpoint,
    load_checkpoint_dict,
    network_from_checkpoint,
    validate_network_spec,
)
from core.merge import merge, merge_model
from core.models import build_model, state_dict_digest
from core.surgery import build_training_network, original_network
from tests.helpers import random_solution, randomize_batchnorm, relative_error
from tests.test_merge import SOLUTIONS_PER_ARCH, TOLERANCE

REPO = Path(__file__).resolve().parent.parent
RESEARCH_FILE = "tests/research/resnet_cifar.py"
MODEL = f"{REPO / RESEARCH_FILE}:resnet20"

_DIGEST_SCRIPT = """
import sys
from core.chain import Chain, trace_chain
from core.models import build_model

bundle = build_model(sys.argv[1], input_size=32)
print(trace_chain(bundle.model, 32).digest())
"""


@pytest.fixture(scope="module")
def research_model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(MODEL).model)


def test_the_research_file_traces_as_written(research_model: nn.Module) -> None:
    chain = trace_chain(research_model, 32)
    assert chain.last_position == 18  # stem + 9 blocks x 2
    assert set(chain.activations) == {"relu"}
    assert chain.activation_modules[0] == "torch.nn.functional.relu"  # a stable name, no repr
    option_a = [r for r in chain.residuals if r.channel_pad is not None]
    assert [(r.start, r.end, r.shortcut_stride, r.channel_pad) for r in option_a] == [
        (6, 8, 2, (8, 8)),
        (12, 14, 2, (16, 16)),
    ]
    assert sum(r.is_identity for r in chain.residuals) == 7
    # F.avg_pool2d(out, out.size()[3]) is a global pool; out.view(out.size(0), -1) a flatten
    assert [op.kind for op in chain.head] == ["adaptive_avgpool2d", "flatten", "linear"]
    assert Chain.from_dict(chain.to_dict()) == chain  # channel_pad survives JSON


def test_it_is_rebuilt_and_merged_exactly(research_model: nn.Module) -> None:
    chain = trace_chain(research_model, 32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = research_model(x)
        assert relative_error(expected, original_network(research_model, chain).eval()(x)) <= 1e-6
    rng = random.Random(1234)
    for _ in range(SOLUTIONS_PER_ARCH):
        solution = random_solution(chain, rng)
        training = build_training_network(research_model, chain, solution).eval()
        merged = merge(training, chain, solution)
        with torch.no_grad():
            assert relative_error(training(x), merged(x)) <= TOLERANCE, solution.segments
        assert merged.spec["version"] == 2  # the option-A shortcuts stay as zero-pad adds


class _OptionABlock(nn.Module):
    """Conv-BN (strided), conv-BN (kernel ``k2``), and an option-A shortcut as a lambda."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, k2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, k2, 1, k2 // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        before = (channels_out - channels_in) // 2
        after = channels_out - channels_in - before
        self.shortcut = lambda x: F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, before, after))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _AbsorbableOptionA(nn.Module):
    """Option-A blocks a segment can swallow whole: channel padding only, and a strided 3x3
    followed by a 1x1 (a stride may precede only 1x1 convs inside a segment)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn = nn.BatchNorm2d(8)
        self.widen = _OptionABlock(8, 12, stride=1, k2=3)
        self.down = _OptionABlock(12, 16, stride=2, k2=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        return self.fc(self.down(self.widen(x)).mean((2, 3)))


def test_an_option_a_shortcut_is_absorbed_as_a_fixed_1x1_conv() -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(_AbsorbableOptionA())
    chain = trace_chain(model, 16)
    assert [(r.shortcut_stride, r.channel_pad) for r in chain.residuals] == [
        (1, (2, 2)),
        (2, (2, 2)),
    ]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert relative_error(model(x), original_network(model, chain).eval()(x)) <= 1e-6
    rng = random.Random(0)
    absorbed: set[int] = set()
    for _ in range(SOLUTIONS_PER_ARCH):
        solution = random_solution(chain, rng)
        training = build_training_network(model, chain, solution).eval()
        merged = merge(training, chain, solution)
        with torch.no_grad():
            assert relative_error(training(x), merged(x)) <= TOLERANCE, solution.segments
        absorbed |= {
            r.shortcut_stride
            for r in chain.residuals
            if not any(r.start < b < r.end for b in solution.boundaries)
        }
    assert absorbed == {1, 2}  # both the padding-only and the strided shortcut were absorbed


def test_the_chain_digest_is_the_same_in_every_process(research_model: nn.Module) -> None:
    here = trace_chain(build_model(MODEL).model, 32).digest()
    others = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT, MODEL],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        others.append(result.stdout.strip())
    assert others == [here, here]


def _save_as_published(model: nn.Module, path: Path) -> None:
    """As the CIFAR ResNet scripts save: a DataParallel state_dict inside a dict, a .th name."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 91.73}, path)


def test_a_published_checkpoint_loads_in_core_and_the_cli(
    research_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "resnet20-12fca82f.th"
    _save_as_published(research_model, path)
    bundle = build_model(MODEL, weights=path)
    assert bundle.weights_digest == state_dict_digest(research_model.state_dict())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "chain",
            f"{RESEARCH_FILE}:resnet20",  # relative to the working directory, no PYTHONPATH
            "--weights",
            str(path),
            "--input-size",
            "32",
            "--json",
        ],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert str(path) in data["weights"]
    assert data["chain_digest"] == trace_chain(bundle.model, 32).digest()
    assert data["last_position"] == 18


def test_the_merged_network_exports_and_loads_back(
    research_model: nn.Module, tmp_path: Path
) -> None:
    chain = trace_chain(research_model, 32)
    solution = random_solution(chain, random.Random(7))
    merged = merge_model(research_model, chain, solution)
    checkpoint = build_checkpoint(merged, solution=solution, model_name=MODEL, num_classes=10)
    torch.save(checkpoint, tmp_path / "compressed.pt")
    loaded = network_from_checkpoint(load_checkpoint_dict(tmp_path / "compressed.pt"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), merged(x))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 1}, "needs network spec version 2"),
        ({"zero_pad_shortcut": {"stride": 2, "channels": [8]}}, r"\[before, after\]"),
        ({"zero_pad_shortcut": {"stride": 0, "channels": [8, 8]}}, "'stride'"),
        ({"zero_pad_shortcut": {"stride": 2, "channels": [8, -1]}}, "'channels'"),
        ({"zero_pad_shortcut": {"stride": 2, "channels": [8, 8], "x": 1}}, "exactly"),
    ],
)
def test_a_bad_zero_pad_shortcut_is_refused(
    research_model: nn.Module, change: dict, match: str
) -> None:
    chain = trace_chain(research_model, 32)
    spec = original_network(research_model, chain).spec
    add = next(s for s in spec["steps"] if s["op"] == "add" and s.get("zero_pad_shortcut"))
    if "version" in change:
        spec["version"] = change["version"]
    else:
        add.update(change)
    with pytest.raises(UnsafeCheckpointError, match=match):
        validate_network_spec(spec)


def _write_folder(root: Path, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            pixels[..., label] = np.maximum(pixels[..., label], 160)  # a class colour cast
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_a_folder_of_32px_images_is_evaluated_like_a_plain_torchvision_loop(
    research_model: nn.Module, tmp_path: Path
) -> None:
    from torchvision import datasets, transforms

    counts = {"red": 5, "green": 5, "blue": 5}
    _write_folder(tmp_path / "train", counts, seed=0)
    _write_folder(tmp_path / "val", counts, seed=1)
    spec = f"folder:{tmp_path},norm=cifar,resize=none"
    assert data_input_size(spec) == 32  # the size follows the images
    splits = load_data(spec)
    ours = family_named("classifier").evaluate(research_model, splits)["accuracy"]

    plain = datasets.ImageFolder(
        str(tmp_path / "val"),
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
        ),
    )
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(plain, batch_size=4):
            correct += int((research_model(images).argmax(1) == labels).sum())
    assert ours == pytest.approx(100.0 * correct / len(plain), abs=1e-9)
    assert len(splits.test) == len(plain)
    for (image, label), (expected, expected_label) in zip(splits.test, plain, strict=True):
        assert label == expected_label
        assert torch.allclose(image, expected, atol=1e-6)  # the same pixels, not just the score
