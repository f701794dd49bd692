"""A diffusers UNet2DModel traced into LayerMerge's chain (LAYERMERGE.md §1.1 DDPM row, §1.3).

The DDPM index space: every main-path conv in forward order, recorded with forward hooks (so the
shapes are the true ones): ``conv_in`` (position 0, always kept), ``conv1`` and ``conv2`` of each
ResnetBlock2D, and the down/upsample convs. Shortcut convs (``conv_shortcut``) and ``conv_out``
are fixed, as are attention blocks, norms and the time embedding.

The one removable "activation" of a ResnetBlock2D is its inner GroupNorm -> SiLU -> Dropout,
between conv1 and conv2. Every other position is a break, so a segment either is one conv or
spans (conv1 - 1, conv2] of one block; an upsample conv (3x3, channels kept) may become the
identity (kernel 0, latency 0), the one removal LayerMerge itself may choose (§1.2).

The result is an ordinary :class:`core.chain.Chain` (so ``core.segments``, ``core.tables`` and the
DP serve it unchanged) wrapped in :class:`UNetChain`, which adds the block structure that surgery
and merging need. Anything outside what merging is exact for (a ResnetBlock2D that up- or
downsamples, scale-shift time conditioning, an unknown conv) is refused naming the module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.chain import Chain, ConvSpec
from core.errors import UnsupportedLayerError
from core.segments import Segment, find_segments

__all__ = ["ResnetBlockSpec", "UNetChain", "trace_unet", "unet_segments", "unet_table_entries"]

UNET_CHAIN_VERSION = 1
INNER_ACTIVATION = "groupnorm_silu"  # the removable GroupNorm -> SiLU -> Dropout of a ResnetBlock2D


@dataclass(frozen=True)
class ResnetBlockSpec:
    """One ResnetBlock2D: its module path, its two conv positions and what surrounds them."""

    name: str
    conv1: int
    conv2: int
    in_channels: int
    out_channels: int
    shortcut: bool  # a conv_shortcut (1x1 or 3x3) on the skip: the block changes channels
    time_embedding: bool  # time_emb_proj adds the projected time embedding after conv1
    groups: int  # GroupNorm groups of norm2 (reused for the post-norm of a merged block)


@dataclass(frozen=True)
class UNetChain:
    """A traced UNet: the generic :class:`Chain` plus the UNet's block structure."""

    chain: Chain
    blocks: tuple[ResnetBlockSpec, ...]
    upsample_convs: tuple[int, ...]  # positions of upsample convs (each may become identity)
    downsample_convs: tuple[int, ...]
    attention_blocks: tuple[str, ...]
    config: dict[str, Any]

    @property
    def last_position(self) -> int:
        return self.chain.last_position

    def block_with_conv(self, position: int) -> ResnetBlockSpec | None:
        return next((b for b in self.blocks if position in (b.conv1, b.conv2)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": UNET_CHAIN_VERSION,
            "chain": self.chain.to_dict(),
            "blocks": [asdict(b) for b in self.blocks],
            "upsample_convs": list(self.upsample_convs),
            "downsample_convs": list(self.downsample_convs),
            "attention_blocks": list(self.attention_blocks),
        }

    def digest(self) -> str:
        """Structure digest (weights excluded): part of table cache keys."""
        data = self.to_dict()
        for conv in data["chain"]["convs"]:
            conv.pop("weight_l1")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def trace_unet(unet: nn.Module, *, batch: int = 1) -> UNetChain:
    """Trace a diffusers UNet2DModel into its chain, with forward hooks at its own sample size.

    Raises:
        UnsupportedLayerError: a module merging is not exact for, named.
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.downsampling import Downsample2D
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.upsampling import Upsample2D

    config = dict(getattr(unet, "config", {}) or {})
    if not hasattr(unet, "conv_in") or not hasattr(unet, "conv_out"):
        raise UnsupportedLayerError(
            f"{type(unet).__name__} is not a diffusers UNet2DModel (no conv_in / conv_out)"
        )
    roles: dict[str, str] = {"conv_in": "in", "conv_out": "out"}
    blocks_by_conv: dict[str, tuple[str, ResnetBlock2D]] = {}
    attention: list[str] = []
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            _check_block(name, module)
            roles[f"{name}.conv1"] = "conv1"
            roles[f"{name}.conv2"] = "conv2"
            if module.conv_shortcut is not None:
                roles[f"{name}.conv_shortcut"] = "shortcut"
            blocks_by_conv[f"{name}.conv1"] = (name, module)
        elif isinstance(module, Upsample2D | Downsample2D):
            kind = "up" if isinstance(module, Upsample2D) else "down"
            conv = getattr(module, "conv", None)
            if isinstance(conv, nn.Conv2d):
                roles[f"{name}.conv"] = kind
        elif isinstance(module, Attention):
            attention.append(name)
    for name, module in unet.named_modules():
        if isinstance(module, nn.Conv2d) and name not in roles:
            raise UnsupportedLayerError(
                f"conv {name!r} ({type(module).__name__}) has no known role in a UNet2DModel "
                "(conv_in, ResnetBlock2D conv1/conv2/conv_shortcut, up/downsample conv, conv_out)"
            )

    order: list[tuple[str, nn.Conv2d, tuple[int, ...], tuple[int, ...]]] = []
    hooks = []
    for name, module in unet.named_modules():
        if isinstance(module, nn.Conv2d) and roles.get(name) not in ("shortcut", "out"):
            hooks.append(
                module.register_forward_hook(
                    lambda m, i, o, n=name: order.append((n, m, tuple(i[0].shape), tuple(o.shape)))
                )
            )
    size = config.get("sample_size") or 32
    size_hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    channels = int(config.get("in_channels", 3))
    was_training = unet.training
    try:
        unet.eval()
        with torch.no_grad():
            unet(torch.zeros(batch, channels, *size_hw), torch.zeros(batch, dtype=torch.long))
    except (RuntimeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise UnsupportedLayerError(
            f"the UNet does not run on a {channels}x{size_hw[0]}x{size_hw[1]} sample (its "
            f"sample_size must divide by 2 per down block): {detail}"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
        unet.train(was_training)

    if not order or order[0][0] != "conv_in":
        raise UnsupportedLayerError("the UNet's first conv is not conv_in")
    convs: list[ConvSpec] = []
    activations: list[str | None] = []
    activation_modules: list[str | None] = []
    blocks: list[ResnetBlockSpec] = []
    upsample: list[int] = []
    downsample: list[int] = []
    for index, (name, conv, in_shape, out_shape) in enumerate(order):
        if any(o[0] == name for o in order[:index]):
            raise UnsupportedLayerError(f"conv {name!r} runs twice in one forward pass")
        role = roles[name]
        convs.append(_conv_spec(index, name, conv, in_shape, out_shape, mergeable=role != "down"))
        activations.append(INNER_ACTIVATION if role == "conv1" else None)
        activation_modules.append(None)
        if role == "conv1":
            block_name, block = blocks_by_conv[name]
            if index + 1 >= len(order) or order[index + 1][0] != f"{block_name}.conv2":
                raise UnsupportedLayerError(
                    f"{block_name}: conv2 does not follow conv1 in the forward pass"
                )
            blocks.append(
                ResnetBlockSpec(
                    name=block_name,
                    conv1=index,
                    conv2=index + 1,
                    in_channels=int(block.conv1.in_channels),
                    out_channels=int(block.conv2.out_channels),
                    shortcut=block.conv_shortcut is not None,
                    time_embedding=block.time_emb_proj is not None,
                    groups=int(block.norm2.num_groups),
                )
            )
        elif role == "up":
            upsample.append(index)
        elif role == "down":
            downsample.append(index)
    inner = {b.conv1 for b in blocks}
    last = len(convs) - 1
    chain = Chain(
        convs=tuple(convs),
        activations=tuple(activations),
        activation_modules=tuple(activation_modules),
        residuals=(),
        breaks=frozenset(p for p in range(last + 1) if p not in inner),
        post_ops=tuple(() for _ in convs),
        input_shape=(channels, *size_hw),
        default_activation="silu",
    )
    return UNetChain(
        chain=chain,
        blocks=tuple(blocks),
        upsample_convs=tuple(upsample),
        downsample_convs=tuple(downsample),
        attention_blocks=tuple(attention),
        config={k: v for k, v in config.items() if not k.startswith("_")},
    )


def unet_segments(uchain: UNetChain) -> tuple[Segment, ...]:
    """Valid segments with their options; upsample convs also get the identity (kernel 0)."""
    segments = []
    upsample = set(uchain.upsample_convs)
    for segment in find_segments(uchain.chain, include_removals=True):
        options = tuple(o for o in segment.options if not o.is_removal or segment.end in upsample)
        segments.append(Segment(segment.start, segment.end, options))
    return tuple(segments)


def unet_table_entries(uchain: UNetChain) -> int:
    """Rows of the UNet's latency table: every option, identity upsamples included."""
    return sum(len(s.options) for s in unet_segments(uchain))


def _conv_spec(
    index: int,
    name: str,
    conv: nn.Conv2d,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    *,
    mergeable: bool,
) -> ConvSpec:
    """The conv's geometry. Only convs that may merge or vanish must be 'same'-padded: a
    downsample conv (irreducible, always its own segment) may pad asymmetrically, as the DDPM
    CIFAR-10 UNet's does (``downsample_padding=0``: pad (0, 1, 0, 1), then a valid stride-2 conv)."""
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    if len(set(kernel)) != 1 or len(set(stride)) != 1 or not isinstance(padding, tuple):
        raise UnsupportedLayerError(f"conv {name!r} has a non-square kernel, stride or padding")
    if conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise UnsupportedLayerError(f"conv {name!r} is dilated or not zero-padded")
    if mergeable and (padding[0] != padding[1] or padding[0] != kernel[0] // 2):
        raise UnsupportedLayerError(f"conv {name!r} is not 'same'-padded (padding {padding})")
    return ConvSpec(
        index=index,
        name=name,
        kernel=int(kernel[0]),
        stride=int(stride[0]),
        padding=int(padding[0]),
        groups=int(conv.groups),
        in_channels=int(conv.in_channels),
        out_channels=int(conv.out_channels),
        input_shape=tuple(int(s) for s in in_shape[1:]),
        output_shape=tuple(int(s) for s in out_shape[1:]),
        bias=conv.bias is not None,
        bn=None,
        weight_l1=float(conv.weight.detach().abs().sum()),
    )


def _check_block(name: str, block: nn.Module) -> None:
    if block.upsample is not None or block.downsample is not None:
        raise UnsupportedLayerError(
            f"{name}: a ResnetBlock2D that up- or downsamples (ResnetDownsampleBlock2D / "
            "ResnetUpsampleBlock2D) is not supported: its resampling sits between norm and conv1"
        )
    if block.time_embedding_norm != "default":
        raise UnsupportedLayerError(
            f"{name}: time_embedding_norm {block.time_embedding_norm!r} is not supported; only "
            "'default' (the time embedding added after conv1) merges exactly"
        )
    if not isinstance(block.conv1, nn.Conv2d) or not isinstance(block.conv2, nn.Conv2d):
        raise UnsupportedLayerError(f"{name}: conv1/conv2 are not plain Conv2d modules")
    if not isinstance(block.nonlinearity, nn.SiLU):
        raise UnsupportedLayerError(
            f"{name}: nonlinearity {type(block.nonlinearity).__name__} is not supported (SiLU is)"
        )
