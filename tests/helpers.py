"""Shared test helpers: randomized BN statistics, random valid solutions, a CIFAR ResNet-20."""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch
from torch import nn

from core.chain import Chain
from core.segments import Segment, find_segments
from core.solution import Solution, SolutionSegment


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters (eval-mode tests)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
    return model.eval()


def random_solution(
    chain: Chain,
    rng: random.Random,
    *,
    max_length: int | None = None,
    removals: bool = True,
    method: str = "layermerge",
    segments: Iterable[Segment] | None = None,
) -> Solution:
    """A uniformly-ish random valid solution; shorter segments when ``max_length`` is given.

    ``segments`` are the chain's valid segments as its model family lists them (a UNet adds its
    identity upsamples); by default those of :func:`find_segments`.
    """
    by_start: dict[int, list] = {}
    if segments is None:
        segments = find_segments(chain, include_removals=removals)
    for segment in segments:
        by_start.setdefault(segment.start, []).append(segment)
    position, chosen = 0, []
    while position < chain.last_position:
        candidates = by_start[position]
        if max_length is not None:
            short = [s for s in candidates if s.end - s.start <= max_length]
            candidates = short or [min(candidates, key=lambda s: s.end)]
        segment = rng.choice(candidates)
        option = rng.choice(segment.options)
        chosen.append(
            SolutionSegment(
                segment.start,
                segment.end,
                option.kernel,
                option.depthwise,
                option.stride,
                option.kept_convs,
            )
        )
        position = segment.end
    boundaries = tuple(sorted({0, *(s.end for s in chosen)}))
    return Solution(method, 0.0, 0.0, 0.0, tuple(chosen), boundaries)


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


class _CifarBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(channels_out)
        self.c2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(channels_out)
        self.short = None
        if stride != 1 or channels_in != channels_out:
            self.short = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        skip = x if self.short is None else self.short(x)
        return torch.relu(out + skip)


class ResNet20(nn.Module):
    """A CIFAR-style ResNet-20 named nowhere in core/: proves tracing is general."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        blocks, channels = [], 16
        for out, stride in ((16, 1), (32, 2), (64, 2)):
            for k in range(3):
                blocks.append(_CifarBlock(channels, out, stride if k == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        return self.head(x.mean((2, 3)))


def resnet20() -> nn.Module:
    return ResNet20()


def run_cli(capsys, *args: str) -> tuple[int, str, str]:  # noqa: ANN001  (pytest's capsys)
    """(exit code, stdout, stderr) of ``python -m core ARGS``, run in this process."""
    from core.__main__ import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    """The single stderr line of a bad-input exit (code 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# A diffusers UNet2DModel config small enough to build, trace and finetune in a second: one
# channel, two levels, one attention block (the CLI and finetune tests of the UNet family).
TINY_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}
