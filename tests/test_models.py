"""Tests for core.models (registry, safe weights) and core.demo_models (the digits demo nets)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import core.models
from core.demo_models import (
    DEMO_MODELS,
    DigitsMobileNet,
    DigitsResNet,
    evaluate,
    train_demo_model,
)
from core.errors import LayerMergeError, UnsafeCheckpointError
from core.models import (
    ModelBundle,
    build_model,
    default_input_size,
    default_num_classes,
    demo_weights_path,
    get_model_info,
    list_models,
    load_state_dict_bytes,
    load_state_dict_file,
    load_weights,
    register_model,
    state_dict_digest,
    stated_input_size,
)

REGISTERED = (
    "digits_mobilenet",
    "digits_resnet",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
)


class _Evil:
    """A pickle payload that would create ``marker`` if it were ever unpickled unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return build_model("resnet18").model.state_dict()


def _single_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_contract_models() -> None:
    assert set(REGISTERED) <= set(list_models())
    assert list_models("digits_*") == ["digits_mobilenet", "digits_resnet"]
    assert list_models() == sorted(list_models())


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_model("resnet18")
        def again(*, num_classes: int = 1000) -> nn.Module:
            return nn.Identity()

    with pytest.raises(ValueError, match="may not contain"):
        register_model("a:b")


def test_new_registration_is_buildable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.models, "_MODELS", dict(core.models._MODELS))

    @register_model("tiny_test_net", input_size=8, num_classes=3)
    def tiny_test_net(*, num_classes: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

    bundle = build_model("tiny_test_net")
    assert (bundle.input_size, bundle.num_classes, bundle.weights_source) == (8, 3, "seeded")
    assert "tiny_test_net" in list_models()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_runs(name: str) -> None:
    bundle = build_model(name)
    assert isinstance(bundle, ModelBundle)
    assert not bundle.model.training
    assert bundle.input_size == default_input_size(name)
    assert bundle.num_classes == default_num_classes(name)
    size = min(bundle.input_size, 64)  # every registered net runs at 64 px; faster than 224
    with torch.no_grad():
        logits = bundle.model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, bundle.num_classes)
    assert bundle.weights_note


def test_defaults() -> None:
    assert default_input_size("resnet34") == 224
    assert default_input_size("digits_resnet") == 32
    assert default_num_classes("mobilenet_v2") == 1000
    assert default_num_classes("digits_mobilenet") == 10
    assert get_model_info("mobilenet_v2").has_width
    assert not get_model_info("resnet50").has_width


def test_seeded_initial_weights_are_reproducible_and_leave_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = build_model("resnet18", num_classes=10)
    after = torch.rand(3)
    assert torch.equal(after, expected)  # building did not consume the caller's random state
    second = build_model("resnet18", num_classes=10)
    assert first.weights_source == "seeded" and "seeded" in first.weights_note
    assert first.weights_digest == second.weights_digest
    assert first.weights_digest != build_model("resnet18").weights_digest


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet9000", {}, "unknown model"),
        ("resnet18", {"width": 0.5}, "no width option"),
        ("mobilenet_v2", {"width": 0}, "positive number"),
        ("mobilenet_v2", {"width": float("nan")}, "positive number"),
        ("resnet18", {"num_classes": 0}, "num_classes"),
        ("resnet18", {"input_size": -3}, "input size"),
        ("resnet18", {"model_kwargs": {"depth": 3}}, "module:function"),
        ("resnet18", {"weights": 3}, "file path or a state_dict"),
    ],
)
def test_bad_options_raise_one_line(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(LayerMergeError, match=match) as info:
        build_model(name, **kwargs)
    _single_line(info.value)


def test_width_changes_mobilenet_and_digits_models() -> None:
    narrow = build_model("mobilenet_v2", width=0.5, num_classes=10)
    wide = build_model("mobilenet_v2", width=1.4, num_classes=10)
    count = [sum(p.numel() for p in b.model.parameters()) for b in (narrow, wide)]
    assert count[0] < count[1]
    half = build_model("digits_resnet", width=0.5)
    assert half.weights_source == "seeded"  # shipped weights are for width 1.0 only
    assert half.model.conv1.out_channels == 8


# --------------------------------------------------------------------------- weights files


def test_torchvision_state_dict_round_trips(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18-custom.pth"
    torch.save(resnet18_state, path)
    bundle = build_model("resnet18", weights=path)
    assert bundle.weights_source == "file" and bundle.weights_path == path
    assert str(path) in bundle.weights_note
    loaded = bundle.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in resnet18_state.items())
    assert bundle.weights_digest == state_dict_digest(resnet18_state)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "net", "model_state_dict", "module."])
