"""Tracing real torchvision models into LayerMerge chains (LAYERMERGE.md §1.1–1.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from core.chain import Chain, trace_chain
from core.errors import UnsupportedLayerError
from core.models import build_model, list_models
from core.surgery import original_network
from tests.helpers import randomize_batchnorm, relative_error, resnet20

REPO = Path(__file__).resolve().parent.parent


def test_resnet34_matches_the_paper_index_space() -> None:
    chain = trace_chain(torchvision.models.resnet34(), 224)
    assert chain.last_position == 32
    assert chain.breaks == frozenset({0, 7, 15, 27, 32})
    # every 3x3 except the stem and the strided first convs of stages 2-4
    assert set(chain.reducible_convs) == set(range(1, 33)) - {7, 15, 27}
    assert [(r.start, r.end) for r in chain.residuals][:3] == [(0, 2), (2, 4), (4, 6)]
    assert [r.shortcut for r in chain.residuals if r.shortcut] == [
        "layer2.0.downsample.0",
        "layer3.0.downsample.0",
        "layer4.0.downsample.0",
    ]


def test_true_input_shapes_include_the_maxpool() -> None:
    """The original code times ResNet stage 1 at 112x112; the real input is 56x56 (§3.2)."""
    chain = trace_chain(torchvision.models.resnet34(), 224)
    assert chain.convs[0].input_shape == (3, 224, 224)
    assert chain.convs[1].input_shape == (64, 56, 56)
    assert chain.convs[7].input_shape == (64, 56, 56)
    assert chain.convs[8].input_shape == (128, 28, 28)
    assert [op.kind for op in chain.post_ops[0]] == ["maxpool2d"]


@pytest.mark.parametrize("width", [1.0, 1.4])
def test_mobilenet_v2_matches_the_paper(width: float) -> None:
    chain = trace_chain(torchvision.models.mobilenet_v2(width_mult=width), 224)
    # the paper's break set {0, 5, 11, 20, 41}, plus the last position
    assert chain.breaks == frozenset({0, 5, 11, 20, 41, chain.last_position})
    assert chain.reducible_convs == (1, 7, 13, 16, 22, 25, 28, 31, 34, 37, 43, 46, 49)
    linear = [p for p, a in enumerate(chain.activations) if a is None]
    assert linear == list(range(2, 51, 3))  # iden_pos = {2, 5, ..., 50}
    assert chain.default_activation == "relu6"
    assert chain.convs[1].depthwise and not chain.convs[2].depthwise


def test_resnet50_bottleneck_breaks_after_the_block() -> None:
    chain = trace_chain(torchvision.models.resnet50(), 224)
    assert chain.last_position == 48
    # strided 3x3 conv2 of each first bottleneck is followed by its 1x1 conv3: break there
    assert chain.breaks == frozenset({0, 12, 24, 42, 48})
    assert chain.convs[11].stride == 2 and chain.convs[12].kernel == 1


@pytest.mark.parametrize(
    "builder",
    [resnet20, torchvision.models.mnasnet0_5],
    ids=["cifar_resnet20", "mnasnet"],
)
def test_architectures_named_nowhere_in_core_trace(builder) -> None:
    chain = trace_chain(builder(), 32)
    assert chain.last_position > 10
    assert chain.residuals
    assert chain.head[-1].kind == "linear"


def _registry_size(name: str) -> int | None:
    """A small input for the torchvision models (fast), the demo models' own."""
    return 64 if name.startswith(("resnet", "mobile")) else None


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_traces(name: str) -> None:
    bundle = build_model(name, input_size=_registry_size(name))
    chain = trace_chain(bundle.model, bundle.input_size)
    assert chain.convs[0].index == 0
    assert all(c.input_shape[0] == c.in_channels for c in chain.convs)
    assert Chain.from_dict(chain.to_dict()) == chain


def test_chain_digest_ignores_weights_but_not_structure() -> None:
    a = trace_chain(torchvision.models.resnet18(), 64)
    torch.manual_seed(5)
    b = trace_chain(torchvision.models.resnet18(), 64)
    c = trace_chain(torchvision.models.resnet18(), 96)
    assert a.digest() == b.digest() != c.digest()


_DIGEST_SCRIPT = """
import json
from core.chain import trace_chain
from core.models import build_model, list_models
from tests.test_chain import _registry_size

digests = {}
for name in list_models():
    bundle = build_model(name, input_size=_registry_size(name))
    digests[name] = trace_chain(bundle.model, bundle.input_size).digest()
print(json.dumps(digests))
"""


def test_registry_digests_are_the_same_in_another_process() -> None:
    """Digests key cached tables: a name built from an object's repr would change per process."""
    result = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    other = json.loads(result.stdout)
    assert sorted(other) == list_models()
    for name in list_models():
        bundle = build_model(name, input_size=_registry_size(name))
        assert trace_chain(bundle.model, bundle.input_size).digest() == other[name], name


