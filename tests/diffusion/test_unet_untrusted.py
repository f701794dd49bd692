"""A UNet's files are untrusted input: run states validated field by field, huge configs refused.

Issue 14, item 5: a UNet finetune run state is validated as strictly as the CNN finetune
checkpoint (every field's type, every tensor against the network, indices and counts in range),
and a compressed checkpoint whose config asks for a huge network is refused before anything is
allocated: the UNet is built on the meta device and matched to the state_dict first.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.families.unet.data import load_diffusion_digits
from core.families.unet.export import build_unet_checkpoint, unet_from_checkpoint
from core.families.unet.finetune import UNetFinetuneConfig, finetune_unet
from core.families.unet.surgery import STRUCTURE_VERSION
from core.families.unet.unet import unet_from_config

TINY = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
}
CONFIG = UNetFinetuneConfig(steps=3, batch_size=8, eval_every=3, ema_decay=0.9)


@pytest.fixture(scope="module")
def run_state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished run's state (3 steps, with EMA), as the loop wrote it."""
    path = tmp_path_factory.mktemp("state") / "state.pt"
    finetune_unet(unet_from_config(TINY), load_diffusion_digits(), CONFIG, checkpoint=path)
    return torch.load(path, weights_only=True)


def _first(state: dict[str, Any], key: str) -> str:
    return next(iter(state[key]))


TAMPERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "version": lambda s: s.update(format_version=7),
    "missing order": lambda s: s.pop("order"),
    "order out of range": lambda s: s.update(order=torch.tensor([0, 10**6])),
    "order as floats": lambda s: s.update(order=torch.zeros(3)),
    "step beyond steps": lambda s: s.update(step=99),
    "step as float": lambda s: s.update(step=3.0),
    "unet tensor reshaped": lambda s: s["unet"].update({_first(s, "unet"): torch.zeros(1, 2, 3)}),
    "unet tensor NaN": lambda s: s["unet"].update(
        {_first(s, "unet"): s["unet"][_first(s, "unet")] * float("nan")}
    ),
    "unet tensor missing": lambda s: s["unet"].pop(_first(s, "unet")),
    "ema of other names": lambda s: s.update(ema={"x": torch.zeros(1)}),
    "ema updates negative": lambda s: s.update(ema_updates=-1),
    "optimizer moment reshaped": lambda s: s["optimizer"]["state"][0].update(
        exp_avg=torch.zeros(1)
    ),
    "optimizer moment infinite": lambda s: s["optimizer"]["state"][0].update(
        exp_avg_sq=s["optimizer"]["state"][0]["exp_avg_sq"] + float("inf")
    ),
    "optimizer of other parameters": lambda s: s["optimizer"]["param_groups"][0].update(
        params=[0, 1]
    ),
    "generator state text": lambda s: s.update(order_generator="seed 0"),
    "window too long": lambda s: s.update(window=[0.1] * 1000),
    "window with text": lambda s: s.update(window=["low"]),
    "history short": lambda s: s.update(history=s["history"][:1]),
    "history malformed": lambda s: s["history"][0].update(train_loss="low"),
    "holdout NaN": lambda s: s.update(holdout_before=float("nan")),
}


@pytest.mark.parametrize("how", TAMPERS)
def test_a_tampered_run_state_is_refused_in_one_line(
    tmp_path: Path, run_state: dict[str, Any], how: str
) -> None:
    state = copy.deepcopy(run_state)
    TAMPERS[how](state)
    path = tmp_path / "state.pt"
    torch.save(state, path)
    with pytest.raises(LayerMergeError) as info:
        finetune_unet(unet_from_config(TINY), load_diffusion_digits(), CONFIG, checkpoint=path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_the_intact_run_state_resumes(tmp_path: Path, run_state: dict[str, Any]) -> None:
    path = tmp_path / "state.pt"
    torch.save(run_state, path)
    result = finetune_unet(unet_from_config(TINY), load_diffusion_digits(), CONFIG, checkpoint=path)
    assert result.resumed_from == 3 and result.status == "completed"


def _checkpoint() -> dict[str, Any]:
    """A compressed checkpoint of the tiny UNet, unmodified (an empty structure)."""
    structure = {"version": STRUCTURE_VERSION, "blocks": {}, "identity_upsamples": []}
    checkpoint = build_unet_checkpoint(
        unet_from_config(TINY), config=TINY, structure={**structure, "merged": True}
    )
    return torch.load(_saved(checkpoint), weights_only=True)


def _saved(checkpoint: dict[str, Any]) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return buffer


def test_a_checkpoint_asking_for_a_huge_unet_is_refused_before_allocating() -> None:
    """60000 channels would be ~130 GB of convs: refused in a moment, nothing allocated."""
    checkpoint = _checkpoint()
    assert unet_from_checkpoint(copy.deepcopy(checkpoint)) is not None  # the intact one loads
    huge = copy.deepcopy(checkpoint)
    huge["config"]["block_out_channels"] = [60000, 60000]
    huge["config"]["norm_num_groups"] = 4
    started = time.monotonic()
    with pytest.raises(UnsafeCheckpointError, match="does not match the structure"):
        unet_from_checkpoint(huge)
    assert time.monotonic() - started < 10
    for key, value in (("layers_per_block", 10**6), ("block_out_channels", [8] * 1000)):
        bounded = copy.deepcopy(checkpoint)
        bounded["config"][key] = value
        with pytest.raises(UnsafeCheckpointError, match=key):
            unet_from_checkpoint(bounded)


def test_a_checkpoint_with_non_finite_tensors_is_refused() -> None:
    checkpoint = _checkpoint()
    key = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] + float("inf")
    with pytest.raises(UnsafeCheckpointError, match="NaN or infinity"):
        unet_from_checkpoint(checkpoint)
