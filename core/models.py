"""The model registry, and safe loading of weights files.

A MODEL argument is a registry name (``resnet18``, ``resnet34``, ``resnet50``, ``mobilenet_v2``,
``digits_resnet``, ``digits_mobilenet``), ``module:function`` for a user's own architecture on the
Python path, or ``path/to/file.py:function`` for an architecture file as downloaded (loaded by
path: no PYTHONPATH needed; the file's folder is on the path while it runs, so it can import its
siblings). Registry builders are small keyword-only functions (torchvision, timm); a duplicate
name raises ``ValueError`` instead of silently shadowing a model.

Weights are data, never code: files are read with ``torch.load(weights_only=True)`` only, so a
malicious pickle is refused before it can run, a file whose archive fails its checksums is refused
as damaged, and weights holding NaN or infinity are refused before anything is computed with
them (:func:`check_finite_weights`). Any file name is accepted (``.pt``, ``.pth``,
``.th``, ``.tar``, none); the content is what counts: a plain ``state_dict`` (torchvision's own
``resnet34-*.pth``), or a dict holding one under ``state_dict``/``model``/``net``/
``model_state_dict`` as research code saves it, in the zip or the legacy format, with CUDA storages
mapped to the CPU and a ``module.`` prefix (``DataParallel``) removed. Without weights a model gets
seeded initial weights, and the demo models their shipped trained weights; :class:`ModelBundle`
says which.

Example:
    >>> bundle = build_model("digits_resnet")
    >>> bundle.weights_source, bundle.input_size, bundle.num_classes
    ('shipped', 32, 10)
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib
import importlib.util
import io
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import torch
from torch import nn

from core.errors import LayerMergeError, UnsafeCheckpointError
from core.safe_load import safe_torch_load

__all__ = [
    "ModelInfo",
    "ModelBundle",
    "register_model",
    "list_models",
    "get_model_info",
    "build_model",
    "default_input_size",
    "stated_input_size",
    "default_num_classes",
    "demo_weights_path",
    "load_state_dict_file",
    "load_state_dict_bytes",
    "load_weights",
    "check_finite_weights",
    "state_dict_digest",
    "INIT_SEED",
    "DEMO_WEIGHTS_DIR",
]

INIT_SEED = 0  # seed of the initial weights of a model built without weights
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "cached_tables" / "demo_weights"
# Where research checkpoints nest their weights ({"state_dict": ..., "epoch": ...}, nanoGPT's
# "model", "net", PyTorch tutorials' "model_state_dict").
STATE_DICT_KEYS = ("state_dict", "model", "net", "model_state_dict")
FALLBACK_INPUT_SIZE = 224  # for a user's model that states no input size and has no data to follow

_MODELS: dict[str, ModelInfo] = {}  # registry name -> its builder and defaults


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: its builder and the defaults the CLI and app show."""

    name: str
    builder: Callable[..., nn.Module]  # builder(*, num_classes[, width]) -> nn.Module
    input_size: int  # the resolution the architecture was designed for
    num_classes: int
    has_width: bool  # whether the builder takes a channel width multiplier
    demo: bool  # trained weights ship in cached_tables/demo_weights/<name>.pt


@dataclass(frozen=True)
class ModelBundle:
    """A built model with what was used to build it and where its weights came from.

    ``weights_source`` is ``"seeded"`` (initial weights, seed :data:`INIT_SEED`: accuracy is at
    chance level), ``"shipped"`` (a demo model's trained weights), ``"file"`` or ``"state_dict"``.
    ``input_size_source`` is ``"given"`` (by the caller: an option, or the data's size),
    ``"model"`` (the registry's, or the function's ``default_input_size``) or ``"fallback"``
    (:data:`FALLBACK_INPUT_SIZE`, for a user's model that states none: callers should say so).
    """

    model: nn.Module
    name: str
    width: float
    num_classes: int
    input_size: int
    weights_source: str
    weights_path: Path | None  # the file the weights came from, if any
    weights_digest: str  # content digest of the model's state_dict: part of table cache keys
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size_source: str = "model"

    @property
    def weights_note(self) -> str:
        """One line for the CLI and the app saying where the weights came from."""
        if self.weights_source == "seeded":
            return (
                f"no weights given: {self.name} has seeded initial weights (seed {INIT_SEED}), "
                "so its accuracy is at chance level"
            )
        if self.weights_source == "shipped":
            return f"{self.name} uses its shipped trained weights ({self.weights_path})"
        if self.weights_path is not None:
            return f"{self.name} uses weights from {self.weights_path}"
        return f"{self.name} uses the given state_dict"


