"""A stopped UNet finetune resumes from its checkpoint exactly as if it had never stopped."""

from __future__ import annotations

import threading

import pytest
import torch

from core.families.unet.data import load_diffusion_digits
from core.families.unet.finetune import UNetFinetuneConfig, UNetFinetuneProgress, finetune_unet
from core.families.unet.unet import unet_from_config
from core.finetune import FinetuneConfigError

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


@pytest.mark.parametrize("ema", [None, 0.9])
def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path, ema) -> None:
    data = load_diffusion_digits()
    config = UNetFinetuneConfig(steps=6, batch_size=8, eval_every=3, ema_decay=ema)
    straight = finetune_unet(unet_from_config(TINY), data, config)

    cancel = threading.Event()

    def stop_after_three(report: UNetFinetuneProgress) -> None:
        if report.step >= 3:
            cancel.set()

    state = tmp_path / "state.pt"
    first = finetune_unet(
        unet_from_config(TINY),
        data,
        config,
        progress=stop_after_three,
        cancel=cancel,
        checkpoint=state,
        checkpoint_every=2,
    )
    assert first.status == "cancelled" and first.step == 3 and state.is_file()
    resumed = finetune_unet(unet_from_config(TINY), data, config, checkpoint=state)
    assert resumed.step == 6 and resumed.status == "completed" and resumed.resumed_from == 3
    assert [h.step for h in resumed.history] == list(range(1, 7))
    for name, value in straight.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    assert resumed.holdout_loss_after == straight.holdout_loss_after


def test_a_state_of_other_options_is_refused(tmp_path) -> None:
    data = load_diffusion_digits()
    state = tmp_path / "state.pt"
    config = UNetFinetuneConfig(steps=2, batch_size=8, eval_every=2)
    finetune_unet(unet_from_config(TINY), data, config, checkpoint=state)
    other = UNetFinetuneConfig(steps=3, batch_size=8, eval_every=2)
    with pytest.raises(FinetuneConfigError, match="other finetune options"):
        finetune_unet(unet_from_config(TINY), data, other, checkpoint=state)
