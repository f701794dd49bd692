"""The one ONNX wrapper: :func:`onnx_bytes` exports any module (one input or several, e.g. a UNet's
sample and timestep) and :func:`check_onnx` checks the graph against ONNX Runtime.

Latency tables time ONNX graphs made by it, the UNet family exports through it, and the classifier
family exports its merged networks through :func:`export_onnx`; and
:mod:`core.benchmark` times networks on ONNX Runtime through it. It lives apart from
:mod:`core.export` (which asks the family registry how to load a checkpoint) so that families and
the benchmark can use it without importing the registry.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import LayerMergeError

__all__ = ["ONNX_INPUT_NAME", "ONNX_OUTPUT_NAME", "export_onnx", "onnx_bytes", "check_onnx"]

ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "logits"


def export_onnx(
    network: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...] | list[int],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    verify: bool = True,
    tolerance: float = 1e-4,
) -> Path:
    """Export ``network`` to ONNX, and check ONNX Runtime's outputs against torch's.

    Uses the TorchScript-based exporter (``dynamo=False``): for these static step networks it
    gives the same graph as the dynamo exporter about 15x faster, and falls back to dynamo where
    the old exporter is unavailable. The network is exported in eval mode from a copy, so the
    caller's module is not touched.

    Args:
        network: the module to export (a merged StepNetwork, or any CNN).
        path: the ``.onnx`` file to write (atomically).
        input_shape: ``(C, H, W)`` or ``(B, C, H, W)``; a missing batch is 1.
        dynamic_batch: whether the batch dimension is symbolic in the ONNX graph.
        opset: the ONNX opset; the exporter's default when None.
        verify: run ONNX Runtime on a random batch and compare with torch.
        tolerance: the largest relative difference ``verify`` accepts.

    Returns:
        The path written.

    Raises:
        LayerMergeError: the shape is malformed, export fails, or ONNX Runtime disagrees with
            torch by more than ``tolerance``.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise LayerMergeError(f"input_shape must be (C, H, W) or (B, C, H, W), got {input_shape!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    module = _eval_copy(network)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    try:
        inputs = {ONNX_INPUT_NAME: example}
        data = onnx_bytes(
            module, inputs, [ONNX_OUTPUT_NAME], dynamic_batch=dynamic_batch, opset=opset
        )
        if verify:
            check_onnx(data, module, inputs, tolerance)
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- ONNX helpers


def _eval_copy(network: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(network).cpu().eval()


def onnx_bytes(
    module: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    output_names: Sequence[str],
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
) -> bytes:
    """The ONNX graph of ``module`` at ``inputs``' shapes: the one exporter every caller uses.

    The TorchScript exporter comes first (a fraction of a second per conv; the dynamo exporter
    takes ten or more), dynamo when it is gone or refuses the model. Inputs are named by
    ``inputs``' keys; with ``dynamic_batch`` the first dimension of every input and output is
    symbolic.

    Raises:
        LayerMergeError: both exporters fail (one line, the exporter's message shortened).
    """
    names, args = list(inputs), tuple(inputs.values())
    kwargs: dict[str, Any] = {"input_names": names, "output_names": list(output_names)}
    if opset is not None:
        kwargs["opset_version"] = opset
    axes = {name: {0: "batch"} for name in [*names, *output_names]} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            torch.inference_mode(False),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(module, args, buffer, dynamo=False, dynamic_axes=axes, **kwargs)
            except (TypeError, NotImplementedError, RuntimeError):
                buffer = io.BytesIO()  # the TorchScript exporter is gone or refuses: use dynamo
                dims = (
                    tuple({0: torch.export.Dim("batch")} for _ in args) if dynamic_batch else None
                )
                torch.onnx.export(module, args, buffer, dynamo=True, dynamic_shapes=dims, **kwargs)
    except Exception as exc:  # the exporters raise many types; the caller needs one
        message = " ".join(str(exc).split())[:300]
        raise LayerMergeError(f"ONNX export failed ({type(exc).__name__}: {message})") from exc
    return buffer.getvalue()


def check_onnx(
    data: bytes, module: nn.Module, inputs: Mapping[str, torch.Tensor], tolerance: float
) -> float:
    """Run the graph in ONNX Runtime on ``inputs`` and compare with torch; returns the relative
    error, or raises when it is above ``tolerance`` (a deployment format gets its own check)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = module(*inputs.values())
    expected = getattr(expected, "sample", expected).numpy()
    got = session.run(None, {name: value.numpy() for name, value in inputs.items()})[0]
    error = float(abs(expected - got).max() / max(float(abs(expected).max()), 1e-12))
    if not error <= tolerance:
        raise LayerMergeError(
            f"ONNX Runtime's outputs differ from torch's by {error:.2e} (relative), more than "
            f"{tolerance:.0e}"
        )
    return error
