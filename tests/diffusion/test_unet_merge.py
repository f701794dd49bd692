"""Diffusion UNets (diffusers UNet2DModel): trace, training form, exact merging (LAYERMERGE §5.3.6).

Everything here runs real diffusers models built from configs; nothing is mocked. The checks:
the DDPM index space of the demo UNet and of a configuration named nowhere in core/, refusal of
ResnetBlock2Ds merging is not exact for, merged == training form (block level and whole UNet, with
the time embedding and distinct timesteps in one batch), the keep-everything structure, the
``config + structure + state_dict`` rebuild, invalid solutions, fewer convs, and DDIM sampling.
"""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from torch import nn

from core.errors import InvalidSolutionError, UnsupportedLayerError
from core.families.unet.chain import (
    INNER_ACTIVATION,
    UNetChain,
    trace_unet,
    unet_segments,
    unet_table_entries,
)
from core.families.unet.merge import MergedResnetBlock, merge_unet, merged_shell
from core.families.unet.surgery import (
    LinearizedResnetBlock,
    apply_structure,
    build_unet_training_network,
    structure_from_solution,
)
from core.families.unet.unet import DEMO_UNET_CONFIG, unet_from_config
from core.segments import keep_everything_solution
from core.solution import Solution, SolutionSegment
from tests.helpers import random_solution, relative_error

TOLERANCE = 1e-4

# A configuration named nowhere in core/: three levels, two resnets per level, attention in the
# middle level only, RGB input, channels 24/48/48 (a channel change only at the first step down).
UNSEEN_CONFIG = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "layers_per_block": 2,
    "block_out_channels": [24, 48, 48],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}

DEMO_CONV_NAMES = [
    "conv_in",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.0.resnets.0.conv2",
    "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0.conv1",
    "down_blocks.1.resnets.0.conv2",
    "mid_block.resnets.0.conv1",
    "mid_block.resnets.0.conv2",
    "mid_block.resnets.1.conv1",
    "mid_block.resnets.1.conv2",
    "up_blocks.0.resnets.0.conv1",
    "up_blocks.0.resnets.0.conv2",
    "up_blocks.0.resnets.1.conv1",
    "up_blocks.0.resnets.1.conv2",
    "up_blocks.0.upsamplers.0.conv",
    "up_blocks.1.resnets.0.conv1",
    "up_blocks.1.resnets.0.conv2",
    "up_blocks.1.resnets.1.conv1",
    "up_blocks.1.resnets.1.conv2",
]


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, UNetChain]:
    unet = randomize_groupnorms(unet_from_config(DEMO_UNET_CONFIG), seed=11)
    return unet, trace_unet(unet)


@pytest.fixture(scope="module")
def unseen() -> tuple[nn.Module, UNetChain]:
    unet = randomize_groupnorms(unet_from_config(UNSEEN_CONFIG), seed=12)
    return unet, trace_unet(unet)


def randomize_groupnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine parameters for every GroupNorm (post-norms of a training form too)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm) and module.affine:
                n = module.num_channels
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
    return model.eval()