def register_model(
    name: str,
    *,
    input_size: int = 224,
    num_classes: int = 1000,
    has_width: bool = False,
    demo: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` (a decorator).

    Args:
        name: the registry name; may not contain ``:`` (that form names a user's function).
        input_size: default input resolution.
        num_classes: default number of classes.
        has_width: the builder accepts ``width`` (a channel multiplier).
        demo: trained weights ship in ``cached_tables/demo_weights/<name>.pt``.

    Raises:
        ValueError: ``name`` is already registered or contains ``:``.

    Example:
        >>> @register_model("tiny_net", input_size=32, num_classes=10)
        ... def tiny_net(*, num_classes: int = 10) -> nn.Module: ...
    """
    if ":" in name:
        raise ValueError(f"model name {name!r} may not contain ':' (reserved for module:function)")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelInfo(name, builder, input_size, num_classes, has_width, demo)
        return builder

    return decorator


def list_models(include: str | None = None) -> list[str]:
    """Registered model names, sorted; ``include`` is an optional wildcard (``"digits_*"``)."""
    names = sorted(_MODELS)
    return names if include is None else fnmatch.filter(names, include)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        LayerMergeError: ``name`` is not registered.
    """
    info = _MODELS.get(name)
    if info is None:
        raise LayerMergeError(
            f"unknown model {name!r}; choose one of {', '.join(list_models())} "
            "or give your own architecture as module:function"
        )
    return info


def default_input_size(name: str) -> int:
    """The input resolution ``name`` is built for: 224 for torchvision nets, 32 for digits ones.

    For ``module:function`` it is the function's ``default_input_size`` attribute, else
    :data:`FALLBACK_INPUT_SIZE`; :func:`stated_input_size` tells the two apart.
    """
    return stated_input_size(name) or FALLBACK_INPUT_SIZE


def stated_input_size(name: str) -> int | None:
    """The input resolution the model states, or None when it states none.

    Registry models state theirs; a ``module:function`` (or ``file.py:function``) model states one
    by a ``default_input_size`` attribute on the function. Without one, the input size should
    follow the data (``core.data.data_input_size``), not a silent default.

    Raises:
        LayerMergeError: ``name`` is neither registered nor an importable function.
    """
    if ":" in name:
        size = getattr(_import_function(name), "default_input_size", None)
        return None if size is None else int(size)
    return get_model_info(name).input_size


def default_num_classes(name: str) -> int | None:
    """The default class count of a registered model (None for ``module:function``)."""
    return None if ":" in name else get_model_info(name).num_classes


def demo_weights_path(name: str) -> Path:
    """Where a demo model's shipped weights live (the file may not exist yet)."""
    return DEMO_WEIGHTS_DIR / f"{name}.pt"


def build_model(
    name: str,
    *,
    width: float = 1.0,
    num_classes: int | None = None,
    weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    input_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """Build a model by registry name or ``module:function``, with weights loaded safely.

    Args:
        name: a registry name, ``module:function`` or ``path/to/file.py:function`` (the
            function is called with ``model_kwargs``, plus ``num_classes``/``width`` when those
            are given).
        width: channel width multiplier (mobilenet_v2 and the digits models only).
        num_classes: classifier size; by default the registry's, or read from ``weights``.
        weights: a weights file, a loaded state_dict, or None for seeded initial weights (demo
            models: their shipped trained weights).
        input_size: the resolution the model will see; defaults to what the model states
            (:func:`stated_input_size`), else :data:`FALLBACK_INPUT_SIZE`
            (``input_size_source == "fallback"``).
        model_kwargs: extra keyword arguments for a ``module:function`` builder.

    Returns:
        The model in eval mode with how it was built and where its weights came from.

    Raises:
        LayerMergeError: unknown name, bad option, a failing user builder, or weights that do not
            fit the architecture.
        UnsafeCheckpointError: the weights file is unreadable or would need unsafe unpickling.

    Example:
        >>> bundle = build_model("resnet34", weights="resnet34-b627a593.pth")  # doctest: +SKIP
    """
    if isinstance(width, bool) or not isinstance(width, int | float) or not math.isfinite(width):
        raise LayerMergeError(f"width must be a positive number, got {width!r}")
    if width <= 0:
        raise LayerMergeError(f"width must be a positive number, got {width!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise LayerMergeError(f"num_classes must be a positive integer, got {num_classes!r}")
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1
    ):
        raise LayerMergeError(f"input size must be a positive integer, got {input_size!r}")

    state_dict: Mapping[str, torch.Tensor] | None = None
    weights_path: Path | None = None
    if isinstance(weights, str | Path):
        weights_path = Path(weights)
        state_dict = load_state_dict_file(weights_path)
        source = "file"
    elif isinstance(weights, Mapping):
        state_dict = _check_state_dict(dict(weights), "the given state_dict")
        source = "state_dict"
    elif weights is None:
        source = "seeded"
    else:
        raise LayerMergeError(
            f"weights must be a file path or a state_dict, got {type(weights).__name__}"
        )

    kwargs = dict(model_kwargs or {})
    size_source = "given" if input_size is not None else "model"
    if ":" in name:
        model = _build_user_model(name, width=width, num_classes=num_classes, kwargs=kwargs)
        stated = stated_input_size(name)
        if input_size is None and stated is None:
            size_source = "fallback"
        size = input_size or stated or FALLBACK_INPUT_SIZE
    else:
        if kwargs:
            raise LayerMergeError(
                f"model_kwargs are for module:function models only; {name!r} takes none"
            )
        info = get_model_info(name)
        if width != 1.0 and not info.has_width:
            raise LayerMergeError(
                f"{name} has no width option (got width {width}); only "
                f"{', '.join(n for n in list_models() if _MODELS[n].has_width)} take one"
            )
        if num_classes is None and state_dict is not None:
            num_classes = _classes_in_state_dict(info, width, state_dict)
        classes = num_classes or info.num_classes
        model = _build_registered(info, width=width, num_classes=classes)
        size = input_size or info.input_size
        if state_dict is None and info.demo and width == 1.0 and classes == info.num_classes:
            shipped = demo_weights_path(name)
            if shipped.is_file():
                state_dict, weights_path, source = load_state_dict_file(shipped), shipped, "shipped"

    described = str(weights_path or "the given state_dict")
    if state_dict is not None:
        load_weights(model, state_dict, source=described)
    check_finite_weights(model, source=described if state_dict is not None else f"of {name}")
    model.eval()
    return ModelBundle(
        model=model,
        name=name,
        width=float(width),
        num_classes=_count_classes(model, name) if num_classes is None else num_classes,
        input_size=size,
        weights_source=source,
        weights_path=weights_path,
        weights_digest=state_dict_digest(model.state_dict()),
        model_kwargs=kwargs,
        input_size_source=size_source,
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely: ``torch.load(weights_only=True)``, tensors only.

    Args:
        path: a file written by ``torch.save`` (any name or extension, zip or legacy format)
            holding a state_dict, or a dict with one under ``state_dict``, ``model``, ``net`` or
            ``model_state_dict``.

    Returns:
        Parameter and buffer names mapped to CPU tensors (a ``module.`` prefix, as written by
        ``DataParallel``, removed).

    Raises:
        UnsafeCheckpointError: the file is missing, unreadable, would need unsafe unpickling, or
            holds something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UnsafeCheckpointError(f"weights file {path} {what}")
    try:
        with path.open("rb") as handle:
            loaded = _torch_load(handle, str(path))
    except OSError as exc:
        raise UnsafeCheckpointError(f"weights file {path} cannot be read: {exc}") from exc
    return _extract_state_dict(loaded, str(path))


def load_state_dict_bytes(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """Read uploaded weights safely, exactly as :func:`load_state_dict_file` reads a file.

    Args:
        data: the file's bytes (the app receives uploads as bytes).
        name: the file name, used in messages.

    Raises:
        UnsafeCheckpointError: as for :func:`load_state_dict_file`.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsafeCheckpointError(f"weights {name!r} must be bytes, got {type(data).__name__}")
    return _extract_state_dict(_torch_load(io.BytesIO(bytes(data)), name), name)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, explaining any mismatch in one line.

    Args:
        model: the architecture to fill (modified in place).
        state_dict: names mapped to tensors, as returned by :func:`load_state_dict_file`.
        source: what the weights are called in messages (a file name).

    Raises:
        LayerMergeError: keys are missing or unexpected, or shapes differ (weights saved from
            another architecture, width or class count).
    """
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked is absent from old torchvision files and is not a weight.
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} is {tuple(state_dict[k].shape)} in the weights but {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_some(mismatched)})")
    if problems:
        raise LayerMergeError(
            f"weights {source} do not fit the {type(model).__name__} architecture: "
            f"{'; '.join(problems)}; were they saved from another model, width or class count?"
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a dtype that cannot be copied
        message = " ".join(str(exc).split())
        raise LayerMergeError(f"weights {source} cannot be loaded: {message}") from exc


def check_finite_weights(weights: nn.Module | Mapping[str, Any], *, source: str) -> None:
    """Refuse weights holding NaN or infinity, before any table or checkpoint is made from them.

    A network with a non-finite weight computes NaN everywhere: every table entry and every
    merge check would be a confident number about nothing.

    Args:
        weights: a model (its parameters and buffers) or a state_dict; other values are skipped.
        source: what the weights are called in messages (a file name).

    Raises:
        UnsafeCheckpointError: naming the first tensor that holds a non-finite value.
    """
    tensors = weights.state_dict() if isinstance(weights, nn.Module) else weights
    bad = [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor)
        and (value.is_floating_point() or value.is_complex())
        and not value.is_meta
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise UnsafeCheckpointError(
            f"weights {source} hold non-finite values (NaN or infinity) in {bad[0]}{more}: the "
            "file is damaged or comes from a training run that diverged; use finite weights"
        )


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Content digest of names, dtypes, shapes and values: the same weights give the same key."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- registry


@register_model("resnet18")
def resnet18(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-18 (He et al., https://arxiv.org/abs/1512.03385), torchvision's."""
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=num_classes)


@register_model("resnet34")
def resnet34(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-34, torchvision's: the paper's main ResNet experiment (LayerMerge Table 1)."""
    from torchvision.models import resnet34 as build

    return build(weights=None, num_classes=num_classes)


@register_model("resnet50")
def resnet50(*, num_classes: int = 1000) -> nn.Module:
    """ResNet-50, torchvision's (bottleneck blocks)."""
    from torchvision.models import resnet50 as build

    return build(weights=None, num_classes=num_classes)


@register_model("mobilenet_v2", has_width=True)
def mobilenet_v2(*, width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """MobileNetV2 (https://arxiv.org/abs/1801.04381), torchvision's; the paper uses 1.0 and 1.4."""
    from torchvision.models import mobilenet_v2 as build

    return build(weights=None, width_mult=width, num_classes=num_classes)


@register_model("digits_resnet", input_size=32, num_classes=10, has_width=True, demo=True)
def digits_resnet(*, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """The demo's small CIFAR-style ResNet (core.demo_architectures.DigitsResNet)."""
    from core.demo_architectures import DigitsResNet

    return DigitsResNet(width=width, num_classes=num_classes)


@register_model("digits_mobilenet", input_size=32, num_classes=10, has_width=True, demo=True)
def digits_mobilenet(*, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """The demo's small MobileNetV2-style net (core.demo_architectures.DigitsMobileNet)."""
    from core.demo_architectures import DigitsMobileNet

    return DigitsMobileNet(width=width, num_classes=num_classes)


# --------------------------------------------------------------------------- private helpers


def _build_registered(info: ModelInfo, *, width: float, num_classes: int) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if info.has_width:
        kwargs["width"] = width
    with _seeded():
        return info.builder(**kwargs)


def _build_user_model(
    name: str, *, width: float, num_classes: int | None, kwargs: dict[str, Any]
) -> nn.Module:
    function = _import_function(name)
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if width != 1.0:
        kwargs.setdefault("width", width)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        with _seeded():
            model = function(**kwargs)
    except Exception as exc:  # user code may raise anything; report it in one line
        raise LayerMergeError(f"{name}({shown}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise LayerMergeError(
            f"{name}({shown}) returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _import_function(name: str) -> Callable[..., Any]:
    file_name, _, file_function = name.rpartition(":")
    if file_name.endswith(".py"):
        module_name, function_name = file_name, file_function
        if not function_name:
            raise LayerMergeError(f"model {name!r} must be path/to/file.py:function")
        module = _load_file_module(Path(file_name))
    else:
        module_name, _, function_name = name.partition(":")
        if not module_name or not function_name or ":" in function_name:
            raise LayerMergeError(
                f"model {name!r} must be a registry name, module:function or "
                "path/to/file.py:function"
            )
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a user's module may fail to import in any way
            raise LayerMergeError(
                f"cannot import module {module_name!r} for model {name!r}: "
                f"{type(exc).__name__}: {exc}; to load a file by its path write "
                "path/to/file.py:function"
            ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise LayerMergeError(f"module {module_name!r} has no function {function_name!r}")
    return function


def _load_file_module(path: Path) -> ModuleType:
    """Run a model file by its path, once per content version, as ``python file.py`` would see it.

    The module is registered in ``sys.modules`` under a name derived from the resolved path and
    the file's modification time and size (dataclasses and pickling look modules up there), and
    the file's folder is on ``sys.path`` while it runs, so its imports of sibling files work.
    """
    path = path.expanduser().resolve()
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise LayerMergeError(f"model file {path} {what}; MODEL is path/to/file.py:function")
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_layermerge_user_{stem}_{key}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LayerMergeError(f"model file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = str(path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's file may fail in any way; report it in one line
        del sys.modules[module_name]
        raise LayerMergeError(
            f"model file {path} failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Seed torch's CPU generator for a build, leaving the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        yield


def _classes_in_state_dict(
    info: ModelInfo, width: float, state_dict: Mapping[str, torch.Tensor]
) -> int | None:
    # A user's resnet34 finetuned on 10 classes should load without also passing num_classes:
    # read the class count from the weights of the architecture's last linear layer.
    with torch.device("meta"):  # no memory, no time: only names and shapes are needed
        kwargs: dict[str, Any] = {"num_classes": info.num_classes}
        if info.has_width:
            kwargs["width"] = width
        probe = info.builder(**kwargs)
    linears = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    weight = state_dict.get(f"{linears[-1]}.weight")
    if weight is None or weight.ndim != 2:
        return None
    return int(weight.shape[0])


def _count_classes(model: nn.Module, name: str) -> int:
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Linear):
            return module.out_features
        if isinstance(module, nn.Conv2d):
            return module.out_channels
    raise LayerMergeError(f"{name}: cannot tell the number of classes (no Linear or Conv2d layer)")


def _torch_load(handle: BinaryIO, name: str) -> Any:
    return safe_torch_load(
        handle, f"weights {name}", advice="save weights with torch.save(model.state_dict(), path)"
    )


def _extract_state_dict(loaded: Any, name: str) -> dict[str, torch.Tensor]:
    # Unwrap {"state_dict": ...}, {"model": ...}, ... (possibly nested: {"model": {"net": ...}})
    for _ in range(3):
        if not isinstance(loaded, Mapping) or _all_tensors(loaded):
            break
        inner = next(
            (loaded[k] for k in STATE_DICT_KEYS if isinstance(loaded.get(k), Mapping)), None
        )
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise UnsafeCheckpointError(
            f"weights {name} hold a {type(loaded).__name__}, not a state_dict "
            f"(a dict of tensors, possibly under one of {', '.join(STATE_DICT_KEYS)})"
        )
    return _check_state_dict(dict(loaded), name)


def _check_state_dict(state_dict: dict[Any, Any], name: str) -> dict[str, torch.Tensor]:
    if not state_dict:
        raise UnsafeCheckpointError(f"weights {name} hold an empty state_dict")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise UnsafeCheckpointError(f"weights {name}: key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise UnsafeCheckpointError(
                f"weights {name}: {key!r} holds a {type(value).__name__}, not a tensor "
                f"(expected a state_dict, possibly under one of {', '.join(STATE_DICT_KEYS)})"
            )
    if all(k.startswith("module.") for k in state_dict):  # saved from DataParallel
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def _some(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")
