"""core.export and core.flow: the compressed checkpoint round-trips safely, ONNX agrees with torch."""

from __future__ import annotations

import copy
import functools
import io
import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core import export
from core.chain import Chain, trace_chain
from core.errors import LayerMergeError, TableMismatchError, UnsafeCheckpointError
from core.flow import compress
from core.merge import merge
from core.models import build_model
from core.segments import find_segments
from core.surgery import build_training_network
from core.tables import TableEntry, Tables
from tests.helpers import random_solution, randomize_batchnorm, relative_error

DEMO_MODELS = ("digits_resnet", "digits_mobilenet")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=DEMO_MODELS)
def compressed(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _compressed(request.param)


@functools.cache
def _compressed(name: str) -> dict[str, Any]:
    """A demo model, a random solution, its training form (eval) and merged network."""
    bundle = build_model(name)
    model = randomize_batchnorm(copy.deepcopy(bundle.model), seed=3)
    chain = trace_chain(model, bundle.input_size)
    solution = random_solution(chain, random.Random(7))
    training = build_training_network(model, chain, solution).eval()
    merged = merge(training, chain, solution)
    return {
        "bundle": bundle,
        "chain": chain,
        "solution": solution,
        "training": training,
        "merged": merged,
    }


def _example(chain: Chain, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, *chain.input_shape, generator=torch.Generator().manual_seed(1))


def test_save_load_weights_only_equals_training_form(
    compressed: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "c.pt"
    export.save(
        compressed["merged"],
        path,
        solution=compressed["solution"],
        model_name=compressed["bundle"].name,
        input_size=compressed["bundle"].input_size,
        metrics={"accuracy_before": 97.5, "latency_ms": [1.0, 2.0]},
    )
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == export.CHECKPOINT_FORMAT
    assert raw["format_version"] == export.FORMAT_VERSION
    assert raw["solution"]["kept_convs"] == list(compressed["solution"].kept_convs)
    assert raw["model"]["name"] == compressed["bundle"].name
    assert raw["metrics"]["accuracy_before"] == 97.5
    assert raw["metrics"]["depth"] == compressed["merged"].depth()
    assert "torch" in raw["versions"]
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())

    loaded = export.load(path)
    assert isinstance(loaded, torch.nn.Module) and not loaded.training
    x = _example(compressed["chain"])
    with torch.no_grad():
        reference = compressed["training"](x)
        assert relative_error(reference, loaded(x)) < 1e-4
        from_bytes = export.load(path.read_bytes())
        assert torch.equal(from_bytes(x), loaded(x))


def test_onnx_runtime_equals_torch(compressed: dict[str, Any], tmp_path: Path) -> None:
    path = export.export_onnx(
        compressed["merged"], tmp_path / "c.onnx", compressed["chain"].input_shape
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _example(compressed["chain"], batch=4)  # a batch other than the exported one
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = compressed["merged"](x)
    assert relative_error(expected, torch.from_numpy(got)) < 1e-4


def _synthetic_tables(chain: Chain) -> Tables:
    """Latency grows with kernel size, importance falls with pruned convs and merged spans."""
    entries = []
    for segment in find_segments(chain, include_removals=True):
        for option in segment.options:
            pruned = segment.end - segment.start - len(option.kept_convs)
            importance = float(np.exp(-0.02 * pruned - 0.01 * (segment.end - segment.start)))
            entries.append(
                TableEntry(
                    segment.start,
                    segment.end,
                    option.kernel,
                    option.depthwise,
                    option.stride,
                    option.kept_convs,
                    latency_ms=0.0 if option.is_removal else 0.05 + 0.02 * option.kernel**2,
                    importance=importance,
                    delta_acc=100.0 * (importance - 1.0),  # the DP's additive objective reads it
                )
            )
    original = sum(e.latency_ms for e in entries if e.end - e.start == 1 and e.keeps_all_convs)
    meta = {"original_table_latency_ms": original, "chain_digest": chain.digest()}
    return Tables(entries=tuple(entries), meta=meta, digest="synthetic")


def test_flow_compress_returns_new_modules_and_leaves_the_model_alone() -> None:
    bundle = build_model("digits_resnet")
    model = randomize_batchnorm(copy.deepcopy(bundle.model), seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chain = trace_chain(model, bundle.input_size)
    tables = _synthetic_tables(chain)

    result = compress(model, tables, budget_fraction=0.6, input_size=bundle.input_size)

    assert result.solution.latency_ms <= 0.6 * tables.original_latency_ms + 1e-9
    assert result.training_network is not model and result.merged_network is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    x = _example(result.chain)
    with torch.no_grad():
        assert relative_error(result.training_network.eval()(x), result.merged_network(x)) < 1e-4
    other = Tables(tables.entries, {**tables.meta, "chain_digest": "0" * 16}, "x")
    with pytest.raises(TableMismatchError, match="another chain"):
        compress(model, other, budget_fraction=0.6, input_size=bundle.input_size)


# --------------------------------------------------------------------------- refusals


def _saved(compressed: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "good.pt"
    export.save(compressed["merged"], path, solution=compressed["solution"])
    return torch.load(path, weights_only=True)


def _first_conv(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in checkpoint["spec"]["steps"] if s["op"] == "conv")


def _none(*_: Any) -> None:
    return None


# Each mutation returns a replacement checkpoint, or None after changing it in place.
MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "not a dict": (lambda c: [c], "not a compressed checkpoint dict"),
    "other format": (lambda c: {**c, "format": "something"}, "not a LayerMerge compressed"),
    "future version": (lambda c: {**c, "format_version": 99}, "format_version 99"),
    "missing spec": (lambda c: {k: v for k, v in c.items() if k != "spec"}, "lacks the key 'spec'"),
    "metrics not a dict": (lambda c: {**c, "metrics": [1]}, "'metrics' is a list"),
    "unknown step": (
        lambda c: c["spec"]["steps"].append({"op": "exec", "code": "x"}),
        "unknown network step 'exec'",
    ),
    "step lacks a field": (lambda c: _none(_first_conv(c).pop("name")), "lacks 'name'"),
    "channels as text": (
        lambda c: _first_conv(c).update(in_channels="3"),
        "'in_channels' is out of range",
    ),
    "huge padding": (
        lambda c: c["spec"]["steps"].insert(1, {"op": "pad", "amount": 10**9}),
        "amount",
    ),
    "add before save": (
        lambda c: c["spec"]["steps"].insert(0, {"op": "add", "slot": 99}),
        "never saved",
    ),
    "dotted layer name": (lambda c: _first_conv(c).update(name="a.b"), "not a plain name"),
    "fixed op with foreign kwargs": (
        lambda c: c["spec"]["steps"].append(
            {"op": "fixed", "name": "evil", "kind": "linear", "params": {"device": "cuda"}}
        ),
        "takes no parameter 'device'",
    ),
    "tensor missing": (
        lambda c: _none(c["state_dict"].pop(next(iter(c["state_dict"])))),
        "does not match the spec: missing",
    ),
    "tensor misshapen": (
        lambda c: c["state_dict"].update({k: torch.zeros(1) for k in list(c["state_dict"])[:1]}),
        "has shape",
    ),
    "non-tensor value": (
        lambda c: c["state_dict"].update({"extra": [1, 2]}),
        "not a tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_bad_checkpoints_are_refused_clearly(tmp_path: Path, case: str) -> None:
    checkpoint = _saved(_compressed("digits_resnet"), tmp_path)
    mutate, message = MUTATIONS[case]
    changed = mutate(checkpoint)  # a replacement, or None after changing it in place
    data = checkpoint if changed is None else changed
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with pytest.raises(UnsafeCheckpointError, match=message):
        export.load(buffer.getvalue())


def test_plain_state_dict_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="pass it as --weights"):
        export.load(path)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": export.CHECKPOINT_FORMAT, "spec": Evil()}))
    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling"):
        export.load(path)
    with pytest.raises(UnsafeCheckpointError, match="not a readable torch checkpoint"):
        export.load(b"PK\x03\x04garbage")
    with pytest.raises(UnsafeCheckpointError, match="does not exist"):
        export.load(tmp_path / "missing.pt")
    assert not marker.exists()


def test_only_step_networks_are_exported() -> None:
    with pytest.raises(LayerMergeError, match="only a StepNetwork"):
        export.build_checkpoint(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
