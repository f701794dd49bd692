"""Bad input of every class exits 2 with one line and leaves the output location as it was.

Issue 14, items 3-5: write failures of every command that writes (a missing folder, a directory
or a special file as ``--out``, a full disk, a read-only folder) leave no temporary file and
replace nothing; damaged or edited tables, a meta.json with bad numbers or of another model, a
checkpoint or tables of another model or solution given to ``bench``, damaged or non-finite
weights, and malformed solution files are each refused in one line naming the problem; a
cancelled finetune exits 130, not 0. The commands run in this process through
``core.__main__.main`` (the parser and the one error mapping are those of ``python -m core``), so
a full disk can be simulated by making the one place bytes reach a file fail.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from core import dp
from core.errors import EXIT_INTERRUPTED, InvalidSolutionError, UnsafeCheckpointError
from core.models import load_state_dict_bytes
from core.solution import load_solution, save_solution
from core.tables import read_tables
from core.workflows.compress import compress
from core.workflows.model import load_model
from tests.helpers import one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "cached_tables"
WEIGHTS = TABLES / "demo_weights" / "digits_resnet.pt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


_cli = run_cli


def _one_line_error(code: int, err: str) -> str:
    line = one_line_error(code, err)
    assert line.startswith("error: ")
    return line


def _last_line_error(code: int, err: str) -> str:
    """For commands that draw a progress bar on stderr first: one error line, the last."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every path under ``folder`` with its bytes (other kinds by name): "as it was" is equality."""

    def content(path: Path) -> Any:
        if path.is_dir():
            return "folder"
        return path.read_bytes() if path.is_file() else "special file"  # never open a pipe

    return {str(p.relative_to(folder)): content(p) for p in sorted(folder.rglob("*"))}


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every file write fail as a full disk does (the one place bytes reach a file)."""

    def no_space(stream: Any, data: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("core.files._write_all", no_space)


@pytest.fixture(scope="module")
def solutions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Solutions of the shipped tables: digits_resnet at 60% and 80%, digits_mobilenet at 60%."""
    folder = tmp_path_factory.mktemp("solutions")
    paths = {}
    for name, model, budget in (
        ("resnet", "digits_resnet", 0.6),
        ("resnet80", "digits_resnet", 0.8),
        ("mobilenet", "digits_mobilenet", 0.6),
    ):
        paths[name] = folder / f"{name}.json"
        tables = read_tables(TABLES / model)
        save_solution(dp.solve(tables, budget_fraction=budget), paths[name])
    return paths


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory, solutions: dict[str, Path]) -> Path:
    """A compressed checkpoint of digits_resnet for the 60% solution."""
    path = tmp_path_factory.mktemp("compressed") / "resnet60.pt"
    model = load_model("digits_resnet")
    compress(model, load_solution(solutions["resnet"]), out=path)
    return path


# ---------------------------------------------------------------------------------------------
# Item 3: write failures, for every command that writes


def test_compress_out_in_a_missing_folder_a_directory_or_a_pipe_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path]
) -> None:
    (tmp_path / "a_dir").mkdir()
    os.mkfifo(tmp_path / "a_pipe")
    before = _snapshot(tmp_path)
    base = ["compress", "digits_resnet", "--solution", str(solutions["resnet"])]
    for out, why in (
        (tmp_path / "no" / "such" / "c.pt", "does not exist"),
        (tmp_path / "a_dir", "it is a directory"),
        (tmp_path / "a_pipe", "not a regular file"),
    ):
        code, _, err = _cli(capsys, *base, "--out", str(out))
        assert why in _one_line_error(code, err)
        code, _, err = _cli(capsys, *base, "--out", str(tmp_path / "c.pt"), "--onnx", str(out))
        assert why in _one_line_error(code, err)
    assert _snapshot(tmp_path) == before and (tmp_path / "a_pipe").is_fifo()


