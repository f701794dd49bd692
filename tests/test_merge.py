"""Merged network == training-form network, for every supported architecture (LAYERMERGE §5)."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from core.chain import trace_chain
from core.merge import merge, merge_model
from core.models import build_model
from core.segments import find_segments, is_valid_segment, keep_everything_solution
from core.solution import Solution, SolutionSegment
from core.surgery import build_training_network, original_network
from tests.helpers import random_solution, randomize_batchnorm, relative_error, resnet20

TOLERANCE = 1e-4
SOLUTIONS_PER_ARCH = 25

# (id, builder, input size, longest segment sampled: keeps huge dense merges out of the suite)
ARCHITECTURES = [
    ("resnet18", lambda: torchvision.models.resnet18(), 64, 6),
    ("resnet34", lambda: torchvision.models.resnet34(), 64, 3),
    ("resnet50", lambda: torchvision.models.resnet50(), 64, 3),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), 64, 8),
    ("mobilenet_v2_1.4", lambda: torchvision.models.mobilenet_v2(width_mult=1.4), 64, 8),
    ("resnet20_unlisted", resnet20, 32, None),
    ("mnasnet_unlisted", lambda: torchvision.models.mnasnet0_5(), 64, 8),
    ("digits_resnet", lambda: build_model("digits_resnet").model, 32, None),
    ("digits_mobilenet", lambda: build_model("digits_mobilenet").model, 32, None),
]


def _summary(chain, solution) -> dict[str, bool]:
    boundaries = set(solution.boundaries)
    absorbed = [r for r in chain.residuals if not any(r.start < b < r.end for b in boundaries)]
    kept = [s for s in solution.segments if s.kernel > 0]
    return {
        "strided": any(s.stride > 1 and s.end - s.start > 1 for s in kept),
        "absorbed_identity": any(r.shortcut is None for r in absorbed),
        "absorbed_shortcut": any(r.shortcut is not None for r in absorbed),
        "depthwise": any(s.depthwise and s.end - s.start > 1 for s in kept),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("builder", "size", "max_length"),
    [a[1:] for a in ARCHITECTURES],
    ids=[a[0] for a in ARCHITECTURES],
)
def test_merged_equals_training_form(builder, size, max_length) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(builder())
    chain = trace_chain(model, size)
    rng = random.Random(1234)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    seen = {
        "strided": False,
        "absorbed_identity": False,
        "absorbed_shortcut": False,
        "depthwise": False,
    }
    for _ in range(SOLUTIONS_PER_ARCH):
        solution = random_solution(chain, rng, max_length=max_length)
        training = build_training_network(model, chain, solution).eval()
        merged = merge(training, chain, solution)
        with torch.no_grad():
            expected, got = training(x), merged(x)
        assert relative_error(expected, got) <= TOLERANCE, solution.segments
        kept_residual_shortcuts = sum(
            1
            for r in chain.residuals
            if r.shortcut and any(r.start < b < r.end for b in solution.boundaries)
        )
        kept_segments = sum(1 for s in solution.segments if s.kernel > 0)
        assert merged.conv_count() == 1 + kept_segments + kept_residual_shortcuts
        if len(solution.boundaries) < chain.last_position + 1:
            assert merged.depth() < len(chain.convs)
        for key, value in _summary(chain, solution).items():
            seen[key] |= value
    for key, possible in _possible_features(chain).items():
        assert seen[key] or not possible, f"no sampled solution had {key}"


def _possible_features(chain) -> dict[str, bool]:
    """Which features some valid segment of this chain can show at all."""
    segments = find_segments(chain)
    long = [s for s in segments if s.end - s.start > 1]

    def absorbable(shortcut: bool) -> bool:
        return any(
            (r.shortcut is not None) == shortcut and is_valid_segment(chain, r.start, r.end)
            for r in chain.residuals
        )

    return {
        "strided": any(s.options[0].stride > 1 for s in long),
        "absorbed_identity": absorbable(False),
        "absorbed_shortcut": absorbable(True),
        "depthwise": any(o.depthwise for s in long for o in s.options),
    }


@pytest.mark.parametrize(
    "builder",
    [torchvision.models.resnet18, torchvision.models.resnet50, torchvision.models.mobilenet_v2],
    ids=["resnet18", "resnet50", "mobilenet_v2"],
)
def test_keep_everything_merged_reproduces_torchvision(builder) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(builder())
    chain = trace_chain(model, 64)
    x = torch.randn(2, 3, 64, 64)
    merged = merge_model(model, chain, keep_everything_solution(chain))
    with torch.no_grad():
        expected = model(x)
        assert relative_error(expected, original_network(model, chain).eval()(x)) <= 1e-6
        assert relative_error(expected, merged(x)) <= TOLERANCE
    assert merged.depth() == len(chain.convs)


@pytest.mark.parametrize(
    "builder",
    [torchvision.models.resnet18, torchvision.models.mobilenet_v2],
    ids=["resnet18", "mobilenet_v2"],
)
def test_timed_forward_is_forward_with_one_time_per_step(builder) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(builder()).eval()
    chain = trace_chain(model, 64)
    solution = random_solution(chain, random.Random(0))
    merged = merge_model(model, chain, solution)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, timed = merged.timed_forward(x)
        assert torch.equal(out, merged(x))
    steps = [step for step in merged.spec["steps"] if step["op"] != "save"]
    assert len(timed) == len(steps) and all(seconds >= 0 for _, seconds in timed)
    adds = [label for label, _ in timed if label.startswith("add ")]
    assert adds == [f"add {step['slot']}" for step in steps if step["op"] == "add"]


def test_merge_leaves_source_model_untouched() -> None:
    model = randomize_batchnorm(torchvision.models.resnet18())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chain = trace_chain(model, 64)
    merge_model(model, chain, random_solution(chain, random.Random(0)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Stem(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@st.composite
def conv_chains(draw) -> tuple[nn.Module, int]:
    """A stem conv + ReLU, then 1..5 linear convs (k 1/3/5, stride 1/2, dw or dense) with BN."""
    channels = draw(st.integers(2, 6))
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU()]
    count = draw(st.integers(1, 5))
    strided_seen = False
    for _ in range(count):
        kernel = draw(st.sampled_from([1, 3, 5]))
        # a stride may only be followed by 1x1 convs within one merged segment
        stride = 2 if not strided_seen and draw(st.booleans()) and kernel > 0 else 1
        if strided_seen:
            kernel = 1
        strided_seen |= stride == 2
        depthwise = draw(st.booleans())
        out = channels if depthwise else draw(st.integers(2, 6))
        groups = channels if depthwise else 1
        layers += [
            nn.Conv2d(channels, out, kernel, stride, kernel // 2, groups=groups),
            nn.BatchNorm2d(out),
        ]
        channels = out
    layers += [nn.ReLU()]
    return randomize_batchnorm(_Stem(layers), seed=draw(st.integers(0, 1000))), count


@settings(max_examples=40, deadline=None)
@given(conv_chains())
def test_composition_is_exact_on_random_conv_chains(example) -> None:
    model, count = example
    chain = trace_chain(model, 16)
    assert chain.last_position == count
    if not is_valid_segment(chain, 0, count):
        return
    kept = tuple(range(1, count + 1))
    kernel = 1 + sum(chain.convs[c].kernel - 1 for c in kept)
    stride = 1
    for c in kept:
        stride *= chain.convs[c].stride
    depthwise = all(chain.convs[c].depthwise for c in kept)
    solution = Solution(
        "test",
        0.0,
        0.0,
        0.0,
        (SolutionSegment(0, count, kernel, depthwise, stride, kept),),
        (0, count),
    )
    training = build_training_network(model, chain, solution).eval()
    merged = merge(training, chain, solution)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert relative_error(training(x), merged(x)) <= TOLERANCE
    assert merged.conv_count() == 2