def unet_inputs(config: dict, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images and DISTINCT timesteps, one per image."""
    generator = torch.Generator().manual_seed(seed)
    size = config["sample_size"]
    x = torch.randn(batch, config["in_channels"], size, size, generator=generator)
    t = torch.tensor([999, 417, 3, 250, 731, 60][:batch], dtype=torch.long)
    assert len(set(t.tolist())) == batch
    return x, t


def run(unet: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t).sample


def count_convs(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))


def pattern_solution(uchain: UNetChain, keep: str, *, identity_upsamples: bool) -> Solution:
    """Every block's inner activation removed, keeping conv1+conv2 ("both"), conv1 ("conv1") or
    conv2 where conv1 is reducible, conv1 otherwise ("conv2"); upsample convs optionally identity.
    """
    chain = uchain.chain
    segments, position = [], 1
    while position <= chain.last_position:
        conv = chain.convs[position]
        block = uchain.block_with_conv(position)
        if block is not None and block.conv1 == position:
            if keep == "both":
                kept = (block.conv1, block.conv2)
            elif keep == "conv2" and chain.convs[block.conv1].reducible:
                kept = (block.conv2,)
            else:
                kept = (block.conv1,)
            kernel = 1 + sum(chain.convs[c].kernel - 1 for c in kept)
            segments.append(SolutionSegment(position - 1, block.conv2, kernel, False, 1, kept))
            position = block.conv2 + 1
            continue
        if identity_upsamples and position in uchain.upsample_convs:
            segments.append(SolutionSegment(position - 1, position, 0, False, 1, ()))
        else:
            segments.append(
                SolutionSegment(
                    position - 1, position, conv.kernel, conv.depthwise, conv.stride, (position,)
                )
            )
        position += 1
    boundaries = tuple(sorted({0, *(s.end for s in segments)}))
    return Solution("test", 0.0, 0.0, 0.0, tuple(segments), boundaries)


def training_and_merged(
    unet: nn.Module, uchain: UNetChain, solution: Solution, seed: int
) -> tuple[nn.Module, nn.Module, dict]:
    training, structure = build_unet_training_network(unet, uchain, solution)
    randomize_groupnorms(training, seed=seed)  # post-norms are gamma 1 / beta 0 otherwise
    return training, merge_unet(training), structure


# ----------------------------------------------------------------------------------------------
# 1. the demo UNet's index space


def test_demo_trace_positions_names_breaks_and_reducibility(demo) -> None:
    _, uchain = demo
    chain = uchain.chain
    names = [c.name for c in chain.convs]
    assert names == DEMO_CONV_NAMES
    assert [c.index for c in chain.convs] == list(range(len(names)))
    assert chain.last_position == len(names) - 1 == 18
    assert not any("conv_shortcut" in n or n == "conv_out" for n in names)

    conv1 = {b.conv1 for b in uchain.blocks}
    assert [(b.conv1, b.conv2) for b in uchain.blocks] == [
        (1, 2), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (15, 16), (17, 18)
    ]  # fmt: skip
    assert chain.breaks == frozenset(range(19)) - conv1
    assert [p for p, a in enumerate(chain.activations) if a == INNER_ACTIVATION] == sorted(conv1)
    assert uchain.downsample_convs == (3,)
    assert uchain.upsample_convs == (14,)
    assert len(uchain.attention_blocks) == 4

    for block in uchain.blocks:
        changes = block.in_channels != block.out_channels
        assert block.shortcut == changes, block.name
        assert block.time_embedding, block.name
        assert chain.convs[block.conv1].reducible == (not changes), block.name
        assert chain.convs[block.conv2].reducible, block.name  # conv2 keeps its channels
    assert not chain.convs[0].reducible  # conv_in: 1 -> 16 channels
    assert chain.convs[3].stride == 2 and not chain.convs[3].reducible
    assert chain.convs[14].stride == 1 and chain.convs[14].reducible
    assert chain.convs[14].input_shape == (32, 16, 16)  # after the nearest upsampling
    # channel-changing conv1s: the 16 -> 32 block and every up block (skip concatenations)
    assert [c.index for c in chain.convs if not c.reducible] == [0, 3, 4, 10, 12, 15, 17]


def test_demo_segment_options_identity_only_at_upsample(demo) -> None:
    _, uchain = demo
    segments = unet_segments(uchain)
    removals = [(s.start, s.end) for s in segments for o in s.options if o.is_removal]
    assert removals == [(13, 14)]
    upsample = next(s for s in segments if (s.start, s.end) == (13, 14))
    assert [o.kernel for o in upsample.options] == [3, 0]
    assert unet_table_entries(uchain) == sum(len(s.options) for s in segments) == 35
    multi = [(s.start, s.end) for s in segments if s.end - s.start > 1]
    assert multi == [(b.conv1 - 1, b.conv2) for b in uchain.blocks]
    for segment in segments:
        if segment.end - segment.start > 1:
            block = uchain.block_with_conv(segment.end)
            kernels = sorted(o.kernel for o in segment.options)
            assert kernels == [3, 5], segment  # conv1 or conv2 alone, or both merged
            if block.shortcut:  # conv1 irreducible: the 3x3 option must keep it
                small = next(o for o in segment.options if o.kernel == 3)
                assert small.kept_convs == (block.conv1,)


# ----------------------------------------------------------------------------------------------
# 2. a configuration named nowhere in core/, and configurations merging is not exact for


def test_unseen_config_traces(unseen) -> None:
    unet, uchain = unseen
    chain = uchain.chain
    resnets = [n for n, m in unet.named_modules() if type(m).__name__ == "ResnetBlock2D"]
    num_down = len(UNSEEN_CONFIG["block_out_channels"]) - 1
    num_up = num_down
    assert len(resnets) == 3 * 2 + 2 + 3 * 3 == 17
    assert len(chain.convs) == 1 + 2 * len(resnets) + num_down + num_up == 39
    assert [b.name for b in uchain.blocks] == _forward_order(resnets)
    assert len(uchain.downsample_convs) == num_down and len(uchain.upsample_convs) == num_up
    assert chain.convs[0].name == "conv_in" and chain.input_shape == (3, 8, 8)
    assert all(chain.convs[p].stride == 2 for p in uchain.downsample_convs)
    assert chain.convs[uchain.downsample_convs[-1]].output_shape == (48, 2, 2)
    assert chain.convs[uchain.upsample_convs[-1]].output_shape == (48, 8, 8)
    assert chain.breaks == frozenset(range(39)) - {b.conv1 for b in uchain.blocks}
    assert len(uchain.attention_blocks) == 2 + 3 + 1  # down level 1, up level 1, mid

    segments = unet_segments(uchain)
    for segment in segments:
        if segment.end - segment.start == 1:
            continue
        block = uchain.block_with_conv(segment.end)
        assert block is not None and (segment.start, segment.end) == (block.conv1 - 1, block.conv2)
    assert sum(1 for s in segments if s.end - s.start > 1) == len(uchain.blocks)
    removals = {s.end for s in segments for o in s.options if o.is_removal}
    assert removals == set(uchain.upsample_convs)
    assert unet_table_entries(uchain) == sum(len(s.options) for s in segments)


def _forward_order(resnets: list[str]) -> list[str]:
    """named_modules order is down, up, mid; the forward order is down, mid, up."""
    down = [r for r in resnets if r.startswith("down_blocks")]
    mid = [r for r in resnets if r.startswith("mid_block")]
    up = [r for r in resnets if r.startswith("up_blocks")]
    return down + mid + up


@pytest.mark.parametrize(
    ("change", "block_name"),
    [
        ({"resnet_time_scale_shift": "scale_shift"}, "down_blocks.0.resnets.0"),
        (
            {"down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"]},
            "down_blocks.0.downsamplers.0",
        ),
        (
            {"up_block_types": ["ResnetUpsampleBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
            "up_blocks.0.upsamplers.0",
        ),
    ],
    ids=["scale_shift", "resnet_downsample", "resnet_upsample"],
)
def test_unsupported_resnet_blocks_are_refused_by_name(change, block_name) -> None:
    unet = unet_from_config(UNSEEN_CONFIG | change)
    with pytest.raises(UnsupportedLayerError, match=block_name.replace(".", r"\.")):
        trace_unet(unet)


# ----------------------------------------------------------------------------------------------
# 3. merging is exact: one ResnetBlock2D, then whole UNets


def _resnet_block(in_channels: int, out_channels: int, seed: int) -> nn.Module:
    from diffusers.models.resnet import ResnetBlock2D

    torch.manual_seed(seed)
    block = ResnetBlock2D(
        in_channels=in_channels, out_channels=out_channels, temb_channels=20, groups=4
    )
    return randomize_groupnorms(block, seed=seed)


BLOCK_CASES = [
    (16, 16, True, True),
    (16, 16, True, False),
    (16, 16, False, True),
    (8, 16, True, True),
    (8, 16, True, False),
]


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "keep1", "keep2"),
    BLOCK_CASES,
    ids=["same-both", "same-conv1", "same-conv2", "change-both", "change-conv1"],
)
def test_merged_resnet_block_equals_linearized(in_channels, out_channels, keep1, keep2) -> None:
    block = _resnet_block(in_channels, out_channels, seed=in_channels + 2 * keep1 + keep2)
    assert (block.conv_shortcut is not None) == (in_channels != out_channels)
    linear = randomize_groupnorms(
        LinearizedResnetBlock(block, keep_conv1=keep1, keep_conv2=keep2), seed=5
    )
    merged = MergedResnetBlock.from_linearized(linear).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, in_channels, 9, 9, generator=generator) * 2.0
    temb = torch.randn(3, 20, generator=generator) * 3.0
    with torch.no_grad():
        expected, got = linear(x, temb), merged(x, temb)
        assert expected.shape == got.shape == (3, out_channels, 9, 9)
        assert relative_error(expected, got) <= TOLERANCE
        # the time embedding really matters (a merged block ignoring it would fail above)
        assert relative_error(expected, linear(x, torch.zeros_like(temb))) > 1e-2
    kernel = 1 + 2 * keep1 + 2 * keep2
    assert merged.conv.kernel_size == (kernel, kernel)
    assert merged.conv.padding == (kernel // 2, kernel // 2)


def test_linearized_block_is_the_block_without_its_inner_activation() -> None:
    """Keeping both convs, the linearized body is the original block's with norm2 -> SiLU removed,
    except on the border ring where the moved zero padding differs (post-norm left out)."""
    block = _resnet_block(16, 16, seed=3)
    linear = LinearizedResnetBlock(block, keep_conv1=True, keep_conv2=True).eval()
    linear.postnorm = nn.Identity()
    reference = copy.deepcopy(block)
    reference.norm2 = nn.Identity()
    reference.nonlinearity = _SiLUOnce()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 12, 12, generator=generator)
    temb = torch.randn(2, 20, generator=generator)
    with torch.no_grad():
        ref, lin = reference(x, temb), linear(x, temb)
    assert reference.nonlinearity.calls == 3  # norm1, temb, the removed inner activation
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert relative_error(ref[inner], lin[inner]) <= 1e-5
    assert relative_error(ref, lin) > 1e-3  # the ring does differ: padding moved to the front


class _SiLUOnce(nn.Module):
    """SiLU for norm1 and the time embedding, identity for the removed inner activation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x if self.calls % 3 == 0 else torch.nn.functional.silu(x)


@pytest.mark.parametrize("keep", ["both", "conv1", "conv2"])
def test_whole_unet_pattern_merges_are_exact(demo, keep) -> None:
    unet, uchain = demo
    solution = pattern_solution(uchain, keep, identity_upsamples=keep == "conv2")
    training, merged, structure = training_and_merged(unet, uchain, solution, seed=21)
    assert set(structure["blocks"]) == {b.name for b in uchain.blocks}
    assert all(s["form"] == "linearized" for s in structure["blocks"].values())
    assert structure["identity_upsamples"] == (
        ["up_blocks.0.upsamplers.0.conv"] if keep == "conv2" else []
    )
    assert sum(isinstance(m, MergedResnetBlock) for m in merged.modules()) == len(uchain.blocks)
    assert not any(isinstance(m, LinearizedResnetBlock) for m in merged.modules())
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    expected, got = run(training, x, t), run(merged, x, t)
    assert relative_error(expected, got) <= TOLERANCE
    # the timesteps reach the merged blocks: per-image outputs change with t
    assert relative_error(got, run(merged, x, t.flip(0))) > 1e-3


def test_whole_unet_random_solutions_merge_exactly(demo, unseen) -> None:
    seen = {"linearized_shortcut": False, "linearized_plain": False, "pruned": False}
    seen_identity = False
    for (unet, uchain), config, count in ((demo, DEMO_UNET_CONFIG, 10), (unseen, UNSEEN_CONFIG, 3)):
        rng = random.Random(7)
        x, t = unet_inputs(config, batch=3, seed=count)
        for index in range(count):
            solution = random_solution(uchain.chain, rng, removals=True)
            training, merged, structure = training_and_merged(unet, uchain, solution, seed=index)
            expected, got = run(training, x, t), run(merged, x, t)
            assert relative_error(expected, got) <= TOLERANCE, solution.segments
            for block in uchain.blocks:
                spec = structure["blocks"].get(block.name)
                if spec is None:
                    continue
                if spec["form"] == "pruned":
                    seen["pruned"] = True
                elif block.shortcut:
                    seen["linearized_shortcut"] = True
                else:
                    seen["linearized_plain"] = True
            seen_identity |= bool(structure["identity_upsamples"])
    assert all(seen.values()) and seen_identity, (seen, seen_identity)


# ----------------------------------------------------------------------------------------------
# 4. keep everything; 5. config + structure + state_dict; 6. invalid; 7. fewer convs


def test_keep_everything_reproduces_the_original(demo) -> None:
    unet, uchain = demo
    training, structure = build_unet_training_network(
        unet, uchain, keep_everything_solution(uchain.chain)
    )
    assert structure["blocks"] == {} and structure["identity_upsamples"] == []
    assert training is not unet
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    assert torch.equal(run(unet, x, t), run(training, x, t))
    assert torch.equal(run(unet, x, t), run(merge_unet(training), x, t))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_config_structure_and_state_dict_rebuild_the_merged_unet(demo, seed) -> None:
    unet, uchain = demo
    solution = random_solution(uchain.chain, random.Random(100 + seed), removals=True)
    if seed == 0:  # make sure one case merges every block and drops the upsample conv
        solution = pattern_solution(uchain, "conv2", identity_upsamples=True)
    _, merged, structure = training_and_merged(unet, uchain, solution, seed=seed)
    stored = json.loads(json.dumps(structure))  # what a checkpoint keeps
    rebuilt = apply_structure(
        unet_from_config(DEMO_UNET_CONFIG, seed=99),
        stored | {"merged": True},
        merged_block=merged_shell,
    )
    rebuilt.load_state_dict(merged.state_dict())  # strict: same keys, same shapes
    rebuilt.eval()
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    assert torch.equal(run(merged, x, t), run(rebuilt, x, t))


def test_config_structure_and_state_dict_rebuild_the_training_form(demo) -> None:
    unet, uchain = demo
    solution = random_solution(uchain.chain, random.Random(5), removals=True)
    training, _, structure = training_and_merged(unet, uchain, solution, seed=4)
    rebuilt = apply_structure(unet_from_config(DEMO_UNET_CONFIG, seed=98), structure)
    rebuilt.load_state_dict(training.state_dict())
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    assert torch.equal(run(training, x, t), run(rebuilt.eval(), x, t))


def _single(chain, position: int) -> SolutionSegment:
    conv = chain.convs[position]
    return SolutionSegment(position - 1, position, conv.kernel, False, conv.stride, (position,))


def _with_segments(uchain: UNetChain, replaced: dict[int, SolutionSegment]) -> Solution:
    """Keep-everything, with the segments starting at the given positions replaced."""
    chain = uchain.chain
    segments, position = [], 0
    while position < chain.last_position:
        segment = replaced.get(position, _single(chain, position + 1))
        segments.append(segment)
        position = segment.end
    boundaries = tuple(sorted({0, *(s.end for s in segments)}))
    return Solution("test", 0.0, 0.0, 0.0, tuple(segments), boundaries)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("remove_downsample", "keeps no conv"),
        ("cross_block_boundary", "not valid"),
        ("span_two_blocks", "not valid"),
        ("remove_irreducible_conv1", "prunes convs"),
        ("block_segment_keeping_nothing", "keeps no conv"),
    ],
)
def test_invalid_solutions_are_refused(demo, case, message) -> None:
    unet, uchain = demo
    down = uchain.downsample_convs[0]  # 3
    if case == "remove_downsample":
        replaced = {down - 1: SolutionSegment(down - 1, down, 0, False, 1, ())}
    elif case == "cross_block_boundary":  # conv2 of block 0 with the downsample conv
        replaced = {1: SolutionSegment(1, 3, 5, False, 2, (2, 3))}
    elif case == "span_two_blocks":  # both mid-block resnets in one segment
        replaced = {5: SolutionSegment(5, 9, 9, False, 1, (6, 7, 8, 9))}
    elif case == "remove_irreducible_conv1":  # block 16 -> 32 keeping only conv2
        replaced = {3: SolutionSegment(3, 5, 3, False, 1, (5,))}
    else:
        replaced = {0: SolutionSegment(0, 2, 0, False, 1, ())}
    solution = _with_segments(uchain, replaced)
    with pytest.raises(InvalidSolutionError, match=message):
        structure_from_solution(uchain, solution)
    with pytest.raises(InvalidSolutionError, match=message):
        build_unet_training_network(unet, uchain, solution)


