"""A LayerMerge solution applied to a UNet: the training form (LAYERMERGE.md §5.1, DDPM).

A ResnetBlock2D whose inner GroupNorm -> SiLU -> Dropout is removed becomes a
:class:`LinearizedResnetBlock`: norm2 and SiLU are dropped, all padding moves to the block's first
op, pruned convs become identity, and a new GroupNorm "post-norm" follows conv2. Then
``conv1 -> + time embedding -> conv2`` is linear with no zero padding inside it, so
:mod:`core.families.unet.merge` can collapse it into one conv exactly. A block that keeps its
activation keeps its own forward, with a conv replaced by identity where the layer-only baseline
removes it; an upsample conv chosen as identity is replaced by ``nn.Identity`` (its nearest
upsampling stays).

Every form is described by a JSON-able *structure* (which blocks are linearized or merged, which
convs are kept, which upsample convs are identity). ``config + structure + state_dict`` rebuilds
any form from scratch, which is how finetune checkpoints and compressed checkpoints are stored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InvalidSolutionError
from core.families.unet.chain import UNetChain
from core.segments import validate_solution
from core.solution import Solution

__all__ = [
    "LinearizedResnetBlock",
    "structure_from_solution",
    "keep_everything_structure",
    "apply_structure",
    "build_unet_training_network",
    "get_submodule_parent",
]

STRUCTURE_VERSION = 1


class LinearizedResnetBlock(nn.Module):
    """A ResnetBlock2D without its inner activation, padded once so that it merges exactly.

    forward: norm1 -> SiLU -> pad(p1 + p2) -> conv1 (valid) -> + temb -> conv2 (valid) ->
    post-norm, plus the skip (pre-activation residual, unchanged). Adding the time embedding
    after the padding, on the enlarged map, is what makes it equal to adding ``(sum W2) temb``
    after the merged conv (§5.3 item 6). Parameter names match the original block's, so its
    weights load as they are; ``postnorm`` is new (GroupNorm with norm2's groups, gamma 1, beta 0).
    """

    def __init__(self, block: nn.Module, *, keep_conv1: bool, keep_conv2: bool) -> None:
        super().__init__()
        if not (keep_conv1 or keep_conv2):
            raise InvalidSolutionError("a merged ResnetBlock2D must keep conv1 or conv2")
        self.norm1 = block.norm1
        self.nonlinearity = block.nonlinearity
        self.padding = (block.conv1.padding[0] if keep_conv1 else 0) + (
            block.conv2.padding[0] if keep_conv2 else 0
        )
        self.conv1 = _unpadded(block.conv1) if keep_conv1 else None
        self.time_emb_proj = block.time_emb_proj
        self.skip_time_act = bool(block.skip_time_act)
        self.conv2 = _unpadded(block.conv2) if keep_conv2 else None
        out_channels = block.conv2.out_channels
        reference = block.conv2.weight
        self.postnorm = nn.GroupNorm(block.norm2.num_groups, out_channels, eps=block.norm2.eps).to(
            device=reference.device, dtype=reference.dtype
        )
        self.merge = True  # False: a depth-method split keeps conv1 and conv2 as two convs
        self.conv_shortcut = block.conv_shortcut
        self.output_scale_factor = float(block.output_scale_factor)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs):
        hidden = self.nonlinearity(self.norm1(input_tensor))
        if self.padding:
            hidden = F.pad(hidden, (self.padding,) * 4)
        if self.conv1 is not None:
            hidden = self.conv1(hidden)
        if self.time_emb_proj is not None and temb is not None:
            time = temb if self.skip_time_act else self.nonlinearity(temb)
            hidden = hidden + self.time_emb_proj(time)[:, :, None, None]
        if self.conv2 is not None:
            hidden = self.conv2(hidden)
        hidden = self.postnorm(hidden)
        skip = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return (skip + hidden) / self.output_scale_factor


def keep_everything_structure() -> dict[str, Any]:
    return {"version": STRUCTURE_VERSION, "merged": False, "blocks": {}, "identity_upsamples": []}


def structure_from_solution(uchain: UNetChain, solution: Solution) -> dict[str, Any]:
    """Which blocks lose their activation, which convs are kept, which upsamples are identity.

    Raises:
        InvalidSolutionError: the solution does not fit the UNet's chain.
    """
    validate_solution(uchain.chain, solution)
    kept = set(solution.kept_convs)
    activations = set(solution.kept_activations)
    structure = keep_everything_structure()
    for block in uchain.blocks:
        keep1, keep2 = block.conv1 in kept, block.conv2 in kept
        if block.conv1 not in activations:
            # One segment (conv1 - 1, conv2] merges; two (Kim23's depth method splits an
            # activation-free span into the fastest consecutive convs) stay two convs.
            split = any(s.end == block.conv1 for s in solution.segments)
            structure["blocks"][block.name] = {
                "form": "linearized",
                "conv1": keep1,
                "conv2": keep2,
                "merge": not split,
            }
        elif not (keep1 and keep2):
            structure["blocks"][block.name] = {"form": "pruned", "conv1": keep1, "conv2": keep2}
    for position in range(1, uchain.last_position + 1):
        if position in kept:
            continue
        if position in uchain.upsample_convs:
            structure["identity_upsamples"].append(uchain.chain.convs[position].name)
        elif uchain.block_with_conv(position) is None:
            raise InvalidSolutionError(
                f"conv {position} ({uchain.chain.convs[position].name}) cannot be removed"
            )
    return structure


def apply_structure(
    unet: nn.Module,
    structure: dict[str, Any],
    *,
    merged_block: Callable[[LinearizedResnetBlock], nn.Module] | None = None,
) -> nn.Module:
    """Replace blocks and convs of ``unet`` in place as ``structure`` says; returns ``unet``.

    With ``structure["merged"]`` each linearized block becomes ``merged_block(linearized)``: a
    merged shell (:func:`core.families.unet.merge.merged_shell`) to be filled by a state_dict.
    The merger is passed in because merging builds on this module, not the other way round.
    """
    if structure.get("merged") and merged_block is None:
        raise InvalidSolutionError(
            "a merged UNet structure needs merged_block (core.families.unet.merge.merged_shell)"
        )
    if int(structure.get("version", 0)) != STRUCTURE_VERSION:
        raise InvalidSolutionError(f"unknown UNet structure version {structure.get('version')!r}")
    for name, spec in structure["blocks"].items():
        parent, attr = get_submodule_parent(unet, name)
        block = getattr(parent, attr)
        keep1, keep2 = bool(spec["conv1"]), bool(spec["conv2"])
        if spec["form"] == "pruned":
            if not keep1:
                block.conv1 = nn.Identity()
            if not keep2:
                block.conv2 = nn.Identity()
            continue
        if spec["form"] != "linearized":
            raise InvalidSolutionError(f"unknown block form {spec['form']!r} for {name}")
        linear = LinearizedResnetBlock(block, keep_conv1=keep1, keep_conv2=keep2)
        linear.merge = bool(spec.get("merge", True))
        if structure.get("merged") and linear.merge:
            linear = merged_block(linear)
        setattr(parent, attr, linear)
    for name in structure["identity_upsamples"]:
        parent, attr = get_submodule_parent(unet, name)
        setattr(parent, attr, nn.Identity())
    return unet


def build_unet_training_network(
    unet: nn.Module, uchain: UNetChain, solution: Solution
) -> tuple[nn.Module, dict[str, Any]]:
    """The training form of ``solution``: a copy of ``unet`` with its weights, and its structure."""
    structure = structure_from_solution(uchain, solution)
    network = apply_structure(copy.deepcopy(unet), structure)
    return network.eval(), structure


def get_submodule_parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute it is held under."""
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
        getattr(parent, attr)
    except AttributeError as exc:
        raise InvalidSolutionError(f"the UNet has no module {name!r}") from exc
    return parent, attr


def _unpadded(conv: nn.Conv2d) -> nn.Conv2d:
    clone = copy.deepcopy(conv)
    clone.padding = (0, 0)
    return clone
