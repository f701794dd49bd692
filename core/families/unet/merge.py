"""Merging a linearized ResnetBlock2D into one conv (LAYERMERGE.md §5.3 item 6).

K = W2 * W1 (full convolution over space, matrix product over channels), b = b2 + (sum W2) b1, and
the time-embedding projection pushed through conv2: W_t' = (sum_uv W2) W_t, b_t' = (sum_uv W2) b_t.
The merged block runs norm1 -> SiLU -> conv K (padding p1 + p2) -> + temb' -> post-norm, with the
skip unchanged. All arithmetic is float64 (``core.merge``'s kernel composition), cast back at the end.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from core.families.unet.surgery import LinearizedResnetBlock
from core.merge import compose, fold_bn

__all__ = ["MergedResnetBlock", "merge_unet", "merged_shell"]


class MergedResnetBlock(nn.Module):
    """A ResnetBlock2D whose conv1 -> temb -> conv2 is one conv plus a pushed-through temb."""

    def __init__(
        self,
        *,
        norm1: nn.GroupNorm,
        conv: nn.Conv2d,
        time_emb_proj: nn.Linear | None,
        skip_time_act: bool,
        postnorm: nn.GroupNorm,
        conv_shortcut: nn.Module | None,
        output_scale_factor: float,
    ) -> None:
        super().__init__()
        self.norm1 = norm1
        self.nonlinearity = nn.SiLU()
        self.conv = conv
        self.time_emb_proj = time_emb_proj
        self.skip_time_act = skip_time_act
        self.postnorm = postnorm
        self.conv_shortcut = conv_shortcut
        self.output_scale_factor = output_scale_factor

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs):
        hidden = self.conv(self.nonlinearity(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and temb is not None:
            time = temb if self.skip_time_act else self.nonlinearity(temb)
            hidden = hidden + self.time_emb_proj(time)[:, :, None, None]
        hidden = self.postnorm(hidden)
        skip = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return (skip + hidden) / self.output_scale_factor

    @classmethod
    def from_linearized(
        cls, block: LinearizedResnetBlock, *, fill: bool = True
    ) -> MergedResnetBlock:
        """The merged block; ``fill=False`` only shapes it (weights come from a state_dict)."""
        first = fold_bn(block.conv1, None) if block.conv1 is not None else None
        second = fold_bn(block.conv2, None) if block.conv2 is not None else None
        kernel = compose(first, second)
        assert kernel is not None  # LinearizedResnetBlock keeps at least one conv
        out_channels, in_channels, size, _ = kernel.weight.shape
        reference = (block.conv1 or block.conv2).weight
        conv = nn.Conv2d(in_channels, out_channels, size, padding=block.padding, bias=True).to(
            device=reference.device, dtype=reference.dtype
        )
        time_proj = copy.deepcopy(block.time_emb_proj)
        if fill:
            with torch.no_grad():
                conv.weight.copy_(kernel.weight.to(reference.dtype))
                conv.bias.copy_(kernel.bias.to(reference.dtype))
                if time_proj is not None and second is not None:
                    taps = second.weight.sum(dim=(2, 3))  # (C2, C1): conv2 on a constant map
                    weight = taps @ block.time_emb_proj.weight.detach().double()
                    bias = taps @ block.time_emb_proj.bias.detach().double()
                    time_proj.weight.copy_(weight.to(reference.dtype))
                    time_proj.bias.copy_(bias.to(reference.dtype))
        return cls(
            norm1=copy.deepcopy(block.norm1),
            conv=conv,
            time_emb_proj=time_proj,
            skip_time_act=block.skip_time_act,
            postnorm=copy.deepcopy(block.postnorm),
            conv_shortcut=copy.deepcopy(block.conv_shortcut),
            output_scale_factor=block.output_scale_factor,
        )


def merged_shell(block: LinearizedResnetBlock) -> MergedResnetBlock:
    """A merged block shaped like ``block`` would merge, weights unfilled (a state_dict fills it)."""
    return MergedResnetBlock.from_linearized(block, fill=False)


def merge_unet(training: nn.Module) -> nn.Module:
    """A copy of a training-form UNet with every linearized block merged into one conv.

    A block a depth-method solution splits (``merge`` False) keeps its two convs.
    """
    merged = copy.deepcopy(training)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LinearizedResnetBlock) and module.merge:
            parent_name, _, attr = name.rpartition(".")
            parent = merged.get_submodule(parent_name) if parent_name else merged
            setattr(parent, attr, MergedResnetBlock.from_linearized(module))
    return merged.eval()
