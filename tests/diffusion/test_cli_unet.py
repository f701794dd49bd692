"""Every CLI command on a diffusion MODEL: digits_unet and a diffusers folder of an unseen config.

The whole flow runs on a tiny UNet2DModel saved as a diffusers folder (8x8 samples, attention at
4x4): profile and importance (``--steps 0``) write a real table directory, solve answers on it,
compress writes a checkpoint ``core.export.load`` rebuilds, equal to the training form, finetune
writes the training form that compress --finetuned merges, and bench times both side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch

from core import export
from core.__main__ import main
from core.families import family_for
from core.families.unet.chain import trace_unet, unet_segments, unet_table_entries
from core.families.unet.export import load_unet_checkpoint
from core.families.unet.unet import build_unet, save_unet_folder, unet_from_config
from core.flow import apply_solution
from core.segments import validate_solution
from core.solution import load_solution
from core.tables import manifest_entry, read_tables
from tests.helpers import TINY_UNET_CONFIG, relative_error

ROOT = Path(__file__).resolve().parents[2]
CNN_CHAIN_KEYS = {
    "model", "width", "input_size", "weights", "chain_digest", "positions", "last_position",
    "convs", "residual_spans", "breaks", "valid_segments", "table_entries",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def cli(*argv: str, json_output: bool = True) -> tuple[int, Any, str]:
    """``python -m core ARGV [--json]`` in this process: exit code, parsed stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json"] if json_output else list(argv))
    text = out.getvalue()
    return code, (json.loads(text) if json_output and code == 0 else text), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MODEL spec of a diffusers folder holding a small UNet no code here was written for."""
    folder = tmp_path_factory.mktemp("tiny_unet")
    save_unet_folder(unet_from_config(TINY_UNET_CONFIG, seed=1), folder)
    return f"diffusers:{folder}"


@pytest.fixture(scope="module")
def tables(tiny: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real table directory of the tiny UNet: profile, then importance without finetuning."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tables")
    code, _, err = cli(
        "profile", tiny, "--out", str(out), "--batch", "2", "--threads", "1",
        "--min-run-time", "0.005", "--no-network",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = cli(
        "importance", tiny, "--data", "digits", "--out", str(out), "--steps", "0",
        "--eval-images", "16",
    )  # fmt: skip
    assert code == 0, err
    torch.set_num_threads(previous)
    return out


@pytest.fixture(scope="module")
def solution(tables: Path) -> Path:
    """The DP's answer at the tightest of a few budgets the (noisy) table can meet."""
    path = tables.parent / "solution.json"
    for budget in ("0.7", "0.8", "0.9"):
        code, result, err = cli(
            "solve", "--tables", str(tables), "--budget", budget, "--out", str(path)
        )
        if code == 0:
            assert result["latency_ms"] <= result["budget_ms"] + 1e-9
            return path
        assert "no layermerge solution fits" in err
    raise AssertionError(err)


def test_chain_json_of_digits_unet_has_the_cnn_keys_and_the_unet_structure() -> None:
    code, data, err = cli("chain", "digits_unet")
    assert code == 0, err
    assert CNN_CHAIN_KEYS <= set(data) and data["kind"] == "diffusion"
    uchain = trace_unet(build_unet("digits_unet").model)
    assert data["table_entries"] == unet_table_entries(uchain)
    assert data["valid_segments"] == [[s.start, s.end] for s in unet_segments(uchain)]
    assert data["chain_digest"] == uchain.digest()
    assert [b["name"] for b in data["resnet_blocks"]] == [b.name for b in uchain.blocks]
    assert data["upsample_convs"] == list(uchain.upsample_convs)
    assert [c["activation"] for c in data["convs"]] == list(uchain.chain.activations)
    assert all(isinstance(c["reducible"], bool) for c in data["convs"])
    assert not data["convs"][0]["reducible"]


