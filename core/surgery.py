"""(A, C) -> the training-form network (LAYERMERGE.md §5.1).

The training form is the network that gets finetuned: activations outside A become identities,
pruned convs and their BNs disappear, and inside every segment all padding moves to the segment's
first conv. "Pad once, then valid convs with BN in between" is exactly one conv with that padding
(BN biases propagate through later convs without meeting zero padding), so after finetuning each
segment merges into one conv with no error (core.merge).

Moving the padding makes the maps inside a segment larger than in the original network, by a
border ``e`` that shrinks conv by conv. A residual add inside a segment therefore crops the skip
map by ``e_s - e_t * stride`` before adding: that is the same alignment as the centre tap at which
the merged kernel absorbs the skip.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.chain import Chain
from core.network import StepNetwork, conv_step, spec_version
from core.segments import keep_everything_solution, span_stride, validate_solution
from core.solution import Solution

__all__ = ["build_training_network", "activation_plan", "original_network"]


def activation_plan(chain: Chain, solution: Solution) -> dict[int, str]:
    """Which activation runs at each position of the training form (§1.2).

    A boundary in A keeps its original activation. A boundary in A that was linear in the original
    (a MobileNetV2 bottleneck output) gets the chain's default activation when the span of
    positions since the previous activation boundary is longer than one: merging happened there,
    as the paper's ``fix_act`` does. Positions outside A get none.
    """
    plan: dict[int, str] = {}
    previous = 0
    for position in sorted(solution.kept_activations):
        original = chain.activations[position]
        if original is not None:
            plan[position] = original
        elif position - previous > 1 and chain.default_activation is not None:
            plan[position] = chain.default_activation
        previous = position
    return plan


def build_training_network(model: nn.Module, chain: Chain, solution: Solution) -> StepNetwork:
    """The training-form network of ``solution``, with weights copied from ``model``.

    Returns a new module; ``model`` is left untouched (it may be shared, e.g. by a cache).

    Raises:
        InvalidSolutionError: the solution is not valid for the chain.
    """
    validate_solution(chain, solution)
    modules = dict(model.named_modules())
    spec, sources = _training_spec(chain, solution, modules)
    network = StepNetwork(spec, initialize=False)
    for name, source in sources.items():
        network.layers[name].load_state_dict(source.state_dict(), strict=True)
    network.train(model.training)
    return network


def original_network(model: nn.Module, chain: Chain) -> StepNetwork:
    """The original model rebuilt as a StepNetwork (every conv and activation kept)."""
    return build_training_network(model, chain, keep_everything_solution(chain))


def _training_spec(
    chain: Chain, solution: Solution, modules: dict[str, nn.Module]
) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    steps: list[dict[str, Any]] = []
    sources: dict[str, nn.Module] = {}
    acts = activation_plan(chain, solution)
    starts = {r.start: r for r in chain.residuals}
    ends = {r.end: r for r in chain.residuals}
    saved_border: dict[int, int] = {}

    def add_conv(position: int, padding: int) -> None:
        spec = chain.convs[position]
        conv = modules[spec.name]
        bn = modules[spec.bn] if spec.bn else None
        steps.append(
            conv_step(
                f"conv{position}",
                conv,
                padding=padding,
                bn=bn,
                bn_name=f"bn{position}" if bn is not None else None,
            )
        )
        sources[f"conv{position}"] = conv
        if bn is not None:
            sources[f"bn{position}"] = bn

    def finish_position(position: int) -> None:
        if position in acts:
            steps.append({"op": "act", "name": f"act{position}", "kind": acts[position]})
        for k, op in enumerate(chain.post_ops[position]):
            name = f"op{position}_{k}"
            steps.append({"op": "fixed", "name": name, "kind": op.kind, "params": op.params})
            if op.module is not None:
                sources[name] = modules[op.module]

    def save_if_residual_start(position: int, border: int) -> None:
        if position in starts:
            steps.append({"op": "save", "slot": position})
            saved_border[position] = border

    def add_if_residual_end(position: int, border: int) -> None:
        if position not in ends:
            return
        span = ends[position]
        stride = span_stride(chain, span.start, span.end)
        crop = saved_border[span.start] - border * stride
        step: dict[str, Any] = {"op": "add", "slot": span.start, "crop": crop, "shortcut": None}
        if span.shortcut is not None:
            name = f"shortcut{span.start}_{span.end}"
            conv = modules[span.shortcut]
            bn = modules[span.shortcut_bn] if span.shortcut_bn else None
            bn_name = f"shortcut_bn{span.start}_{span.end}" if bn is not None else None
            step["shortcut"] = conv_step(name, conv, padding=0, bn=bn, bn_name=bn_name)
            step["shortcut"].pop("op")
            sources[name] = conv
            if bn is not None:
                sources[bn_name] = bn
        elif span.channel_pad is not None:  # option A: no weights, nothing to copy
            step["zero_pad_shortcut"] = {
                "stride": span.shortcut_stride,
                "channels": list(span.channel_pad),
            }
        steps.append(step)

    # Conv 0, the stem: always kept, original padding.
    add_conv(0, chain.convs[0].padding)
    finish_position(0)
    for segment in sorted(solution.segments, key=lambda s: s.start):
        kept = set(segment.kept_convs)
        total_padding = sum(chain.convs[c].padding for c in kept)
        if total_padding:
            steps.append({"op": "pad", "amount": total_padding})
        # A skip leaving the segment's start is saved padded, like the map the segment sees.
        save_if_residual_start(segment.start, total_padding)
        for position in range(segment.start + 1, segment.end + 1):
            if position in kept:
                add_conv(position, 0)
            # border left after this position: the padding still owed to later kept convs
            border = sum(chain.convs[c].padding for c in kept if c > position)
            add_if_residual_end(position, border)
            if position == segment.end:
                finish_position(position)
            elif position in starts:
                save_if_residual_start(position, border)
    spec = {
        "version": spec_version(steps),
        "form": "training",
        "input_shape": list(chain.input_shape),
        "steps": steps,
    }
    return spec, sources
