"""Tracing real torchvision models into LayerMerge chains (LAYERMERGE.md §1.1–1.3)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from core.chain import Chain, trace_chain
from core.errors import UnsupportedLayerError
from core.models import build_model, list_models
from tests.helpers import resnet20


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


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_traces(name: str) -> None:
    bundle = build_model(name, input_size=64 if name.startswith(("resnet", "mobile")) else None)
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
        (_Branchy(), "cannot be traced"),
        (_Concat(), "cat"),
    ],
    ids=["dilated", "control_flow", "concat"],
)
def test_unsupported_models_get_one_clear_message(model: nn.Module, message: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=message):
        trace_chain(model, 16)
