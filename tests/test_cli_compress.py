"""The finetune, compress and bench commands: outputs, resume, and refusal of unsafe files."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

from core import export
from core.__main__ import main
from core.chain import trace_chain
from core.merge import merge_model
from core.models import build_model
from core.solution import save_solution
from tests.helpers import random_solution, relative_error

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def solutions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("solutions")
    paths = {}
    for name in ("digits_resnet", "digits_mobilenet"):
        bundle = build_model(name)
        chain = trace_chain(bundle.model, bundle.input_size)
        paths[name] = folder / f"{name}.json"
        save_solution(random_solution(chain, random.Random(4)), paths[name])
    return paths


@pytest.fixture(scope="module")
def evil_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pickle whose loading would create ``marker``, and a truncated file."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    evil = folder / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    truncated = folder / "truncated.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    return {"evil": evil, "truncated": truncated, "marker": marker}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def test_compress_writes_a_checkpoint_and_onnx_equal_to_the_merged_model(
    capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], tmp_path: Path
) -> None:
    out, onnx_path = tmp_path / "c.pt", tmp_path / "c.onnx"
    solution = solutions["digits_mobilenet"]
    code, result, err = _run(
        capsys, "compress", "digits_mobilenet", "--solution", str(solution), "--out", str(out),
        "--onnx", str(onnx_path),
    )  # fmt: skip
    assert code == 0, err
    assert result["metrics"]["merge_max_relative_error"] < 1e-4
    assert result["metrics"]["compressed"]["depth"] < result["metrics"]["original"]["depth"]
    # a random solution records no tables: its speed predictions' runtime cannot be told
    assert "tables this solution was solved on are not known" in err
    speed = result["metrics"]["onnx_speed"]  # timed without tables: batch 1, one thread
    assert (speed["backend"], speed["batch"], speed["threads"]) == ("onnxruntime", 1, 1)
    assert speed["predicted_speedup"] is None
    assert torch.load(out, weights_only=True)["metrics"]["onnx_speed"] == speed
    network = export.load(out)

    bundle = build_model("digits_mobilenet")
    chain = trace_chain(bundle.model, bundle.input_size)
    from core.solution import load_solution

    reference = merge_model(bundle.model, chain, load_solution(solution))
    x = torch.randn(2, *chain.input_shape, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = reference(x)
        assert relative_error(expected, network(x)) < 1e-5
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert relative_error(expected, torch.from_numpy(got)) < 1e-4


def test_finetune_resumes_and_compress_uses_its_weights(
    capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    args = [
        "finetune", "digits_resnet", "--solution", str(solutions["digits_resnet"]),
        "--data", "digits", "--out", str(out), "--batch-size", "16", "--checkpoint-every", "2",
    ]  # fmt: skip
    code, first, err = _run(capsys, *args, "--steps", "4")
    assert code == 0, err
    assert first["status"] == "completed" and first["step"] == 4
    assert "finetune [" in err  # the progress bar
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "compressed.pt", "metrics.json"}
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy_after"] >= 0

    # the same command again: nothing left to do, it resumes at the end
    code, again, err = _run(capsys, *args, "--steps", "4")
    assert code == 0, err
    assert again["resumed_from"] == 4 and again["step"] == 4

    # another schedule against the same checkpoint is refused in one line
    code, _, err = _run(capsys, *args, "--steps", "6")
    assert code == 2 and err.startswith("error:") and "start afresh" in err

    compressed = tmp_path / "from_finetuned.pt"
    code, result, err = _run(
        capsys, "compress", "digits_resnet", "--solution", str(solutions["digits_resnet"]),
        "--finetuned", str(out), "--out", str(compressed),
    )  # fmt: skip
    assert code == 0, err
    assert result["finetune_status"] == "completed at step 4/4"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(export.load(compressed)(x), export.load(out / "compressed.pt")(x))

    # finetuned weights of one solution do not pass for another model's solution
    code, _, err = _run(
        capsys, "compress", "digits_mobilenet", "--solution", str(solutions["digits_mobilenet"]),
        "--finetuned", str(out), "--out", str(tmp_path / "x.pt"),
    )  # fmt: skip
    assert code == 2 and "another model or solution" in err


def test_bench_measures_both_backends_side_by_side(
    capsys: pytest.CaptureFixture[str], solutions: dict[str, Path]
) -> None:
    code, result, err = _run(
        capsys, "bench", "digits_mobilenet", "--solution", str(solutions["digits_mobilenet"]),
        "--rounds", "3", "--backend", "both",
    )  # fmt: skip
    assert code == 0, err
    assert [row["backend"] for row in result["results"]] == ["torch", "onnxruntime"]
    for row in result["results"]:
        assert row["original_ms"] > 0 and row["compressed_ms"] > 0 and row["rounds"] == 3
        assert row["speedup"] == pytest.approx(row["original_ms"] / row["compressed_ms"])
    assert result["compressed_depth"] < result["original_depth"]


@pytest.mark.parametrize("command", ["compress", "bench"])
@pytest.mark.parametrize("kind", ["evil", "truncated"])
def test_unsafe_weights_are_refused_without_running(
    capsys: pytest.CaptureFixture[str],
    solutions: dict[str, Path],
    evil_files: dict[str, Path],
    tmp_path: Path,
    command: str,
    kind: str,
) -> None:
    argv = [command, "digits_resnet", "--weights", str(evil_files[kind])]
    argv += ["--solution", str(solutions["digits_resnet"])]
    if command == "compress":
        argv += ["--out", str(tmp_path / "o.pt")]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1
    assert "unsafe unpickling" in err if kind == "evil" else "not a readable" in err
    assert not evil_files["marker"].exists()
    assert not (tmp_path / "o.pt").exists()


def test_unsafe_files_in_a_real_process_print_one_line_and_never_run(
    solutions: dict[str, Path], evil_files: dict[str, Path], tmp_path: Path
) -> None:
    solution = str(solutions["digits_resnet"])
    completed = subprocess.run(
        [sys.executable, "-m", "core", "compress", "digits_resnet", "--finetuned",
         str(evil_files["evil"]), "--solution", solution, "--out", str(tmp_path / "o.pt")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr and "unsafe unpickling" in completed.stderr
    assert not evil_files["marker"].exists()


def test_bench_refuses_an_unsafe_compressed_checkpoint(
    capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], evil_files: dict[str, Path]
) -> None:
    code, _, err = _run(
        capsys, "bench", "digits_resnet", "--solution", str(solutions["digits_resnet"]),
        "--compressed", str(evil_files["evil"]),
    )  # fmt: skip
    assert code == 2 and "unsafe unpickling" in err
    assert not evil_files["marker"].exists()


@pytest.mark.parametrize("command", ["finetune", "compress", "bench"])
def test_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--solution" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shipped_solution(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A solution solved on the shipped digits_resnet tables (torch backend): it records their
    digest, so compress finds those tables without --tables."""
    path = tmp_path_factory.mktemp("shipped") / "solution.json"
    tables = ROOT / "cached_tables" / "digits_resnet"
    assert main(["solve", "--tables", str(tables), "--budget", "0.6", "--out", str(path)]) == 0
    return path


