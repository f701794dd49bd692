"""A deployment format gets its own truth: the ONNX speed line and its warnings, the ONNX timing's
refusals, and ``profile --target onnx`` (the compress CLI and the Export page time real exports:
tests/test_cli_compress.py, tests/app/test_export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.__main__ import main
from core.benchmark import measure_onnx_side_by_side
from core.commands import profile_cmd
from core.errors import LayerMergeError
from core.workflows.measure import (
    backend_warning,
    onnx_speed_line,
    onnx_speed_warning,
)


def _record(original_ms: float, compressed_ms: float, predicted: float | None) -> dict:
    return {
        "original_ms": original_ms,
        "compressed_ms": compressed_ms,
        "speedup": original_ms / compressed_ms,
        "predicted_speedup": predicted,
        "predicted_backend": "torch" if predicted is not None else None,
    }


def test_the_line_puts_the_onnx_ratio_beside_the_tables_prediction() -> None:
    line = onnx_speed_line(_record(4.2, 3.1, 1.49))
    assert (
        line
        == "onnxruntime: merged 3.10 ms vs original 4.20 ms → 1.35× (torch eager predicted 1.49×)"
    )
    assert "predicted" not in onnx_speed_line(_record(4.2, 3.1, None))
    assert onnx_speed_warning(_record(4.2, 3.1, 1.49)) is None


def test_a_slower_onnx_graph_is_said_plainly() -> None:
    # the case that started this: a merged 11x11 kernel, 1.49x in torch, 0.55x in ONNX Runtime
    warning = onnx_speed_warning(_record(5.5, 10.0, 1.49))
    assert warning is not None and "slower than the original" in warning and "0.55×" in warning


def test_the_backend_warning_names_the_fix_only_when_the_runtimes_differ() -> None:
    assert backend_warning("onnxruntime") is None
    torch_tables = backend_warning("torch")
    assert torch_tables is not None and "profile" in torch_tables
    assert "--backend onnxruntime" in torch_tables
    unknown = backend_warning(None)
    assert unknown is not None and "--tables" in unknown


def test_a_graph_onnx_runtime_refuses_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LayerMergeError, match="ONNX Runtime cannot load the original's ONNX"):
        measure_onnx_side_by_side(b"not an onnx graph", b"", input_shape=(3, 8, 8), rounds=1)
    with pytest.raises(LayerMergeError, match="ONNX Runtime cannot load"):
        measure_onnx_side_by_side(
            tmp_path / "missing.onnx", tmp_path / "missing.onnx", input_shape=(3, 8, 8)
        )


def test_profile_target_onnx_selects_the_onnxruntime_backend() -> None:
    parser = argparse.ArgumentParser()
    profile_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["profile", "digits_resnet", "--out", "x", "--target", "onnx"])
    assert profile_cmd.backend_for(args.target, args.backend) == "onnxruntime"
    args = parser.parse_args(["profile", "digits_resnet", "--out", "x"])
    assert profile_cmd.backend_for(args.target, args.backend) == "torch"


def test_profile_hints_onnxruntime_when_the_target_is_onnx_but_the_backend_torch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    common = ["--rounds", "1", "--min-run-time", "0.001", "--no-network"]
    code = main(
        ["profile", "digits_resnet", "--out", str(tmp_path / "t"), "--target", "onnx",
         "--backend", "torch", *common]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    hints = [line for line in err.splitlines() if "use --backend onnxruntime" in line]
    assert len(hints) == 1 and "--target onnx" in hints[0]
    # without a stated target nothing is hinted: torch is what the user deploys on
    code = main(["profile", "digits_resnet", "--out", str(tmp_path / "t"), *common])
    assert code == 0 and "--backend onnxruntime" not in capsys.readouterr().err
