"""Every CLI verb that needs no data, for every model of every family (parametrized over the
registry), in process through ``core.__main__.main``: the same code path as ``python -m core``."""

from __future__ import annotations

import json

import pytest
import torch

from core import export
from core.__main__ import main
from core.families import family_for, list_models
from core.tables import read_manifest

FAST_MODELS = {"digits_resnet", "digits_mobilenet", "digits_unet"}
MODELS = [
    pytest.param(name, marks=() if name in FAST_MODELS else pytest.mark.slow)
    for name in list_models()
]
SHIPPED = sorted(
    {row["model"] for row in read_manifest()} & set(list_models()), key=list_models().index
)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", MODELS)
def test_chain_describes_every_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    size = [] if name in FAST_MODELS else ["--input-size", "64"]
    result = _run(capsys, "chain", name, *size)
    family = family_for(name)
    bundle = family.load(name, input_size=int(size[1]) if size else None)
    assert result["chain_digest"] == family.trace(bundle).digest()
    assert result["table_entries"] > 0 and result["valid_segments"]


@pytest.mark.parametrize("name", SHIPPED)
def test_solve_then_compress_then_load_on_the_shipped_tables(
    name: str, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    tables = next(row["dir"] for row in read_manifest() if row["model"] == name)
    solution = tmp_path / "solution.json"
    solved = _run(capsys, "solve", "--tables", f"cached_tables/{tables}", "--budget", "0.7",
                  "--out", str(solution))  # fmt: skip
    assert solved["latency_ms"] <= solved["budget_ms"] + 1e-9
    out = tmp_path / "compressed.pt"
    compressed = _run(capsys, "compress", name, "--solution", str(solution), "--out", str(out))
    assert compressed["metrics"]["merge_max_relative_error"] <= 1e-4
    assert isinstance(export.load(out), torch.nn.Module)
