"""The training-form network -> the deployable merged network (LAYERMERGE.md §5.3).

Per segment, the kept convs are folded with their BNs and composed into ONE conv:

1. BN folding: W' = s W, b' = s (b - mu) + beta with s = gamma / sqrt(var + eps).
2. Composition of A (first) then B: K[o, i] = sum_m W_B[o, m] * W_A[m, i] with * the FULL 2-D
   convolution (size k_A + k_B - 1), bias b = b_B + sum_m (sum_uv W_B[o, m]) b_A[m], stride
   s_A s_B. Valid because a stride only ever precedes 1x1 convs inside a segment (§1.3 breaks).
3. Depthwise kernels stay (C, 1, K, K) while both sides are depthwise, and are expanded only
   when meeting a dense conv, so MobileNetV2's wide depthwise convs never become C x C dense.
4. A residual block lying wholly inside a segment is merged into its own kernel K_b, then its skip
   is added at the centre tap: +1 on the diagonal (identity), + the folded 1x1 shortcut, or, for
   the "option A" subsample-and-zero-pad shortcut, + its fixed 1x1 strided kernel (1 from each
   original channel to its padded position, zeros for the padded channels).

Blocks with a boundary inside them stay real residual adds around their segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.chain import Chain, ResidualSpan
from core.network import StepNetwork, spec_version
from core.segments import validate_solution
from core.solution import Solution
from core.surgery import activation_plan, build_training_network

__all__ = ["Kernel", "fold_bn", "compose", "merge", "merge_model"]


@dataclass
class Kernel:
    """A linear conv map: weight, bias and stride; ``depthwise`` weights are (C, 1, K, K)."""

    weight: torch.Tensor  # (Cout, Cin, K, K) dense, or (C, 1, K, K) depthwise
    bias: torch.Tensor  # (Cout,)
    stride: int
    depthwise: bool

    @property
    def size(self) -> int:
        return self.weight.shape[-1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def dense(self) -> Kernel:
        """The same map with a dense (C, C, K, K) weight."""
        if not self.depthwise:
            return self
        channels, _, size, _ = self.weight.shape
        weight = self.weight.new_zeros(channels, channels, size, size)
        index = torch.arange(channels)
        weight[index, index] = self.weight[:, 0]
        return Kernel(weight, self.bias, self.stride, False)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> Kernel:
    """Fold ``bn`` (eval statistics) into ``conv``'s weight and bias (§5.3 step 1)."""
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else weight.new_zeros(conv.out_channels)
    )
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = scale * (bias - bn.running_mean.double()) + bn.bias.detach().double()
    groups = conv.groups
    depthwise = groups > 1 and groups == conv.in_channels == conv.out_channels
    if groups > 1 and not depthwise:
        weight = _grouped_to_dense(weight, groups)
    return Kernel(weight, bias, conv.stride[0], depthwise)


def compose(first: Kernel | None, second: Kernel | None) -> Kernel | None:
    """The single conv equal to ``first`` then ``second`` (§5.3 step 3); None is identity."""
    if first is None:
        return second
    if second is None:
        return first
    if first.stride > 1 and second.size > 1:
        raise RuntimeError("a strided conv can only be followed by 1x1 convs inside a segment")
    weight = _compose_weights(first, second)
    tap_sums = second.weight.sum(dim=(2, 3))  # (C2, C1) or (C, 1)
    if second.depthwise:
        bias = second.bias + tap_sums[:, 0] * first.bias
    else:
        bias = second.bias + tap_sums @ first.bias
    return Kernel(
        weight.contiguous(),
        bias,
        first.stride * second.stride,
        first.depthwise and second.depthwise,
    )