def test_apply_structure_refuses_unknown_modules_and_versions() -> None:
    unet = unet_from_config(DEMO_UNET_CONFIG)
    bad_name = {
        "version": 1,
        "merged": False,
        "blocks": {"down_blocks.7.resnets.0": {"form": "linearized", "conv1": True, "conv2": True}},
        "identity_upsamples": [],
    }
    with pytest.raises(InvalidSolutionError):
        apply_structure(unet, bad_name)
    with pytest.raises(InvalidSolutionError):
        apply_structure(unet, bad_name | {"version": 99})
    neither = {
        "version": 1,
        "merged": False,
        "blocks": {"mid_block.resnets.0": {"form": "linearized", "conv1": False, "conv2": False}},
        "identity_upsamples": [],
    }
    with pytest.raises(InvalidSolutionError):
        apply_structure(unet, neither)


def test_merged_unet_has_fewer_convs(demo) -> None:
    unet, uchain = demo
    before = count_convs(unet)
    shortcuts = sum(b.shortcut for b in uchain.blocks)
    assert before == len(uchain.chain.convs) + shortcuts + 1  # + conv_out
    for identity in (False, True):
        solution = pattern_solution(uchain, "both", identity_upsamples=identity)
        training, merged, _ = training_and_merged(unet, uchain, solution, seed=3)
        removed = len(uchain.upsample_convs) if identity else 0
        assert count_convs(training) == before - removed
        assert count_convs(merged) == before - len(uchain.blocks) - removed
        assert count_convs(unet) == before  # the source UNet is untouched


