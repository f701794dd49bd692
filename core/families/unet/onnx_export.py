"""ONNX export of a compressed UNet, checked against ONNX Runtime, and the merge check.

The graph takes ``sample`` (B, C, H, W) float32 and ``timestep`` (B,) int64 with a dynamic batch
and returns the predicted noise; the export is verified by running ONNX Runtime against torch on
fresh inputs before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.onnx_export import check_onnx, onnx_bytes

__all__ = ["ONNX_TOLERANCE", "MERGE_CHECK_TIMESTEPS", "export_unet_onnx", "merge_error"]

ONNX_TOLERANCE = 1e-4  # largest relative difference between ONNX Runtime and torch accepted
MERGE_CHECK_TIMESTEPS = (10, 500)  # the timesteps of the merged-vs-training-form check


class _SampleTimestep(nn.Module):
    """``unet(sample, timestep).sample``: the two-input form ONNX is exported from."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep).sample


def export_unet_onnx(unet: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Export a (merged) UNet to ONNX and check ONNX Runtime against torch.

    The graph takes ``sample`` (B, C, H, W) float32 and ``timestep`` (B,) int64, with a dynamic
    batch, and returns the predicted noise ``noise`` (B, C, H, W). Written atomically.

    Raises:
        LayerMergeError: export fails, or ONNX Runtime differs from torch by more than
            :data:`ONNX_TOLERANCE` (relative).
    """
    import copy
    import os

    path = Path(path)
    module = _SampleTimestep(copy.deepcopy(unet).cpu().eval()).eval()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((2, *tuple(input_shape)), generator=generator)
    timestep = torch.tensor(MERGE_CHECK_TIMESTEPS, dtype=torch.long)
    data = onnx_bytes(
        module, {"sample": sample, "timestep": timestep}, ["noise"], dynamic_batch=True, opset=17
    )
    check = torch.randn((3, *tuple(input_shape)), generator=generator)
    steps = torch.tensor([0, 250, 999], dtype=torch.long)
    check_onnx(data, module, {"sample": check, "timestep": steps}, ONNX_TOLERANCE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@torch.no_grad()
def merge_error(training: nn.Module, merged: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Largest relative difference between the training form and the merged UNet (eval)."""
    shape = (len(MERGE_CHECK_TIMESTEPS), *tuple(input_shape))
    sample = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor(MERGE_CHECK_TIMESTEPS, dtype=torch.long)
    reference = training.eval()(sample, timesteps).sample
    got = merged.eval()(sample, timesteps).sample
    return float((reference - got).abs().max() / reference.abs().max().clamp_min(1e-12))