def test_wrapped_state_dicts_are_accepted(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], wrap: str
) -> None:
    if wrap == "module.":
        content: object = {f"module.{k}": v for k, v in resnet18_state.items()}
    else:
        content = {wrap: resnet18_state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "checkpoint.pt"
    torch.save(content, path)
    state = load_state_dict_file(path)
    assert state.keys() == resnet18_state.keys()


@contextlib.contextmanager
def _storages_tagged_cuda() -> Iterator[None]:
    """Make ``torch.save`` write CPU storages as ``cuda:0``, as a file saved on a GPU has them.

    A real GPU checkpoint on a machine without one: ``torch.load`` refuses it unless the loader
    maps storages to the CPU (asserted below, so the test cannot pass without CUDA tags).
    """

    def tag(storage: object) -> str | None:
        return "cuda:0" if getattr(storage, "device", None) == torch.device("cpu") else None

    torch.serialization.register_package(0, tag, lambda storage, location: None)
    try:
        yield
    finally:
        registry = torch.serialization._package_registry
        registry[:] = [entry for entry in registry if entry[1] is not tag]


@pytest.mark.parametrize("name", ["resnet20-12fca82f.th", "model_best.pth.tar", "checkpoint"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda"])
def test_research_checkpoints_load_as_saved(
    tmp_path: Path, name: str, legacy: bool, cuda: bool
) -> None:
    """``torch.save({'state_dict': DataParallel(model).state_dict(), ...}, 'x.th')``, as is."""
    model = build_model("digits_resnet", width=0.5).model
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    content = {"epoch": 200, "state_dict": state, "best_prec1": 91.7}
    path = tmp_path / name
    with _storages_tagged_cuda() if cuda else contextlib.nullcontext():
        torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    assert zipfile.is_zipfile(path) != legacy
    if cuda and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # really CUDA storages: a plain load fails
    bundle = build_model("digits_resnet", width=0.5, weights=path)
    assert bundle.weights_digest == state_dict_digest(model.state_dict())
    assert all(t.device.type == "cpu" for t in bundle.model.state_dict().values())


def test_nested_wrappers_are_unwrapped(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "run.tar"
    torch.save({"model": {"state_dict": resnet18_state}, "iteration": 7}, path)
    assert load_state_dict_file(path).keys() == resnet18_state.keys()


def test_class_count_is_read_from_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "resnet18-10classes.pth"
    torch.save(build_model("resnet18", num_classes=10).model.state_dict(), path)
    bundle = build_model("resnet18", weights=path)
    assert bundle.num_classes == 10
    assert bundle.model.fc.out_features == 10


def test_state_dict_bytes_match_the_file(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    buffer = io.BytesIO()
    torch.save(resnet18_state, buffer)
    state = load_state_dict_bytes(buffer.getvalue(), "upload.pth")
    bundle = build_model("resnet18", weights=state)
    assert bundle.weights_source == "state_dict"
    assert bundle.weights_digest == state_dict_digest(resnet18_state)


@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "bytes"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save({"conv1.weight": _Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"conv1.weight": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="unsafe unpickling") as info:
        if how == "bytes":
            load_state_dict_bytes(path.read_bytes(), "evil.pth")
        else:
            build_model("resnet18", weights=path)
    message = _single_line(info.value)
    assert "evil.pth" in message
    assert not marker.exists()


def test_truncated_zip_is_refused(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "truncated.pth"
    torch.save({"fc.bias": resnet18_state["fc.bias"]}, path)
    assert zipfile.is_zipfile(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UnsafeCheckpointError, match="not a readable torch checkpoint") as info:
        load_state_dict_file(path)
    assert "truncated.pth" in _single_line(info.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a readable torch checkpoint"),
        (b"hello, this is a text file", "not a readable torch checkpoint|unsafe unpickling"),
        ({"conv1.weight": 1.5}, "not a tensor"),
        ([torch.ones(1)], "not a state_dict"),
        ({}, "empty state_dict"),
        ({3: torch.ones(1)}, "not a string"),
    ],
)
def test_foreign_files_are_refused(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UnsafeCheckpointError, match=match) as info:
        load_state_dict_file(path)
    assert "weights.pth" in _single_line(info.value)


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(UnsafeCheckpointError, match="does not exist"):
        build_model("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(UnsafeCheckpointError, match="not a file"):
        load_state_dict_file(tmp_path)


def test_wrong_architecture_gives_a_clear_error(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(LayerMergeError, match="do not fit") as info:
        build_model("resnet34", weights=path)
    message = _single_line(info.value)
    assert "resnet18.pth" in message and "missing keys" in message and "layer1.2" in message
    with pytest.raises(LayerMergeError, match="unexpected keys"):
        build_model("digits_resnet", weights=path)


def test_shape_mismatch_names_the_tensor() -> None:
    wide = build_model("digits_mobilenet", width=1.5).model.state_dict()
    with pytest.raises(LayerMergeError, match="shape mismatches") as info:
        load_weights(DigitsMobileNet(), wide, source="wide.pt")
    message = _single_line(info.value)
    assert "features.0.0.weight" in message and "wide.pt" in message


def test_state_dict_digest_follows_content() -> None:
    state = {"a": torch.zeros(2, 3), "b": torch.tensor(5)}
    same = {"b": torch.tensor(5), "a": torch.zeros(2, 3)}
    assert state_dict_digest(state) == state_dict_digest(same)
    assert state_dict_digest(state) != state_dict_digest({**state, "b": torch.tensor(6)})
    assert state_dict_digest(state) != state_dict_digest({**state, "a": torch.zeros(3, 2)})


# --------------------------------------------------------------------------- module:function


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    source = textwrap.dedent(
        """
        import torch
        from torch import nn

        def make(depth=1, num_classes=5):
            layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()]
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)]
            return nn.Sequential(*layers)

        make.default_input_size = 48

        def broken():
            raise RuntimeError("boom")

        def not_a_model():
            return 42

        NOT_CALLABLE = 3
        """
    )
    (tmp_path / "user_nets_for_test.py").write_text(source)
    (tmp_path / "user_broken_for_test.py").write_text("raise ImportError('no such thing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_nets_for_test"


def test_module_function_builds(user_module: str) -> None:
    bundle = build_model(f"{user_module}:make", model_kwargs={"depth": 3})
    assert bundle.num_classes == 5 and bundle.input_size == 48
    assert default_input_size(f"{user_module}:make") == 48
    assert default_num_classes(f"{user_module}:make") is None
    convs = [m for m in bundle.model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert bundle.model_kwargs == {"depth": 3}
    again = build_model(f"{user_module}:make", model_kwargs={"depth": 3})
    assert again.weights_digest == bundle.weights_digest  # seeded like registry models
    ten = build_model(f"{user_module}:make", num_classes=10, input_size=40)
    assert ten.num_classes == 10 and ten.input_size == 40
    assert ten.model(torch.randn(1, 3, 40, 40)).shape == (1, 10)


def test_module_function_loads_its_weights(user_module: str, tmp_path: Path) -> None:
    model = build_model(f"{user_module}:make").model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    torch.save(model.state_dict(), tmp_path / "user.pt")
    bundle = build_model(f"{user_module}:make", weights=tmp_path / "user.pt")
    assert bundle.weights_digest == state_dict_digest(model.state_dict())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("user_nets_for_test:broken", {}, "RuntimeError: boom"),
        ("user_nets_for_test:not_a_model", {}, "not a torch.nn.Module"),
        ("user_nets_for_test:make", {"model_kwargs": {"colour": 1}}, "unexpected keyword"),
        ("user_nets_for_test:missing", {}, "no function 'missing'"),
        ("user_nets_for_test:NOT_CALLABLE", {}, "no function"),
        ("user_broken_for_test:make", {}, "cannot import module"),
        ("no_such_module_anywhere:make", {}, "cannot import module"),
        (":make", {}, "module:function"),
        ("user_nets_for_test:", {}, "module:function"),
    ],
)
def test_module_function_errors(user_module: str, name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(LayerMergeError, match=match) as info:
        build_model(name, **kwargs)
    _single_line(info.value)


def test_file_path_function_needs_no_python_path(tmp_path: Path) -> None:
    """``path/to/file.py:function``: the file runs by its path, importing its sibling files."""
    folder = tmp_path / "downloaded repo"
    folder.mkdir()
    (folder / "blocks_for_path_test.py").write_text(
        "from torch import nn\n\ndef conv(i, o):\n    return nn.Conv2d(i, o, 3, padding=1)\n"
    )
    (folder / "net.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from blocks_for_path_test import conv  # a sibling file, as research repos do

            def tiny(num_classes=3):
                return nn.Sequential(
                    conv(3, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    nn.Linear(4, num_classes),
                )
            """
        )
    )
    name = f"{folder / 'net.py'}:tiny"
    assert str(folder) not in sys.path
    bundle = build_model(name)
    assert bundle.num_classes == 3 and bundle.name == name
    assert bundle.input_size == 224 and bundle.input_size_source == "fallback"
    assert stated_input_size(name) is None
    assert build_model(name, input_size=32).input_size_source == "given"
    assert str(folder) not in sys.path  # the folder is on the path only while the file runs
    assert type(build_model(name).model) is type(bundle.model)  # the file ran once
    # the same from another process and working directory, with a relative path
    script = (
        "from core.models import build_model; "
        "print(build_model('net.py:tiny', num_classes=5).num_classes)"
    )
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("{tmp}/missing.py:make", "does not exist"),
        ("{tmp}/broken.py:make", "failed to load: ZeroDivisionError"),
        ("{tmp}/fine.py:absent", "no function 'absent'"),
        ("{tmp}/fine.py:", "path/to/file.py:function"),
    ],
)
def test_file_path_function_errors(tmp_path: Path, name: str, match: str) -> None:
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    (tmp_path / "fine.py").write_text("def make():\n    return None\n")
    with pytest.raises(LayerMergeError, match=match) as info:
        build_model(name.format(tmp=tmp_path))
    _single_line(info.value)


# --------------------------------------------------------------------------- demo models


def test_demo_architectures_follow_torchvision_names() -> None:
    resnet = DigitsResNet()
    for attribute in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"):
        assert hasattr(resnet, attribute)
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())
    assert resnet.layer2[0].downsample is not None and resnet.layer1[0].downsample is None
    mobile = DigitsMobileNet()
    assert isinstance(mobile.features, nn.Sequential)
    assert isinstance(mobile.classifier, nn.Sequential)
    assert isinstance(mobile.classifier[-1], nn.Linear)
    with torch.no_grad():
        sizes = []
        x = torch.randn(1, 3, 32, 32)
        for layer in mobile.features:
            x = layer(x)
            sizes.append(x.shape[-1])
    assert sizes[0] == 32 and sizes[-1] == 8 and x.shape[1] == 128


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_demo_models_give_ten_logits_on_digits(name: str) -> None:
    from core.data import load_data

    images, _ = load_data("digits").test[:8]
    bundle = build_model(name)
    with torch.no_grad():
        logits = bundle.model(images)
    assert logits.shape == (8, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", DEMO_MODELS)
def test_shipped_demo_weights_are_accurate(name: str) -> None:
    from core.data import load_data

    path = demo_weights_path(name)
    if not path.is_file():
        pytest.skip(f"{path} not trained yet: python -m core.demo_models train")
    assert path.stat().st_size < 2_000_000
    bundle = build_model(name)
    assert bundle.weights_source == "shipped" and bundle.weights_path == path
    accuracy, _ = evaluate(bundle.model, load_data("digits").test)
    assert accuracy >= 85.0


def test_train_demo_model_rejects_bad_input() -> None:
    with pytest.raises(LayerMergeError, match="unknown demo model"):
        train_demo_model("resnet18", epochs=1)
    with pytest.raises(LayerMergeError, match="epochs"):
        train_demo_model("digits_resnet", epochs=0)