def merge(training: StepNetwork, chain: Chain, solution: Solution) -> StepNetwork:
    """Collapse every segment of the (finetuned) training-form network into one conv.

    Args:
        training: the network from :func:`core.surgery.build_training_network` (or its finetuned
            copy) for the same ``chain`` and ``solution``.
        chain: the traced original model.
        solution: the (A, C) the training network was built for.

    Returns:
        A new StepNetwork (``spec["form"] == "merged"``) in eval mode, equal to ``training`` in
        eval mode up to float rounding. Composition runs in float64.
    """
    validate_solution(chain, solution)
    layers = training.layers
    acts = activation_plan(chain, solution)
    boundaries = set(solution.boundaries)
    absorbed = {r for r in chain.residuals if not any(r.start < b < r.end for b in boundaries)}
    kept_residuals = [r for r in chain.residuals if r not in absorbed]
    starts = {r.start for r in kept_residuals}
    ends = {r.end: r for r in kept_residuals}
    steps: list[dict[str, Any]] = []
    weights: dict[str, dict[str, torch.Tensor]] = {}

    def emit_conv(name: str, kernel: Kernel, padding: int) -> dict[str, Any]:
        channels_in = kernel.out_channels if kernel.depthwise else kernel.weight.shape[1]
        step = {
            "op": "conv",
            "name": name,
            "in_channels": channels_in,
            "out_channels": kernel.out_channels,
            "kernel": kernel.size,
            "stride": kernel.stride,
            "padding": padding,
            "groups": channels_in if kernel.depthwise else 1,
            "bias": True,
            "bn": None,
        }
        weights[name] = {"weight": kernel.weight.float(), "bias": kernel.bias.float()}
        return step

    def finish_position(position: int) -> None:
        if position in acts:
            steps.append({"op": "act", "name": f"act{position}", "kind": acts[position]})
        for k, op in enumerate(chain.post_ops[position]):
            name = f"op{position}_{k}"
            steps.append({"op": "fixed", "name": name, "kind": op.kind, "params": op.params})
            weights[name] = {k2: v.detach() for k2, v in layers[name].state_dict().items()}
        if position in starts:
            steps.append({"op": "save", "slot": position})

    stem = fold_bn(layers["conv0"], layers["bn0"] if "bn0" in layers else None)
    steps.append(emit_conv("conv0", stem, chain.convs[0].padding))
    finish_position(0)
    for segment in sorted(solution.segments, key=lambda s: s.start):
        kernel = _segment_kernel(layers, chain, segment.start, segment.end, absorbed)
        if kernel is not None:
            name = f"merged{segment.start}_{segment.end}"
            steps.append(emit_conv(name, kernel, kernel.size // 2))
        if segment.end in ends:
            span = ends[segment.end]
            step: dict[str, Any] = {"op": "add", "slot": span.start, "crop": 0, "shortcut": None}
            if span.shortcut is not None:
                shortcut = _shortcut_kernel(layers, span.start, span.end)
                name = f"shortcut{span.start}_{span.end}"
                step["shortcut"] = emit_conv(name, shortcut, 0)
                step["shortcut"].pop("op")
            elif span.channel_pad is not None:
                step["zero_pad_shortcut"] = {
                    "stride": span.shortcut_stride,
                    "channels": list(span.channel_pad),
                }
            steps.append(step)
        finish_position(segment.end)
    spec = {
        "version": spec_version(steps),
        "form": "merged",
        "input_shape": list(chain.input_shape),
        "steps": steps,
    }
    merged = StepNetwork(spec, initialize=False)
    for name, state in weights.items():
        merged.layers[name].load_state_dict(state)
    return merged.eval()


def merge_model(model: nn.Module, chain: Chain, solution: Solution) -> StepNetwork:
    """Surgery then merge, straight from the original model (no finetuning in between)."""
    training = build_training_network(model, chain, solution).eval()
    return merge(training, chain, solution)


def _segment_kernel(
    layers: nn.ModuleDict, chain: Chain, start: int, end: int, absorbed: set
) -> Kernel | None:
    """Compose segment (start, end] into one kernel, absorbing residual blocks inside it."""
    inner = {r.start: r for r in absorbed if start <= r.start and r.end <= end}
    stack: list[tuple[Kernel | None, Any]] = []
    running: Kernel | None = None
    if start in inner:
        stack.append((running, inner[start]))
        running = None
    for position in range(start + 1, end + 1):
        key = f"conv{position}"
        if key in layers:
            bn_key = f"bn{position}"
            running = compose(
                running, fold_bn(layers[key], layers[bn_key] if bn_key in layers else None)
            )
        while stack and stack[-1][1].end == position:
            prefix, span = stack.pop()
            body = running
            if body is None:
                channels = chain.convs[span.start + 1].in_channels
                body = Kernel(
                    torch.ones(channels, 1, 1, 1, dtype=torch.float64),
                    torch.zeros(channels, dtype=torch.float64),
                    1,
                    True,
                )
            running = compose(prefix, _add_skip(layers, body, span))
        if position in inner and position < end:
            stack.append((running, inner[position]))
            running = None
    return running


def _add_skip(layers: nn.ModuleDict, body: Kernel, span: ResidualSpan) -> Kernel:
    """Add a residual skip at the centre tap of the block's merged kernel (§5.3 step 5)."""
    mid = body.size // 2
    if span.is_identity:
        weight = body.weight.clone()
        if body.depthwise:
            weight[:, 0, mid, mid] += 1.0
        else:
            index = torch.arange(weight.shape[0])
            weight[index, index, mid, mid] += 1.0
        return Kernel(weight, body.bias, body.stride, body.depthwise)
    if span.shortcut is not None:
        shortcut = _shortcut_kernel(layers, span.start, span.end)
    else:
        shortcut = _zero_pad_kernel(span, body.weight.dtype)
    if shortcut.stride != body.stride:
        raise RuntimeError(
            f"shortcut stride {shortcut.stride} differs from its block's stride {body.stride}"
        )
    dense = body.dense()
    weight = dense.weight.clone()
    weight[:, :, mid, mid] += shortcut.weight[:, :, 0, 0]
    return Kernel(weight, dense.bias + shortcut.bias, body.stride, False)


def _zero_pad_kernel(span: ResidualSpan, dtype: torch.dtype) -> Kernel:
    """The option-A shortcut as the fixed 1x1 strided conv it equals.

    ``F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, before, after))``: output channel ``before + c`` is
    input channel ``c`` taken every ``s`` pixels; the padded channels are zero.
    """
    before, _ = span.channel_pad or (0, 0)
    channels_in, channels_out = span.shortcut_in_channels, span.shortcut_out_channels
    weight = torch.zeros(channels_out, channels_in, 1, 1, dtype=dtype)  # (Cout, Cin, 1, 1)
    index = torch.arange(channels_in)
    weight[before + index, index, 0, 0] = 1.0
    return Kernel(weight, torch.zeros(channels_out, dtype=dtype), span.shortcut_stride, False)


def _shortcut_kernel(layers: nn.ModuleDict, start: int, end: int) -> Kernel:
    conv = layers[f"shortcut{start}_{end}"]
    bn_key = f"shortcut_bn{start}_{end}"
    return fold_bn(conv, layers[bn_key] if bn_key in layers else None).dense()


def _compose_weights(first: Kernel, second: Kernel) -> torch.Tensor:
    """Full convolution of the two kernels over space, matrix product over channels.

    K[o, i, b + a] += W_B[o, m, b] W_A[m, i, a], summed over m, for every tap b of the second
    kernel: k_B^2 matrix products, which BLAS runs far faster than a float64 conv2d.
    """
    size_a, size_b = first.size, second.size
    size = size_a + size_b - 1
    depthwise = first.depthwise and second.depthwise
    if depthwise:
        channels_out, channels_in = first.out_channels, 1
    else:
        channels_out = second.out_channels
        channels_in = first.out_channels if first.depthwise else first.weight.shape[1]
    weight = first.weight.new_zeros(channels_out, channels_in, size, size)
    first_flat = first.weight.reshape(first.weight.shape[0], -1)  # (C1, Cin * kA * kA)
    for bu in range(size_b):
        for bv in range(size_b):
            tap = second.weight[:, :, bu, bv]  # (C2, C1) or (C, 1)
            if second.depthwise:
                # (C, 1) * (C, Cin, kA, kA): scale each output channel
                part = tap[:, :, None, None] * first.weight
            elif first.depthwise:
                # (C2, C0) * (1, C0, kA, kA): depthwise A seen as a diagonal
                part = tap[:, :, None, None] * first.weight[:, 0][None]
            else:
                part = (tap @ first_flat).reshape(channels_out, channels_in, size_a, size_a)
            weight[:, :, bu : bu + size_a, bv : bv + size_a] += part
    return weight


def _grouped_to_dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(Cout, Cin/g, k, k) grouped weight -> block-diagonal (Cout, Cin, k, k)."""
    out_channels, per_group_in, size, _ = weight.shape
    per_group_out = out_channels // groups
    dense = weight.new_zeros(out_channels, per_group_in * groups, size, size)
    for g in range(groups):
        rows = slice(g * per_group_out, (g + 1) * per_group_out)
        cols = slice(g * per_group_in, (g + 1) * per_group_in)
        dense[rows, cols] = weight[rows]
    return dense
