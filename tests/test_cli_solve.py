"""The ``solve`` command: the exact frontier's answer, budget 1.0, and bad input in one line.

Most tests call ``core.__main__.main`` in this process (the parser and the error mapping are the
same as ``python -m core``); one runs the real command to see that no traceback escapes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core import dp
from core.solution import Solution, load_solution
from core.tables import read_tables
from tests.helpers import one_line_error, run_cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    ROOT / "cached_tables" / name for name in ("digits_resnet", "digits_mobilenet", "digits_unet")
]
RESNET = str(SHIPPED[0])
METHODS = ("layermerge", "depth", "layer")


def _cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


_one_line_error = one_line_error


# ---------------------------------------------------------------------------------------------
# One answer: the exact frontier's


@pytest.mark.parametrize("objective", ["additive", "paper"])
@pytest.mark.parametrize("tables_dir", SHIPPED, ids=lambda p: p.name)
def test_the_answer_is_the_frontiers_at_many_budgets(
    tables_dir: Path, objective: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = read_tables(tables_dir)
    for method in METHODS:
        points = dp.frontier(tables, method=method, objective=objective)
        fastest = points[0].latency_ms / tables.original_latency_ms
        for budget in (0.12, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.97, 1.0, 1.3):
            args = ["solve", "--tables", str(tables_dir), "--budget", str(budget)]
            code, out, err = _cli(
                *args, "--method", method, "--objective", objective, "--json", capsys=capsys
            )
            if budget < fastest:
                assert code == 2 and "fastest needs" in _one_line_error(code, err)
                continue
            assert code == 0, err
            result = json.loads(out)
            expected = dp.pick(points, budget * tables.original_latency_ms)
            assert result["importance"] == pytest.approx(expected.importance, abs=1e-9)
            assert result["latency_ms"] == pytest.approx(expected.latency_ms, abs=1e-9)
            assert result["latency_ms"] <= result["budget_ms"] * (1 + 1e-9)
            assert Solution.from_dict(result).segments == expected.segments
            assert result["objective"] == objective and result["extra"]["exact"] is True


@pytest.mark.parametrize("objective", ["additive", "paper"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("tables_dir", SHIPPED, ids=lambda p: p.name)
def test_budget_one_keeps_everything_or_scores_at_least_as_much(
    tables_dir: Path, method: str, objective: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(
        "solve", "--tables", str(tables_dir), "--budget", "1.0", "--method", method,
        "--objective", objective, "--json", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    tables = read_tables(tables_dir)
    singles = [e for e in tables.entries if e.end - e.start == 1 and e.kernel and e.keeps_all_convs]
    keep_value = 0.0 if objective == "additive" else sum(e.importance for e in singles)
    keeps_all = all(s["end"] - s["start"] == 1 and s["kept_convs"] for s in result["segments"])
    assert keeps_all or result["importance"] >= keep_value - 1e-9
    assert result["importance"] >= keep_value - 1e-9
    assert result["latency_ms"] <= tables.original_latency_ms * (1 + 1e-9)


def test_layermerge_scores_at_least_both_baselines_on_the_shipped_tables() -> None:
    for tables_dir in SHIPPED:
        tables = read_tables(tables_dir)
        for objective in ("additive", "paper"):
            rows = dp.compare_methods(
                tables,
                [f * tables.original_latency_ms for f in (1.0, 0.9, 0.7, 0.5, 0.3, 0.15, 0.1)],
                objective=objective,
            )
            for row in rows:
                for baseline in ("depth", "layer"):
                    theirs = row[f"{baseline}_importance"]
                    if theirs is not None:
                        assert row["layermerge_importance"] >= theirs - 1e-9, (tables_dir, row)


def test_the_binned_dp_is_an_option_that_never_beats_the_exact_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["solve", "--tables", RESNET, "--budget", "0.8", "--json"]
    code, out, err = _cli(*base, capsys=capsys)
    assert code == 0, err
    exact = json.loads(out)
    code, out, err = _cli(*base, "--bin-ms", "0.1", capsys=capsys)
    assert code == 0, err
    binned = json.loads(out)
    assert binned["extra"]["bin_ms"] == 0.1 and "exact" not in binned["extra"]
    assert binned["importance"] <= exact["importance"] + 1e-9
    assert binned["latency_ms"] <= binned["budget_ms"]


def test_the_text_names_the_objective_and_the_prediction(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = _cli("solve", "--tables", RESNET, "--budget", "0.5", capsys=capsys)
    assert code == 0, err
    meta = read_tables(RESNET).meta
    assert "layermerge (exact, extended search)" in out
    assert "objective (additive) ΣΔacc" in out
    assert f"(original {meta['importance_base_accuracy']:.4g}%)" in out
    code, out, err = _cli(
        "solve", "--tables", str(SHIPPED[2]), "--budget", "0.6", "--objective", "paper",
        "--bin-ms", "0.05", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "binned DP, 0.05 ms bins" in out
    assert "objective (paper) Σ exp(Δ/100)" in out and "predicted ε-loss" in out


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "inf"], "--budget"),
        (["--budget", "nan"], "--budget"),
        (["--budget", "-1"], "--budget"),
        (["--budget", "0"], "--budget"),
        (["--budget", "1e308"], "not a finite budget"),
        (["--budget", "abc"], "invalid float"),
        (["--budget-ms", "-1"], "--budget-ms"),
        (["--budget-ms", "inf"], "--budget-ms"),
        (["--budget-ms", "nan"], "--budget-ms"),
        (["--budget", "0.6", "--bin-ms", "0"], "--bin-ms"),
        (["--budget", "0.6", "--bin-ms", "-0.1"], "--bin-ms"),
        (["--budget", "0.6", "--bin-ms", "nan"], "--bin-ms"),
        (["--budget", "0.6", "--bin-ms", "inf"], "--bin-ms"),
        (["--budget", "0.6", "--bin-ms", "1e-9"], "larger bin_ms"),
        (["--budget", "0.6", "--method", "kim23"], "unknown DP method"),
        (["--budget", "0.6", "--objective", "fancy"], "invalid choice"),
        (["--budget", "0.6", "--search", "wide"], "invalid choice"),
        (["--budget", "0.01"], "fastest needs"),
    ],
)
def test_bad_numbers_and_names_exit_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli("solve", "--tables", RESNET, *args, capsys=capsys)
    assert message in _one_line_error(code, err)
    assert out == ""


def _tmp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_out_in_a_missing_folder_or_onto_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["solve", "--tables", RESNET, "--budget", "0.6", "--out"]
    code, _, err = _cli(*base, str(tmp_path / "no" / "such" / "s.json"), capsys=capsys)
    assert "does not exist" in _one_line_error(code, err)
    assert not (tmp_path / "no").exists()
    (tmp_path / "taken").mkdir()
    code, _, err = _cli(*base, str(tmp_path / "taken"), capsys=capsys)
    assert "is a directory" in _one_line_error(code, err)
    assert (tmp_path / "taken").is_dir() and not list((tmp_path / "taken").iterdir())
    code, _, err = _cli(*base, str(tmp_path), capsys=capsys)
    assert "is a directory" in _one_line_error(code, err)
    assert _tmp_files(tmp_path) == []


def test_a_special_file_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, _, err = _cli(
        "solve", "--tables", RESNET, "--budget", "0.6", "--out", str(fifo), capsys=capsys
    )
    assert "not a regular file" in _one_line_error(code, err)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert _tmp_files(tmp_path) == []
    code, _, err = _cli(
        "solve", "--tables", RESNET, "--budget", "0.6", "--out", os.devnull, capsys=capsys
    )
    assert "not a regular file" in _one_line_error(code, err)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "s.json"
    target.write_text("old")

    def full_disk(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("core.files.os.replace", full_disk)  # the shared write policy
    code, _, err = _cli(
        "solve", "--tables", RESNET, "--budget", "0.6", "--out", str(target), capsys=capsys
    )
    assert "No space left on device" in _one_line_error(code, err)
    assert target.read_text() == "old" and _tmp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = _cli(
            "solve", "--tables", RESNET, "--budget", "0.6", "--out", str(folder / "s.json"),
            capsys=capsys,
        )  # fmt: skip
        assert "Permission denied" in _one_line_error(code, err)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_out_writes_the_solution_replacing_a_file_and_through_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "s.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, out, err = _cli(
        "solve", "--tables", RESNET, "--budget", "0.6", "--out", str(link), "--json",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert link.is_symlink() and stat.S_IMODE(target.stat().st_mode) == 0o640
    saved = load_solution(target)
    assert saved.to_dict() == Solution.from_dict(result).to_dict()
    assert saved.predicted == result["predicted_accuracy"] and saved.objective == "additive"
    assert math.isfinite(saved.predicted) and _tmp_files(tmp_path) == []


def test_the_real_command_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "core", "solve", "--tables", RESNET, "--budget", "inf"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert "--budget must be a finite number > 0" in _one_line_error(
        result.returncode, result.stderr
    )