def test_compress_onnx_is_timed_against_the_original_export_and_torch_tables_warn(
    capsys: pytest.CaptureFixture[str], shipped_solution: Path, tmp_path: Path
) -> None:
    out, onnx_path = tmp_path / "c.pt", tmp_path / "c.onnx"
    capsys.readouterr()
    code = main(
        ["compress", "digits_resnet", "--solution", str(shipped_solution), "--out", str(out),
         "--onnx", str(onnx_path)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = next(x for x in captured.out.splitlines() if "onnxruntime: merged" in x)
    assert " ms vs original " in line and "(torch eager predicted " in line
    warnings = [x for x in captured.err.splitlines() if "--backend onnxruntime" in x]
    assert len(warnings) == 1 and "torch latency backend" in warnings[0]

    speed = torch.load(out, weights_only=True)["metrics"]["onnx_speed"]
    meta = json.loads((ROOT / "cached_tables" / "digits_resnet" / "meta.json").read_text())
    assert speed["backend"] == "onnxruntime" and speed["predicted_backend"] == "torch"
    assert (speed["batch"], speed["threads"]) == (meta["batch"], meta["threads"])
    assert speed["baseline"] == "original, BN folded"
    assert f"{speed['speedup']:.2f}×" in line
    assert ("slower than the original" in captured.out) == (speed["speedup"] < 1)


def test_compress_onnx_does_not_warn_on_onnxruntime_tables(
    capsys: pytest.CaptureFixture[str], shipped_solution: Path, tmp_path: Path
) -> None:
    # the shipped tables, as a table directory whose meta.json says they were timed on
    # onnxruntime (the backend field is all the check reads)
    tables = tmp_path / "tables"
    shutil.copytree(ROOT / "cached_tables" / "digits_resnet", tables)
    meta = json.loads((tables / "meta.json").read_text())
    (tables / "meta.json").write_text(json.dumps({**meta, "backend": "onnxruntime"}))
    code, result, err = _run(
        capsys, "compress", "digits_resnet", "--solution", str(shipped_solution),
        "--out", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "c.onnx"), "--tables",
        str(tables), "--no-onnx-measure",
    )  # fmt: skip
    assert code == 0, err
    assert "--backend onnxruntime" not in err and result["onnx_backend_warning"] is None
    assert result["onnx_measure"] == "--no-onnx-measure"
    assert "onnx_speed" not in result["metrics"]


def test_compress_refuses_tables_the_solution_was_not_solved_on(
    capsys: pytest.CaptureFixture[str], shipped_solution: Path, tmp_path: Path
) -> None:
    code, _, err = _run(
        capsys, "compress", "digits_resnet", "--solution", str(shipped_solution),
        "--out", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "c.onnx"), "--tables",
        str(ROOT / "cached_tables" / "digits_mobilenet"),
    )  # fmt: skip
    assert code == 2 and "digits_mobilenet" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.pt").exists()
