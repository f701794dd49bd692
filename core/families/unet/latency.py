"""What a UNet's latency table times for each entry (LAYERMERGE.md §3, DDPM row).

:func:`core.latency.measure_latency` measures every family's table; the UNet family says, through
these functions, what the compressed UNet runs for an entry, at the entry's true input shape:

- conv1 alone (the block keeps its activation): ``conv1 -> + temb -> GroupNorm -> SiLU``;
- conv2 alone, a down/upsample conv: the conv;
- a merged block (conv1 - 1, conv2]: ``conv K -> + temb' -> post-norm``;
- an identity upsample: nothing runs (a removal option of ``unet_segments``: latency 0), listed in
  ``latency.csv`` so that LayerMerge may choose it (see ``core.tables.TableEntry``).

So the keep-everything sum covers every conv, norm and SiLU the solution changes; what no solution
changes (conv_in, norm1, attention, skips, concatenations, the time MLP, conv_out) is left out and
shows as the (negative) ``additivity_error`` against the whole UNet, timed as :class:`UNetForward`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.families.unet.chain import UNetChain
from core.segments import KernelOption, Segment
from core.tables import TableEntry

__all__ = [
    "UNetForward",
    "entry_geometry",
    "geometry_module",
    "entry_module",
    "measure_unet_latency",
]

TIMING_TIMESTEP = 500  # the timestep the whole-network timing uses (any fixed one will do)
WEIGHT_SEED = 0  # random weights of the timed modules (their values do not change the timing)


class UNetForward(nn.Module):
    """``unet(x, t).sample`` with a fixed timestep: one tensor in, one out, so it can be timed."""

    def __init__(self, unet: nn.Module, timestep: int = TIMING_TIMESTEP) -> None:
        super().__init__()
        self.unet = unet
        self.timestep = timestep

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        steps = torch.full(
            (sample.shape[0],), self.timestep, dtype=torch.long, device=sample.device
        )
        return self.unet(sample, steps).sample


class _AddTimeEmbedding(nn.Module):
    """Adds a per-channel constant, as ``+ time_emb_proj(temb)[:, :, None, None]`` does."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("temb", torch.randn(1, channels, 1, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.temb


def entry_geometry(uchain: UNetChain, segment: Segment, option: KernelOption) -> dict[str, Any]:
    """What the compressed UNet runs for one entry that is not an identity, as JSON values.

    ``norm_groups`` is set when the merged conv starts its block (conv1 is the segment's first
    conv: the block's ``+ temb`` and post-norm follow it), ``silu`` when the block also keeps its
    activation (the segment ends at conv1).
    """
    convs = uchain.chain.convs
    first, last = convs[segment.start + 1], convs[segment.end]
    block = uchain.block_with_conv(segment.end)
    starts_block = block is not None and segment.start + 1 == block.conv1
    return {
        "in_channels": first.in_channels,
        "out_channels": last.out_channels,
        "kernel": option.kernel,
        "stride": option.stride,
        "time_embedding": bool(starts_block and block.time_embedding),
        "norm_groups": block.groups if starts_block else None,
        "silu": bool(starts_block and segment.end == block.conv1),
        "input_shape": list(first.input_shape),
    }


def geometry_module(geometry: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...]]:
    """The module :func:`entry_geometry` describes, with seeded random weights, and its input's
    shape per sample."""
    out_channels = geometry["out_channels"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        conv = nn.Conv2d(
            geometry["in_channels"],
            out_channels,
            geometry["kernel"],
            stride=geometry["stride"],
            padding=geometry["kernel"] // 2,
            bias=True,
        )
        layers: list[nn.Module] = [conv]
        if geometry["time_embedding"]:
            layers.append(_AddTimeEmbedding(out_channels))
        if geometry["norm_groups"] is not None:
            layers.append(nn.GroupNorm(geometry["norm_groups"], out_channels))
        if geometry["silu"]:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers).eval(), tuple(geometry["input_shape"])


def entry_module(uchain: UNetChain, segment: Segment, option: KernelOption) -> nn.Module:
    """What the compressed UNet runs for one table entry, with seeded random weights."""
    return geometry_module(entry_geometry(uchain, segment, option))[0]


def measure_unet_latency(
    bundle: Any,
    uchain: UNetChain,
    config: Any = None,
    *,
    out: str | Path | None = None,
    progress: Any = None,
) -> tuple[tuple[TableEntry, ...], dict[str, Any]]:
    """:func:`core.latency.measure_latency` for a UNet, as ``(entries, meta)``.

    Kept for callers written before the tables were one pipeline (the app's UNet page); new code
    calls :func:`core.workflows.tables.profile` or :func:`core.latency.measure_latency`.
    """
    from core.families.base import family_named
    from core.latency import measure_latency

    table = measure_latency(
        bundle, uchain, config, family=family_named("unet"), out=out, progress=progress
    )
    return table.entries, table.meta