@pytest.mark.parametrize("name", ["digits_resnet", "digits_mobilenet"])
def test_digests_match_the_shipped_tables(name: str) -> None:
    """The shipped tables were built for these digests; a change would orphan them."""
    meta = json.loads((REPO / "cached_tables" / name / "meta.json").read_text())
    bundle = build_model(name)
    assert trace_chain(bundle.model, bundle.input_size).digest() == meta["chain_digest"]


def test_squeeze_excitation_is_refused_naming_the_module() -> None:
    with pytest.raises(UnsupportedLayerError, match="SqueezeExcitation"):
        trace_chain(torchvision.models.mobilenet_v3_small(), 64)


class _Dilated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow
            return self.conv(x)
        return x


class _NotFlat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.size(0), 4, -1)[:, :, :16])


class _FixedPool(nn.Module):
    """A CIFAR model that pools by a fixed 8: it only runs at the size it was made for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.avg_pool2d(self.conv(x), 8).view(x.size(0), -1))


class _Inner(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : int(x.size(1)) // 2]


class _IntOfSize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = _Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(x))


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], 1)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Dilated(), "'conv'"),
        (_Branchy(), r"cannot be traced .* in its forward at test_chain.py:\d+: .*write forward"),
        (_IntOfSize(), r"in module 'inner' \(_Inner\) at test_chain.py:\d+: .*int\(x.size\(0\)\)"),
        (_Concat(), "'cat' .* concatenating branches .* cannot be merged"),
        (
            _NotFlat(),
            r"'view' .* reshapes \(2, 4, 16, 16\) to \(2, 4, 256\).*torch.flatten\(x, 1\)",
        ),
        (_FixedPool(), r"fails on a 3x16x16 input at 'fc' \(Linear\) .*--input-size"),
    ],
    ids=["dilated", "control_flow", "int_of_size", "concat", "not_flat", "wrong_size"],
)
def test_unsupported_models_get_one_clear_message(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message) as info:
        trace_chain(model, 16)
    assert "\n" not in str(info.value) and "0x" not in str(info.value)
    assert model.training  # the model's mode is restored even when tracing fails


# --------------------------------------------------------------------------- research code as written

_ACTIVATIONS = {
    "F.relu": lambda x: F.relu(x),
    "F.relu_inplace": lambda x: F.relu(x, inplace=True),
    "torch.relu": torch.relu,
    "torch.relu_": torch.relu_,
    "x.relu()": lambda x: x.relu(),
    "x.relu_()": lambda x: x.relu_(),
    "F.relu6": lambda x: F.relu6(x),
    "F.silu": lambda x: F.silu(x),
}
_ACTIVATION_KIND = {"F.relu6": "relu6", "F.silu": "silu"}
_HEADS = {
    "view_size": lambda x: F.avg_pool2d(x, x.size(3)).view(x.size(0), -1),
    "reshape_shape": lambda x: F.avg_pool2d(x, x.shape[2]).reshape(x.shape[0], -1),
    "mean_dims": lambda x: x.mean((2, 3)),
    "mean_negative_dims": lambda x: x.mean(dim=[-2, -1]),
    "torch_mean_keepdim": lambda x: torch.flatten(torch.mean(x, (2, 3), keepdim=True), 1),
    "adaptive_squeeze": lambda x: F.adaptive_avg_pool2d(x, 1).squeeze(),
    "dropout": lambda x: F.dropout(x.mean((2, 3)), 0.3, training=False),
}


class _Functional(nn.Module):
    """Three conv-BN layers and a pool, activation and head written as functions."""

    def __init__(self, activation, head) -> None:
        super().__init__()
        self.activation, self.head = activation, head
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.bn1(self.conv1(x)))
        out = self.pool(self.activation(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return self.fc(self.head(self.activation(out)))


@pytest.mark.parametrize("activation", list(_ACTIVATIONS))
@pytest.mark.parametrize("head", list(_HEADS))
def test_functional_forms_trace_exactly(activation: str, head: str) -> None:
    model = randomize_batchnorm(_Functional(_ACTIVATIONS[activation], _HEADS[head]))
    chain = trace_chain(model, 16)
    assert chain.activations == (_ACTIVATION_KIND.get(activation, "relu"),) * 3
    assert all(name and "0x" not in name for name in chain.activation_modules)
    kinds = [op.kind for op in chain.head]
    assert kinds[-1] == "linear" and kinds[0] in ("adaptive_avgpool2d", "spatial_mean")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert relative_error(model(x), original_network(model, chain).eval()(x)) <= 1e-5
