"""The ``chain`` command as other tools use it: JSON on stdout, exit 2 with one line on error."""

from __future__ import annotations

import json
import subprocess
import sys

from core.chain import trace_chain
from core.models import build_model
from core.segments import count_table_entries


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=300
    )


def test_chain_json_lists_positions_spans_segments_and_entries() -> None:
    result = _run("chain", "digits_mobilenet", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    bundle = build_model("digits_mobilenet")
    chain = trace_chain(bundle.model, bundle.input_size)
    assert data["table_entries"] == count_table_entries(chain)
    assert len(data["convs"]) == len(chain.convs)
    assert data["breaks"] == sorted(chain.breaks)
    assert [[r["start"], r["end"]] for r in data["residual_spans"]] == [
        [r.start, r.end] for r in chain.residuals
    ]
    assert all(i < j for i, j in data["valid_segments"])


def test_chain_text_output_names_the_counts() -> None:
    result = _run("chain", "resnet18", "--input-size", "64")
    assert result.returncode == 0, result.stderr
    assert "table entries" in result.stdout and "residual spans" in result.stdout


def test_unsupported_model_exits_2_with_one_line() -> None:
    result = _run("chain", "torchvision.models:mobilenet_v3_small", "--input-size", "64")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "SqueezeExcitation" in result.stderr


def test_unknown_model_exits_2() -> None:
    result = _run("chain", "no_such_model")
    assert result.returncode == 2 and "no_such_model" in result.stderr


def test_invalid_solution_exits_2(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"method": "x"}')
    tables = tmp_path / "tables"
    result = _run("solve", "--tables", str(tables), "--budget", "0.5")
    assert result.returncode == 2 and "does not exist" in result.stderr