def test_merge_leaves_training_form_untouched(demo) -> None:
    unet, uchain = demo
    solution = pattern_solution(uchain, "both", identity_upsamples=False)
    training, _ = build_unet_training_network(unet, uchain, solution)
    before = {k: v.clone() for k, v in training.state_dict().items()}
    merge_unet(training)
    assert all(torch.equal(v, before[k]) for k, v in training.state_dict().items())
    assert sum(isinstance(m, LinearizedResnetBlock) for m in training.modules()) == 8


# ----------------------------------------------------------------------------------------------
# 8. sampling


def test_sampling_merged_equals_training_form(demo) -> None:
    sampling = pytest.importorskip("core.families.unet.sampling")
    unet, uchain = demo
    solution = random_solution(uchain.chain, random.Random(3), removals=True)
    training, merged, _ = training_and_merged(unet, uchain, solution, seed=8)
    expected = sampling.ddim_sample(training, 4, steps=5, seed=123)
    got = sampling.ddim_sample(merged, 4, steps=5, seed=123)
    assert expected.shape == got.shape == (4, 1, 16, 16)
    assert float((expected.abs() < 0.99).float().mean()) > 0.5  # not clamped flat to +-1
    assert float((expected - got).abs().max()) <= 1e-3
    assert not torch.equal(expected, sampling.ddim_sample(merged, 4, steps=5, seed=124))