def test_chain_of_a_diffusers_folder_as_json_and_text(tiny: str) -> None:
    code, data, err = cli("chain", tiny)
    assert code == 0, err
    assert data["kind"] == "diffusion" and data["input_size"] == 8
    assert data["table_entries"] == unet_table_entries(trace_unet(build_unet(tiny).model))
    code, text, err = cli("chain", tiny, json_output=False)
    assert code == 0, err
    assert "ResnetBlock2Ds" in text and "table entries" in text


def test_a_bad_folder_exits_2_with_one_line_in_a_real_process(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "core", "chain", f"diffusers:{tmp_path / 'missing'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "not a diffusers model folder" in completed.stderr


def test_weights_that_do_not_fit_the_config_exit_2_with_one_line(tmp_path: Path) -> None:
    save_unet_folder(unet_from_config(TINY_UNET_CONFIG), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [8, 24]
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, _, err = cli("chain", f"diffusers:{tmp_path}")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert "size mismatch" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["importance", "{tiny}", "--data", "folder:/x", "--out", "{tmp}"], "only the bundled"),
        (["profile", "{tiny}", "--out", "{tmp}", "--device", "cuda"], "--device cuda"),
        (["chain", "{tiny}", "--weights", "{tmp}"], "drop --weights"),
        (["chain", "digits_unet", "--weights", "{tmp}/w.pt"], "takes a diffusers folder"),
        (["chain", "{tiny}", "--input-size", "32"], "sample_size 8"),
        (
            ["finetune", "{tiny}", "--solution", "x", "--data", "digits", "--out", "{tmp}",
             "--momentum", "0.5"],
            "--momentum is not supported",
        ),
    ],
)  # fmt: skip
def test_options_that_do_not_apply_are_refused_in_one_line(
    tiny: str, tmp_path: Path, argv: list[str], message: str
) -> None:
    filled = [a.format(tiny=tiny, tmp=tmp_path) for a in argv]
    code, _, err = cli(*filled)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert message in err


def test_profile_and_importance_write_a_table_directory_the_tables_reader_reads(
    tiny: str, tables: Path
) -> None:
    entries = unet_table_entries(trace_unet(build_unet(tiny).model))
    assert len(read_tables(tables, require_importance=False).entries) == entries
    read = read_tables(tables)
    assert len(read.entries) == entries
    assert any(e.kernel == 0 and e.identity_segment for e in read.entries)  # identity upsample
    assert all(0 < e.importance <= 1.5 for e in read.entries)
    meta = read.meta
    assert meta["family"] == "unet" and meta["batch"] == 2 and meta["model"] == tiny
    assert manifest_entry(tables)["has_importance"]


def test_solve_answers_on_unet_tables_with_a_valid_solution(tiny: str, solution: Path) -> None:
    loaded = load_solution(solution)
    validate_solution(trace_unet(build_unet(tiny).model).chain, loaded)
    assert loaded.method == "layermerge" and loaded.segments


def test_compress_writes_a_checkpoint_equal_to_the_training_form_and_onnx(
    tiny: str, solution: Path, tmp_path: Path
) -> None:
    out, onnx_path = tmp_path / "c.pt", tmp_path / "c.onnx"
    code, result, err = cli(
        "compress", tiny, "--solution", str(solution), "--out", str(out), "--onnx",
        str(onnx_path),
    )  # fmt: skip
    assert code == 0, err
    metrics = result["metrics"]
    assert metrics["merge_max_relative_error"] < 1e-4
    assert metrics["compressed"]["depth"] < metrics["original"]["depth"]
    torch.load(out, weights_only=True)
    network = export.load(out)

    bundle = build_unet(tiny)
    uchain = trace_unet(bundle.model)
    built = apply_solution(bundle.model, uchain, load_solution(solution), family=family_for(tiny))
    training = built.training_network
    sample = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([0, 300, 999])
    with torch.no_grad():
        expected = training(sample, steps).sample
        assert relative_error(expected, network(sample, steps).sample) < 1e-5
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"sample": sample.numpy(), "timestep": steps.numpy()})[0]
    assert relative_error(expected, torch.from_numpy(got)) < 1e-4