def test_compress_on_a_full_disk_replaces_neither_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    solutions: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "c.pt").write_bytes(b"earlier checkpoint")
    (tmp_path / "c.onnx").write_bytes(b"earlier onnx")
    before = _snapshot(tmp_path)
    argv = ["compress", "digits_resnet", "--solution", str(solutions["resnet"])]
    argv += ["--out", str(tmp_path / "c.pt"), "--onnx", str(tmp_path / "c.onnx")]
    with monkeypatch.context() as patch:
        _full_disk(patch)
        code, _, err = _cli(capsys, *argv)
    line = _one_line_error(code, err)
    assert "No space left on device" in line and "c.pt" in line
    assert _snapshot(tmp_path) == before

    # the checkpoint is written but the ONNX export hits the full disk: neither is replaced
    def onnx_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr("core.onnx_export.onnx_bytes", onnx_full)
        code, _, err = _cli(capsys, *argv)
    line = _one_line_error(code, err)
    assert "No space left on device" in line and "ONNX" in line
    assert _snapshot(tmp_path) == before


def test_a_read_only_folder_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    solutions: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # root writes into a chmod-ed folder, so the file system's refusal is simulated where the
    # temporary file is created, as a read-only mount refuses it
    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("core.files.tempfile.mkstemp", read_only)
    argv = ["compress", "digits_resnet", "--solution", str(solutions["resnet"])]
    code, _, err = _cli(capsys, *argv, "--out", str(tmp_path / "c.pt"))
    assert "Read-only file system" in _one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


def test_finetune_on_a_full_disk_stops_in_one_line_with_nothing_half_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    solutions: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    _full_disk(monkeypatch)
    code, _, err = _cli(
        capsys, "finetune", "digits_resnet", "--solution", str(solutions["resnet"]),
        "--data", "digits", "--out", str(out), "--steps", "2", "--batch-size", "8",
        "--checkpoint-every", "1",
    )  # fmt: skip
    assert "No space left on device" in _last_line_error(code, err)
    assert list(out.iterdir()) == []  # no run state, no temporary file


def test_finetune_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path]
) -> None:
    (tmp_path / "file").write_text("mine")
    before = _snapshot(tmp_path)
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        code, _, err = _cli(
            capsys, "finetune", "digits_resnet", "--solution", str(solutions["resnet"]),
            "--data", "digits", "--out", str(out),
        )  # fmt: skip
        assert "file" in _one_line_error(code, err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["profile", "importance"])
def test_table_commands_on_a_full_disk_leave_the_directory_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command
) -> None:
    out = tmp_path / "tables"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    _full_disk(monkeypatch)
    if command == "profile":
        extra = ["--batch", "2"]
    else:
        extra = ["--data", "digits", "--mode", "distortion", "--calibration-images", "16"]
    code, _, err = _cli(capsys, command, "digits_resnet", "--out", str(out), *extra)
    assert "No space left on device" in _last_line_error(code, err)
    assert _snapshot(tmp_path) == before


