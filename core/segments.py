"""Valid segments (i, j], their kernel options, and which convs each option keeps.

LAYERMERGE.md §1.3 defines validity; §1.4 the merged geometry of an option; §2.2 how the kept convs
are chosen. We choose, for every distinct (kernel, depthwise) option, the subset with the largest
total l1 weight norm over ALL qualifying subsets: within one conv type (kernel size, depthwise) the
best subset of a given size is simply that type's largest-norm convs, so the choice is exact without
enumerating subsets (the original keeps whichever count vector is enumerated last).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from core.chain import Chain, ConvSpec
from core.errors import InvalidSolutionError
from core.solution import Solution, SolutionSegment

__all__ = [
    "KernelOption",
    "Segment",
    "is_valid_segment",
    "valid_spans",
    "find_segments",
    "count_table_entries",
    "keep_everything_solution",
    "segment_geometry",
    "validate_solution",
    "span_stride",
]


@dataclass(frozen=True)
class KernelOption:
    """One way to collapse a segment: the merged conv's kernel, and the convs it keeps.

    ``kernel == 0`` (no kept convs) is the removal of a single reducible conv, used by the
    layer-only baseline.
    """

    kernel: int
    depthwise: bool
    stride: int
    kept_convs: tuple[int, ...]
    weight_l1: float = 0.0

    @property
    def is_removal(self) -> bool:
        return self.kernel == 0


@dataclass(frozen=True)
class Segment:
    """A valid segment (start, end] with its kernel options, largest kernel first."""

    start: int
    end: int
    options: tuple[KernelOption, ...]

    @property
    def convs(self) -> range:
        return range(self.start + 1, self.end + 1)

    @property
    def full_option(self) -> KernelOption:
        """The option that keeps every conv (what Kim23's depth compression can express)."""
        return next(o for o in self.options if len(o.kept_convs) == self.end - self.start)


def is_valid_segment(chain: Chain, start: int, end: int) -> bool:
    """LAYERMERGE.md §1.3: no break strictly inside, no partial overlap with a residual block."""
    if not 0 <= start < end <= chain.last_position:
        return False
    if any(start < b < end for b in chain.breaks):
        return False
    for span in chain.residuals:
        s, t = span.start, span.end
        if start < s < end < t or s < start < t < end:
            return False
    return True


def valid_spans(chain: Chain) -> list[tuple[int, int]]:
    """Every valid (start, end), ordered by end then start."""
    last = chain.last_position
    return [(i, j) for j in range(1, last + 1) for i in range(j) if is_valid_segment(chain, i, j)]


def find_segments(chain: Chain, *, include_removals: bool = False) -> tuple[Segment, ...]:
    """All valid segments of ``chain`` with their kernel options.

    Args:
        chain: the traced model.
        include_removals: also offer ``kernel == 0`` for single reducible convs (layer-only
            baseline entries).
    """
    return tuple(
        Segment(i, j, _options(chain, i, j, include_removals=include_removals))
        for i, j in valid_spans(chain)
    )


def count_table_entries(chain: Chain) -> int:
    """Number of (segment, option) latency-table entries (removals excluded)."""
    return sum(len(s.options) for s in find_segments(chain))


def segment_geometry(
    chain: Chain, start: int, end: int, kept_convs: tuple[int, ...]
) -> dict[str, int]:
    """The merged conv of a segment (§1.4): channels, kernel, stride, padding, groups.

    Channels come from the segment's first and last conv (pruned convs keep channels), so the
    geometry is right even when the first or last conv is pruned.
    """
    option = _option_for(chain, start, end, kept_convs)
    in_channels = chain.convs[start + 1].in_channels
    out_channels = chain.convs[end].out_channels
    return {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "kernel": option.kernel,
        "stride": option.stride,
        "padding": option.kernel // 2,
        "groups": in_channels if option.depthwise else 1,
        "input_height": chain.convs[start + 1].input_shape[1],
        "input_width": chain.convs[start + 1].input_shape[2],
    }


def keep_everything_solution(chain: Chain) -> Solution:
    """The identity solution: every position a boundary, every conv and activation kept."""
    segments = tuple(
        SolutionSegment(
            start=p - 1,
            end=p,
            kernel=chain.convs[p].kernel,
            depthwise=chain.convs[p].depthwise,
            stride=chain.convs[p].stride,
            kept_convs=(p,),
        )
        for p in range(1, chain.last_position + 1)
    )
    return Solution(
        method="keep_everything",
        budget_ms=0.0,
        latency_ms=0.0,
        importance=0.0,
        segments=segments,
        kept_activations=tuple(range(chain.last_position + 1)),
    )


def validate_solution(chain: Chain, solution: Solution) -> None:
    """Check that ``solution`` is a valid (A, C) for ``chain``.

    Raises:
        InvalidSolutionError: naming the first problem found (a gap, an invalid segment, a pruned
            irreducible conv, a kernel that does not match the kept convs, ...).
    """
    last = chain.last_position
    position = 0
    for seg in sorted(solution.segments, key=lambda s: s.start):
        if seg.start != position:
            raise InvalidSolutionError(
                f"segments must tile positions 0..{last}: expected a segment starting at "
                f"{position}, got ({seg.start}, {seg.end}]"
            )
        if not is_valid_segment(chain, seg.start, seg.end):
            raise InvalidSolutionError(
                f"segment ({seg.start}, {seg.end}] is not valid for this chain (it crosses a "
                "break or partially overlaps a residual block)"
            )
        _validate_kept(chain, seg)
        position = seg.end
    if position != last:
        raise InvalidSolutionError(f"segments end at position {position}, the chain at {last}")
    boundaries = set(solution.boundaries)
    if 0 not in solution.kept_activations:
        raise InvalidSolutionError("position 0 (the stem) must keep its activation")
    stray = sorted(set(solution.kept_activations) - boundaries)
    if stray:
        raise InvalidSolutionError(
            f"kept activations {stray} are not segment boundaries; an activation inside a "
            "segment would make it non-linear"
        )


def _validate_kept(chain: Chain, seg: SolutionSegment) -> None:
    where = f"segment ({seg.start}, {seg.end}]"
    inside = set(range(seg.start + 1, seg.end + 1))
    kept = set(seg.kept_convs)
    if not kept <= inside:
        raise InvalidSolutionError(f"{where} keeps convs {sorted(kept - inside)} outside it")
    if not kept:
        if seg.end - seg.start == 1 and chain.convs[seg.end].reducible and seg.kernel == 0:
            return
        raise InvalidSolutionError(
            f"{where} keeps no conv; only a single reducible conv may be removed (kernel 0)"
        )
    pruned_irreducible = [c for c in inside - kept if not chain.convs[c].reducible]
    if pruned_irreducible:
        raise InvalidSolutionError(
            f"{where} prunes convs {pruned_irreducible}, which change channels or stride and "
            "cannot be removed"
        )
    option = _option_for(chain, seg.start, seg.end, tuple(sorted(kept)))
    if (seg.kernel, seg.depthwise, seg.stride) != (option.kernel, option.depthwise, option.stride):
        raise InvalidSolutionError(
            f"{where} claims kernel {seg.kernel}, depthwise {seg.depthwise}, stride {seg.stride}, "
            f"but its kept convs {sorted(kept)} give kernel {option.kernel}, depthwise "
            f"{option.depthwise}, stride {option.stride}"
        )


def span_stride(chain: Chain, start: int, end: int) -> int:
    """Product of the strides of convs (start, end]: the stride of their merged conv."""
    return math.prod(c.stride for c in chain.convs[start + 1 : end + 1])


def _absorbs_dense_shortcut(chain: Chain, start: int, end: int) -> bool:
    """A block inside (start, end] whose skip is a 1x1 conv or an option-A subsample-and-pad.

    Either makes the merged kernel dense: the skip mixes (or moves) channels.
    """
    return any(not r.is_identity and start <= r.start and r.end <= end for r in chain.residuals)


def _option_for(chain: Chain, start: int, end: int, kept: tuple[int, ...]) -> KernelOption:
    convs = [chain.convs[c] for c in kept]
    stride = span_stride(chain, start, end)
    depthwise = all(c.depthwise for c in convs) and not _absorbs_dense_shortcut(chain, start, end)
    return KernelOption(
        kernel=1 + sum(c.kernel - 1 for c in convs),
        depthwise=depthwise,
        stride=stride,
        kept_convs=kept,
        weight_l1=sum(c.weight_l1 for c in convs),
    )


def _conv_type(conv: ConvSpec) -> tuple[int, bool]:
    return (conv.kernel, conv.depthwise)


def _options(
    chain: Chain, start: int, end: int, *, include_removals: bool
) -> tuple[KernelOption, ...]:
    """Best kept-conv subset for every distinct (kernel, depthwise) of segment (start, end]."""
    convs = chain.convs[start + 1 : end + 1]
    stride = span_stride(chain, start, end)
    dense_shortcut = _absorbs_dense_shortcut(chain, start, end)
    types = sorted({_conv_type(c) for c in convs})
    irreducible = {t: [c for c in convs if _conv_type(c) == t and not c.reducible] for t in types}
    # Within one type, the best n reducible convs are the n with the largest l1 norm.
    reducible = {
        t: sorted(
            (c for c in convs if _conv_type(c) == t and c.reducible),
            key=lambda c: (-c.weight_l1, c.index),
        )
        for t in types
    }
    best: dict[tuple[int, bool], KernelOption] = {}
    for counts in itertools.product(*(range(len(reducible[t]) + 1) for t in types)):
        kept = [
            c for t, n in zip(types, counts, strict=True) for c in irreducible[t] + reducible[t][:n]
        ]
        if not kept:
            continue
        kernel = 1 + sum(c.kernel - 1 for c in kept)
        depthwise = all(c.depthwise for c in kept) and not dense_shortcut
        l1 = sum(c.weight_l1 for c in kept)
        current = best.get((kernel, depthwise))
        if current is None or l1 > current.weight_l1:
            best[(kernel, depthwise)] = KernelOption(
                kernel=kernel,
                depthwise=depthwise,
                stride=stride,
                kept_convs=tuple(sorted(c.index for c in kept)),
                weight_l1=l1,
            )
    options = sorted(best.values(), key=lambda o: (-o.kernel, o.depthwise))
    if include_removals and end - start == 1 and convs[0].reducible:
        options.append(KernelOption(kernel=0, depthwise=False, stride=1, kept_convs=()))
    return tuple(options)
