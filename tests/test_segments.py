"""Valid segments, kernel options and the choice of kept convs (LAYERMERGE.md §1.3–1.4, §2.2)."""

from __future__ import annotations

import itertools
import random

import pytest
import torchvision

from core.chain import trace_chain
from core.errors import InvalidSolutionError
from core.segments import (
    find_segments,
    is_valid_segment,
    keep_everything_solution,
    validate_solution,
)
from core.solution import Solution, SolutionSegment
from tests.helpers import random_solution


@pytest.fixture(scope="module")
def resnet34_chain():
    return trace_chain(torchvision.models.resnet34(), 224)


@pytest.fixture(scope="module")
def mobilenet_chain():
    return trace_chain(torchvision.models.mobilenet_v2(), 224)


def test_validity_rule(resnet34_chain) -> None:
    chain = resnet34_chain
    assert is_valid_segment(chain, 0, 2)  # a whole block, skip absorbed
    assert is_valid_segment(chain, 0, 1)  # starts at the block start, ends inside
    assert not is_valid_segment(chain, 1, 3)  # leaves block (0,2] from inside into (2,4]
    assert not is_valid_segment(chain, 6, 8)  # crosses the break at 7
    assert is_valid_segment(chain, 7, 8)


def test_options_keep_all_irreducible_convs_and_max_l1(mobilenet_chain) -> None:
    chain = mobilenet_chain
    for segment in find_segments(chain):
        convs = range(segment.start + 1, segment.end + 1)
        irreducible = {c for c in convs if not chain.convs[c].reducible}
        keys = set()
        for option in segment.options:
            assert irreducible <= set(option.kept_convs)
            assert option.kernel == 1 + sum(chain.convs[c].kernel - 1 for c in option.kept_convs)
            keys.add((option.kernel, option.depthwise))
        assert len(keys) == len(segment.options)


def test_kept_convs_are_the_best_l1_over_all_subsets(resnet34_chain) -> None:
    """Exhaustive check: no qualifying subset has a larger l1 norm than the chosen one."""
    chain = resnet34_chain
    for segment in find_segments(chain):
        if segment.end - segment.start > 8:
            continue
        convs = list(range(segment.start + 1, segment.end + 1))
        reducible = [c for c in convs if chain.convs[c].reducible]
        fixed = [c for c in convs if not chain.convs[c].reducible]
        best: dict[tuple[int, bool], float] = {}
        for n in range(len(reducible) + 1):
            for subset in itertools.combinations(reducible, n):
                kept = fixed + list(subset)
                if not kept:
                    continue
                kernel = 1 + sum(chain.convs[c].kernel - 1 for c in kept)
                l1 = sum(chain.convs[c].weight_l1 for c in kept)
                key = (kernel, False)
                best[key] = max(best.get(key, 0.0), l1)
        for option in segment.options:
            assert option.weight_l1 == pytest.approx(best[(option.kernel, option.depthwise)])


def test_keep_everything_solution_is_valid(mobilenet_chain) -> None:
    validate_solution(mobilenet_chain, keep_everything_solution(mobilenet_chain))


def test_random_solutions_are_valid(mobilenet_chain) -> None:
    rng = random.Random(0)
    for _ in range(20):
        validate_solution(mobilenet_chain, random_solution(mobilenet_chain, rng))


def _one_segment(chain, start, end, kept, **overrides) -> Solution:
    segments = []
    for p in range(1, chain.last_position + 1):
        if start < p <= end:
            if p == end:
                conv = [chain.convs[c] for c in kept]
                stride = 1
                for c in chain.convs[start + 1 : end + 1]:
                    stride *= c.stride
                fields = dict(
                    kernel=1 + sum(c.kernel - 1 for c in conv),
                    depthwise=all(c.depthwise for c in conv),
                    stride=stride,
                )
                fields.update(overrides)
                segments.append(SolutionSegment(start, end, kept_convs=tuple(kept), **fields))
            continue
        c = chain.convs[p]
        segments.append(SolutionSegment(p - 1, p, c.kernel, c.depthwise, c.stride, (p,)))
    boundaries = tuple(sorted({0, *(s.end for s in segments)}))
    return Solution("test", 0.0, 0.0, 0.0, tuple(segments), boundaries)


def test_invalid_solutions_are_refused_with_the_reason(resnet34_chain, mobilenet_chain) -> None:
    with pytest.raises(InvalidSolutionError, match="prunes convs"):
        validate_solution(mobilenet_chain, _one_segment(mobilenet_chain, 5, 8, (6, 7)))
    chain = resnet34_chain
    with pytest.raises(InvalidSolutionError, match="not valid"):
        validate_solution(chain, _one_segment(chain, 6, 8, (7, 8)))
    with pytest.raises(InvalidSolutionError, match="claims kernel"):
        validate_solution(chain, _one_segment(chain, 0, 2, (1, 2), kernel=3))
    good = _one_segment(chain, 0, 2, (1, 2))
    gap = Solution("test", 0, 0, 0, good.segments[1:], good.kept_activations)
    with pytest.raises(InvalidSolutionError, match="tile"):
        validate_solution(chain, gap)
    stray = Solution("test", 0, 0, 0, good.segments, (0, 1, 2))
    with pytest.raises(InvalidSolutionError, match="not segment boundaries"):
        validate_solution(chain, stray)