def test_a_cancelled_finetune_exits_130_with_its_state_saved(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    solutions: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C (SIGINT) during the run: a clean stop, a summary, and exit 130, not 0."""
    from core.commands import finetune_cmd

    drawn = finetune_cmd._ProgressBar.__call__

    def interrupt_at_step_two(self: Any, report: Any) -> None:
        drawn(self, report)
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the command's handler: stop after this step

    monkeypatch.setattr(finetune_cmd._ProgressBar, "__call__", interrupt_at_step_two)
    out = tmp_path / "run"
    argv = ["finetune", "digits_resnet", "--solution", str(solutions["resnet"])]
    argv += ["--data", "digits", "--out", str(out), "--steps", "6", "--batch-size", "8"]
    code, stdout, _ = _cli(capsys, *argv, "--json")
    assert code == EXIT_INTERRUPTED == 130
    result = json.loads(stdout)
    assert result["status"] == "cancelled" and 2 <= result["step"] < 6
    assert (out / "checkpoint.pt").is_file() and not (out / "compressed.pt").exists()

    monkeypatch.setattr(finetune_cmd._ProgressBar, "__call__", drawn)
    code, stdout, err = _cli(capsys, *argv, "--json")  # the same command resumes and finishes
    assert code == 0, err
    assert json.loads(stdout)["status"] == "completed" and (out / "compressed.pt").is_file()


# ---------------------------------------------------------------------------------------------
# Item 3: meta.json's numbers; item 4: tables edited after meta.json recorded them


def _copy_tables(tmp_path: Path, name: str = "digits_resnet") -> Path:
    target = tmp_path / name
    shutil.copytree(TABLES / name, target)
    return target


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("original_table_latency_ms", "fast"),
        ("original_table_latency_ms", -3.0),
        ("original_table_latency_ms", math.inf),
        ("network_latency_ms", math.nan),
        ("network_latency_ms", True),
        ("batch", 0),
        ("batch", 2.5),
        ("importance_base_accuracy", 250.0),
        ("input_shape", [3, 32]),
    ],
)
def test_meta_json_with_a_bad_number_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    tables = _copy_tables(tmp_path)
    meta = json.loads((tables / "meta.json").read_text())
    meta[field] = value
    (tables / "meta.json").write_text(json.dumps(meta))  # NaN and Infinity as JSON allows them
    out = tmp_path / "s.json"
    code, _, err = _cli(
        capsys, "solve", "--tables", str(tables), "--budget", "0.6", "--out", str(out)
    )
    assert field in _one_line_error(code, err)
    assert not out.exists()


@pytest.mark.parametrize("table", ["latency", "importance"])
def test_a_table_edited_after_meta_json_recorded_it_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str
) -> None:
    tables = _copy_tables(tmp_path)
    path = tables / f"{table}.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    column = "latency_ms" if table == "latency" else "importance"
    rows[0][column] = "0.001"  # a plausible, hand-made number: the file still parses
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    code, _, err = _cli(capsys, "solve", "--tables", str(tables), "--budget", "0.6")
    line = _one_line_error(code, err)
    assert f"{table}.csv" in line and "edited" in line


def test_a_meta_json_of_another_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = _copy_tables(tmp_path)
    shutil.copy(TABLES / "digits_mobilenet" / "meta.json", tables / "meta.json")
    code, _, err = _cli(capsys, "solve", "--tables", str(tables), "--budget", "0.6")
    assert "meta.json belongs to another table" in _one_line_error(code, err)


# ---------------------------------------------------------------------------------------------
# Item 4: bench with a checkpoint or tables that belong to something else


def test_bench_refuses_a_checkpoint_of_another_model_or_solution(
    capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], compressed: Path
) -> None:
    code, _, err = _cli(
        capsys, "bench", "digits_mobilenet", "--solution", str(solutions["mobilenet"]),
        "--compressed", str(compressed),
    )  # fmt: skip
    line = _one_line_error(code, err)
    assert "made from digits_resnet, not from digits_mobilenet" in line
    code, _, err = _cli(
        capsys, "bench", "digits_resnet", "--solution", str(solutions["resnet80"]),
        "--compressed", str(compressed),
    )  # fmt: skip
    line = _one_line_error(code, err)
    assert "another solution" in line and "--solution" in line


def test_bench_refuses_tables_of_another_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path]
) -> None:
    argv = ["bench", "digits_resnet", "--solution", str(solutions["resnet"]), "--tables"]
    code, _, err = _cli(capsys, *argv, str(TABLES / "digits_mobilenet"))
    assert "tables of digits_mobilenet, not of digits_resnet" in _one_line_error(code, err)
    # the same model's name, but another chain (another width or input size)
    tables = _copy_tables(tmp_path)
    meta = json.loads((tables / "meta.json").read_text())
    meta["chain_digest"] = "0123456789abcdef"
    (tables / "meta.json").write_text(json.dumps(meta))
    code, _, err = _cli(capsys, *argv, str(tables))
    line = _one_line_error(code, err)
    assert "0123456789abcdef" in line and "another network" in line


# ---------------------------------------------------------------------------------------------
# Item 5: damaged and degenerate inputs


def _flipped(tmp_path: Path) -> Path:
    """The shipped weights with 4 KB in the middle of the archive flipped (the tensors' bytes)."""
    data = bytearray(WEIGHTS.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0x5A for b in data[middle : middle + 4096])
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    return path


def _non_finite(tmp_path: Path, value: float) -> Path:
    state = torch.load(WEIGHTS, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], value)
    path = tmp_path / f"weights_{value}.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["compress", "finetune", "bench"])
def test_damaged_and_non_finite_weights_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], command
) -> None:
    out = tmp_path / "out"
    extra = {
        "compress": ["--out", str(out)],
        "finetune": ["--data", "digits", "--out", str(out)],
        "bench": [],
    }[command]
    weights = {
        "CRC": _flipped(tmp_path),
        "NaN": _non_finite(tmp_path, math.nan),
        "infinity": _non_finite(tmp_path, math.inf),
    }
    for expected, path in weights.items():
        code, _, err = _cli(
            capsys, command, "digits_resnet", "--weights", str(path),
            "--solution", str(solutions["resnet"]), *extra,
        )  # fmt: skip
        line = _one_line_error(code, err)
        assert str(path) in line and (expected in line or "NaN or infinity" in line), line
        assert not out.exists()