# ----------------------------------------------------------------------------------------------
# gaps found in review: DDPM CIFAR-10 downsample padding, non-square samples, dtype


def test_ddpm_cifar10_style_downsample_padding_traces_and_merges() -> None:
    config = UNSEEN_CONFIG | {"downsample_padding": 0, "freq_shift": 1, "flip_sin_to_cos": False}
    unet = randomize_groupnorms(unet_from_config(config), seed=13)
    uchain = trace_unet(unet)
    assert len(uchain.chain.convs) == 39
    solution = pattern_solution(uchain, "both", identity_upsamples=True)
    training, merged, _ = training_and_merged(unet, uchain, solution, seed=1)
    x, t = unet_inputs(config)
    assert relative_error(run(training, x, t), run(merged, x, t)) <= TOLERANCE


def test_non_square_sample_size_traces() -> None:
    unet = unet_from_config(UNSEEN_CONFIG | {"sample_size": [8, 12]})
    uchain = trace_unet(unet)
    assert uchain.chain.input_shape == (3, 8, 12)
    assert uchain.chain.convs[uchain.upsample_convs[-1]].output_shape == (48, 8, 12)


def test_training_form_and_merge_keep_the_unet_dtype(demo) -> None:
    unet, uchain = demo
    unet64 = copy.deepcopy(unet).double()
    solution = pattern_solution(uchain, "both", identity_upsamples=False)
    training, merged, _ = training_and_merged(unet64, uchain, solution, seed=2)
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    x = x.double()
    expected, got = run(training, x, t), run(merged, x, t)
    assert relative_error(expected, got) <= 1e-10


def test_depth_split_block_keeps_two_convs_and_stays_exact(demo) -> None:
    """Kim23's depth method may split an activation-free block into its two 3x3 convs."""
    from dataclasses import replace

    unet, uchain = demo
    block = uchain.blocks[0]
    keep = keep_everything_solution(uchain.chain)
    solution = replace(
        keep, kept_activations=tuple(a for a in keep.kept_activations if a != block.conv1)
    )
    training, structure = build_unet_training_network(unet, uchain, solution)
    assert structure["blocks"][block.name] == {
        "form": "linearized",
        "conv1": True,
        "conv2": True,
        "merge": False,
    }
    merged = merge_unet(training)
    assert count_convs(merged) == count_convs(training)
    x, t = unet_inputs(DEMO_UNET_CONFIG)
    assert relative_error(run(training, x, t), run(merged, x, t)) <= TOLERANCE