def test_finetune_writes_the_training_form_that_compress_merges(
    tiny: str, solution: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ft"
    code, result, err = cli(
        "finetune", tiny, "--solution", str(solution), "--data", "digits", "--out", str(out),
        "--steps", "2", "--batch-size", "8", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert result["status"] == "completed" and result["step"] == 2
    assert "finetune [" in err  # the progress bar
    assert {p.name for p in out.iterdir()} >= {
        "finetuned.pt",
        "compressed.pt",
        "metrics.json",
        "finetune-state.pt",  # the resumable run state
    }
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert not metrics["finetune_resumed"]
    for key in ("eps_loss_original", "eps_loss_after_surgery", "eps_loss_after"):
        assert metrics[key] > 0
    assert metrics["eps_loss_merged"] == pytest.approx(metrics["eps_loss_after"], rel=1e-4)
    training = load_unet_checkpoint(out / "finetuned.pt")  # the training form rebuilds too
    assert not torch.load(out / "finetuned.pt", weights_only=True)["structure"]["merged"]

    rerun = ("finetune", tiny, "--solution", str(solution), "--data", "digits", "--out", str(out),
             "--steps", "2", "--batch-size", "8", "--device", "cpu")  # fmt: skip
    code, _, err = cli(*rerun)  # the same run again: resumed from its state, nothing retrained
    assert code == 0, err
    again = json.loads((out / "metrics.json").read_text())["metrics"]
    assert again["finetune_resumed"] and again["eps_loss_after"] == metrics["eps_loss_after"]
    code, _, err = cli(*rerun, "--restart")
    assert code == 0, err
    assert not json.loads((out / "metrics.json").read_text())["metrics"]["finetune_resumed"]

    compressed = tmp_path / "from_finetuned.pt"
    code, result, err = cli(
        "compress", tiny, "--solution", str(solution), "--finetuned", str(out), "--out",
        str(compressed),
    )  # fmt: skip
    assert code == 0, err
    assert result["finetune_status"] == "completed"
    sample = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    steps = torch.tensor([5, 700])
    with torch.no_grad():
        merged = export.load(compressed)(sample, steps).sample
        assert torch.allclose(merged, export.load(out / "compressed.pt")(sample, steps).sample)
        assert relative_error(training(sample, steps).sample, merged) < 1e-5

    # a merged checkpoint does not pass for the training form
    code, _, err = cli(
        "compress", tiny, "--solution", str(solution), "--finetuned", str(compressed), "--out",
        str(tmp_path / "x.pt"),
    )  # fmt: skip
    assert code == 2 and "training form" in err and not (tmp_path / "x.pt").exists()


def test_bench_times_one_step_and_sampling_side_by_side(tiny: str, solution: Path) -> None:
    code, result, err = cli(
        "bench", tiny, "--solution", str(solution), "--rounds", "2", "--threads", "1",
        "--samples", "4", "--sampling-steps", "2", "--sampling-repeats", "2",
    )  # fmt: skip
    assert code == 0, err
    [row] = result["results"]
    assert row["backend"] == "torch" and row["rounds"] == 2
    assert row["speedup"] == pytest.approx(row["original_ms"] / row["compressed_ms"])
    sampling = result["sampling"]
    assert len(sampling["original_runs_s"]) == len(sampling["compressed_runs_s"]) == 2
    assert sampling["speedup"] == pytest.approx(sampling["original_s"] / sampling["compressed_s"])
    assert result["compressed_depth"] < result["original_depth"]


@pytest.mark.parametrize("command", ["chain", "profile", "importance", "finetune", "compress"])
def test_help_names_the_diffusion_models(command: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "digits_unet" in out.getvalue() and "diffusers:PATH" in out.getvalue()