def test_damaged_uploads_are_refused_as_files_are() -> None:
    data = bytearray(WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(UnsafeCheckpointError, match="CRC checksum"):
        load_state_dict_bytes(bytes(data), "upload.pt")
    assert load_state_dict_bytes(WEIGHTS.read_bytes(), "upload.pt")  # the intact file loads


def test_a_network_whose_loss_overflows_is_refused_before_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path]
) -> None:
    """Finite weights whose activations overflow: a NaN loss scores nothing; refuse it."""
    state = torch.load(WEIGHTS, weights_only=True)
    key = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[key] = state[key] * 1e38
    weights = tmp_path / "overflow.pt"
    torch.save(state, weights)
    out = tmp_path / "c.pt"
    code, _, err = _cli(
        capsys, "compress", "digits_resnet", "--weights", str(weights), "--solution",
        str(solutions["resnet"]), "--data", "digits", "--out", str(out),
    )  # fmt: skip
    assert "non-finite" in _one_line_error(code, err)
    assert not out.exists()


def _tamper(solution: dict[str, Any], how: str) -> Any:
    segment = solution["segments"][0]
    if how == "float start":
        segment["start"] = float(segment["start"])
    elif how == "bool kernel":
        segment["kernel"] = True
    elif how == "int depthwise":
        segment["depthwise"] = int(segment["depthwise"])
    elif how == "text kept_convs":
        segment["kept_convs"] = ",".join(map(str, segment["kept_convs"]))
    elif how == "dict kept_activations":
        solution["kept_activations"] = {"0": 0}
    elif how == "segments not a list":
        solution["segments"] = segment
    elif how == "version 2":
        solution["version"] = 2
    elif how == "version text":
        solution["version"] = "1"
    elif how == "NaN latency":
        solution["latency_ms"] = math.nan
    elif how == "bool importance":
        solution["importance"] = False
    elif how == "a list":
        return [solution]
    return solution


TAMPERS = [
    "float start",
    "bool kernel",
    "int depthwise",
    "text kept_convs",
    "dict kept_activations",
    "segments not a list",
    "version 2",
    "version text",
    "NaN latency",
    "bool importance",
    "a list",
]


@pytest.mark.parametrize("how", TAMPERS)
def test_solution_files_are_parsed_strictly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], solutions: dict[str, Path], how: str
) -> None:
    data = _tamper(json.loads(solutions["resnet"].read_text()), how)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidSolutionError):
        load_solution(path)
    out = tmp_path / "c.pt"
    code, _, err = _cli(
        capsys, "compress", "digits_resnet", "--solution", str(path), "--out", str(out)
    )
    assert "tampered.json" in _one_line_error(code, err)
    assert not out.exists()


def test_an_intact_solution_file_still_loads(solutions: dict[str, Path]) -> None:
    solution = load_solution(solutions["resnet"])
    assert solution.version == 1 and all(isinstance(s.start, int) for s in solution.segments)
