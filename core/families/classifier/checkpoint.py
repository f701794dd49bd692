"""The classifier's compressed checkpoint: a StepNetwork spec with its tensors, validated on load.

A compressed checkpoint (DESIGN.md, "Contracts") is a dict of plain tensors and JSON-able values,
written with ``torch.save`` and read back only with ``torch.load(weights_only=True)``:

- ``format`` (``"layermerge-compressed"``) and ``format_version``;
- ``spec``: the merged network's JSON spec (:class:`core.network.StepNetwork`);
- ``state_dict``: its tensors;
- ``solution``: the solution dict it was merged for (or None);
- ``model``: the original model's name, width, input size and class count;
- ``metrics``: accuracy before/after, parameters, depth, measured latencies when given;
- ``versions``: the library versions that wrote it.

Because a checkpoint may come from anywhere (an upload, a colleague), the structure and the spec
are validated before anything is built from it: every problem is an
:class:`~core.errors.UnsafeCheckpointError` that says what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.chain import ACTIVATION_KINDS
from core.errors import LayerMergeError, UnsafeCheckpointError
from core.files import check_tensors, jsonable, library_versions, read_untrusted_checkpoint
from core.network import NETWORK_SPEC_VERSIONS, ZERO_PAD_SPEC_VERSION, StepNetwork
from core.solution import Solution

__all__ = [
    "CHECKPOINT_FORMAT",
    "FORMAT_VERSION",
    "build_checkpoint",
    "load_checkpoint_dict",
    "validate_checkpoint",
    "network_from_checkpoint",
    "build_network",
    "check_network_state",
    "network_metrics",
    "validate_network_spec",
]

CHECKPOINT_FORMAT = "layermerge-compressed"
FORMAT_VERSION = 1
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "spec": dict,
    "state_dict": dict,
    "model": dict,
    "metrics": dict,
    "versions": dict,
}
_MAX_CHANNELS = 1 << 16
_MAX_KERNEL = 129
_MAX_STRIDE = 64
_MAX_PADDING = 1024
_MAX_SIDE = 8192
_STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("name",),
    "pad": ("amount",),
    "act": ("name", "kind"),
    "save": ("slot",),
    "add": ("slot",),
    "fixed": ("name", "kind", "params"),
}
_FIXED_PARAMS: dict[str, frozenset[str]] = {
    "maxpool2d": frozenset({"kernel_size", "stride", "padding", "dilation", "ceil_mode"}),
    "avgpool2d": frozenset({"kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"}),
    "adaptive_avgpool2d": frozenset({"output_size"}),
    "flatten": frozenset({"start_dim", "end_dim"}),
    "dropout": frozenset({"p", "inplace"}),
    "linear": frozenset({"in_features", "out_features", "bias"}),
    "spatial_mean": frozenset({"keepdim"}),
    **{kind: frozenset({"inplace"}) for kind in ACTIVATION_KINDS},
}

# Bounds on what a spec may ask for: generous for real networks, but an untrusted file cannot make
# a forward pass pad or pool its way to gigabytes.


def build_checkpoint(
    network: StepNetwork,
    *,
    solution: Solution | Mapping[str, Any] | None = None,
    model_name: str = "",
    width: float = 1.0,
    input_size: int | None = None,
    num_classes: int | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The compressed checkpoint of ``network`` as a dict of plain tensors and JSON-able values.

    Args:
        network: the merged network (any StepNetwork is accepted, e.g. a training form).
        solution: the solution it was built for, as a :class:`Solution` or its dict.
        model_name: the original model's registry name (or ``module:function``).
        width: the original model's width multiplier.
        input_size: the side of the square input; defaults to the spec's input shape.
        num_classes: the classifier size, when known.
        metrics: JSON-able measurements (accuracy before/after, latencies); the network's
            parameter count, conv count and depth are added.

    Returns:
        A dict that ``torch.save`` writes and ``torch.load(weights_only=True)`` reads back.

    Raises:
        LayerMergeError: ``network`` is not a StepNetwork, or ``metrics`` is not JSON-able.
    """
    if not isinstance(network, StepNetwork):
        raise LayerMergeError(
            f"only a StepNetwork (from core.merge or core.surgery) can be exported, got "
            f"{type(network).__name__}"
        )
    spec = jsonable(network.spec, what="the network spec")
    solution_dict = solution.to_dict() if isinstance(solution, Solution) else solution
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "state_dict": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()},
        "solution": None if solution_dict is None else jsonable(solution_dict, what="solution"),
        "model": {
            "name": model_name,
            "width": float(width),
            "input_size": int(input_size or spec["input_shape"][-1]),
            "num_classes": num_classes,
        },
        "metrics": {**jsonable(dict(metrics or {}), what="metrics"), **network_metrics(network)},
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def load_checkpoint_dict(source: str | Path | bytes) -> dict[str, Any]:
    """Read a compressed checkpoint with ``weights_only=True`` and validate its structure.

    Args:
        source: a file path, or the file's bytes (an upload).

    Returns:
        The checkpoint dict, with its spec validated and its state_dict matching the spec.

    Raises:
        UnsafeCheckpointError: the file is missing, unreadable, would need unsafe unpickling, is
            of another format or version, lacks a key, holds a value of the wrong type, or its
            spec or tensors are invalid.
    """
    loaded, name = read_untrusted_checkpoint(source)
    validate_checkpoint(loaded, name)
    return loaded


def network_from_checkpoint(checkpoint: Mapping[str, Any]) -> StepNetwork:
    """Build the StepNetwork a (validated) checkpoint dict describes, weights loaded strictly."""
    return build_network(checkpoint["spec"], checkpoint["state_dict"], name="checkpoint").eval()


def build_network(
    spec: Any, state_dict: Mapping[str, Any], *, name: str = "checkpoint"
) -> StepNetwork:
    """A StepNetwork from an untrusted spec and state_dict, checked before anything is allocated.

    The spec is validated, then built on the meta device (no memory) so its parameter names and
    shapes can be compared with ``state_dict``; only a spec that matches is built for real.

    Raises:
        UnsafeCheckpointError: the spec is invalid or the tensors do not fit it.
    """
    check_network_state(spec, state_dict, name=name)
    network = StepNetwork(spec, initialize=False)
    try:
        network.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        message = " ".join(str(exc).split())[:300]
        raise UnsafeCheckpointError(f"{name}: weights do not fit the spec: {message}") from exc
    return network


def validate_network_spec(spec: Any, *, name: str = "checkpoint") -> None:
    """Check that ``spec`` is a well-formed StepNetwork spec before anything is built from it.

    Checks the version, the input shape, every step's kind and fields with their types and
    bounds, unique layer names, and that every residual add reads a slot saved before it.

    Raises:
        UnsafeCheckpointError: naming the first problem found (the step index and field).
    """
    if not isinstance(spec, dict):
        raise UnsafeCheckpointError(
            f"{name}: the network spec is a {type(spec).__name__}, not a dict"
        )
    for key in ("version", "input_shape", "steps"):
        if key not in spec:
            raise UnsafeCheckpointError(f"{name}: the network spec lacks {key!r}")
    version = spec["version"]
    if isinstance(version, bool) or version not in NETWORK_SPEC_VERSIONS:
        raise UnsafeCheckpointError(
            f"{name}: network spec version {version!r} is not supported (this version reads "
            f"{', '.join(str(v) for v in NETWORK_SPEC_VERSIONS)})"
        )
    shape = spec["input_shape"]
    if (
        not isinstance(shape, list | tuple)
        or len(shape) != 3
        or not all(_is_int(v, 1, _MAX_SIDE) for v in shape)
    ):
        raise UnsafeCheckpointError(
            f"{name}: input_shape must be 3 positive integers (C, H, W), got {shape!r}"
        )
    steps = spec["steps"]
    if not isinstance(steps, list) or not steps:
        raise UnsafeCheckpointError(f"{name}: the network spec's steps must be a non-empty list")
    names: set[str] = set()
    saved: set[int] = set()
    for index, step in enumerate(steps):
        where = f"{name}: step {index}"
        if not isinstance(step, dict):
            raise UnsafeCheckpointError(f"{where} is a {type(step).__name__}, not a dict")
        op = step.get("op")
        if op not in _STEP_FIELDS:
            raise UnsafeCheckpointError(
                f"{where}: unknown network step {op!r} (known: {', '.join(_STEP_FIELDS)})"
            )
        for field in _STEP_FIELDS[op]:
            if field not in step:
                raise UnsafeCheckpointError(f"{where} ({op}) lacks {field!r}")
        if op == "conv":
            _check_conv(step, where, names)
        elif op == "pad":
            _require(_is_int(step["amount"], 0, _MAX_PADDING), where, "amount", step["amount"])
        elif op == "act":
            _check_name(step["name"], where, names)
            if step["kind"] not in ACTIVATION_KINDS:
                raise UnsafeCheckpointError(f"{where}: unknown activation kind {step['kind']!r}")
        elif op == "save":
            _require(_is_int(step["slot"], 0, 1 << 20), where, "slot", step["slot"])
            saved.add(step["slot"])
        elif op == "add":
            if step["slot"] not in saved:
                raise UnsafeCheckpointError(f"{where}: adds slot {step['slot']!r}, never saved")
            crop = step.get("crop", 0)
            _require(_is_int(crop, 0, _MAX_PADDING), where, "crop", crop)
            shortcut = step.get("shortcut")
            if shortcut is not None:
                if not isinstance(shortcut, dict):
                    raise UnsafeCheckpointError(f"{where}: shortcut must be a dict or null")
                _check_conv(shortcut, f"{where} shortcut", names)
            zero_pad = step.get("zero_pad_shortcut")
            if zero_pad is not None:
                if version < ZERO_PAD_SPEC_VERSION:
                    raise UnsafeCheckpointError(
                        f"{where}: zero_pad_shortcut needs network spec version "
                        f"{ZERO_PAD_SPEC_VERSION}, the spec says {version}"
                    )
                if shortcut is not None:
                    raise UnsafeCheckpointError(
                        f"{where}: an add has either a shortcut conv or a zero_pad_shortcut"
                    )
                _check_zero_pad(zero_pad, where)
        else:  # fixed
            _check_fixed(step, where, names)


def check_network_state(
    spec: Any, state_dict: Mapping[str, Any], *, name: str = "checkpoint"
) -> None:
    """Validate an untrusted spec, then check ``state_dict`` has exactly its names and shapes.

    The spec is built on the meta device (nothing allocated) to learn the expected tensors.

    Raises:
        UnsafeCheckpointError: the spec is invalid, or tensors are missing, extra, misshapen or
            not finite.
    """
    validate_network_spec(spec, name=name)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = StepNetwork(spec, initialize=True)
    except UnsafeCheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise UnsafeCheckpointError(f"{name}: the network spec cannot be built: {exc}") from exc
    check_tensors(skeleton.state_dict(), state_dict, name)


def network_metrics(network: nn.Module) -> dict[str, int]:
    """Parameter count, conv count (shortcuts included) and main-path depth of a network."""
    params = sum(p.numel() for p in network.parameters())
    convs = sum(isinstance(m, nn.Conv2d) for m in network.modules())
    depth = network.depth() if isinstance(network, StepNetwork) else convs
    return {"params": int(params), "conv_count": int(convs), "depth": int(depth)}


def validate_checkpoint(loaded: Any, name: str) -> None:
    if not isinstance(loaded, dict):
        raise UnsafeCheckpointError(
            f"{name} holds a {type(loaded).__name__}, not a compressed checkpoint dict"
        )
    if loaded.get("format") != CHECKPOINT_FORMAT:
        hint = " (a plain state_dict? pass it as --weights instead)" if _all_tensors(loaded) else ""
        raise UnsafeCheckpointError(
            f"{name} is not a LayerMerge compressed checkpoint: format is "
            f"{loaded.get('format')!r}, expected {CHECKPOINT_FORMAT!r}{hint}"
        )
    version = loaded.get("format_version")
    if version != FORMAT_VERSION:
        raise UnsafeCheckpointError(
            f"{name}: format_version {version!r} is not supported (this version reads "
            f"{FORMAT_VERSION})"
        )
    for key, kind in REQUIRED_KEYS.items():
        if key not in loaded:
            raise UnsafeCheckpointError(f"{name}: the checkpoint lacks the key {key!r}")
        if not isinstance(loaded[key], kind) or isinstance(loaded[key], bool):
            raise UnsafeCheckpointError(
                f"{name}: {key!r} is a {type(loaded[key]).__name__}, expected "
                f"{getattr(kind, '__name__', kind)}"
            )
    if loaded.get("solution") is not None and not isinstance(loaded["solution"], dict):
        raise UnsafeCheckpointError(f"{name}: 'solution' must be a dict or None")
    state = loaded["state_dict"]
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UnsafeCheckpointError(
                f"{name}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
    check_network_state(loaded["spec"], state, name=name)


def _check_conv(step: dict[str, Any], where: str, names: set[str]) -> None:
    _check_name(step.get("name"), where, names)
    for field, low, high in (
        ("in_channels", 1, _MAX_CHANNELS),
        ("out_channels", 1, _MAX_CHANNELS),
        ("kernel", 1, _MAX_KERNEL),
        ("stride", 1, _MAX_STRIDE),
        ("padding", 0, _MAX_PADDING),
        ("groups", 1, _MAX_CHANNELS),
    ):
        _require(_is_int(step.get(field), low, high), where, field, step.get(field))
    groups = step["groups"]
    if step["in_channels"] % groups or step["out_channels"] % groups:
        raise UnsafeCheckpointError(f"{where}: groups {groups} must divide the channel counts")
    if not isinstance(step.get("bias"), bool):
        raise UnsafeCheckpointError(f"{where}: 'bias' must be true or false")
    bn = step.get("bn")
    if bn is None:
        return
    if not isinstance(bn, dict):
        raise UnsafeCheckpointError(f"{where}: 'bn' must be a dict or null")
    _check_name(bn.get("name"), f"{where} bn", names)
    if bn.get("num_features") != step["out_channels"] or isinstance(bn.get("num_features"), bool):
        raise UnsafeCheckpointError(f"{where}: bn num_features must equal out_channels")
    eps = bn.get("eps")
    if not _is_number(eps) or not 0 < eps < 1:
        raise UnsafeCheckpointError(f"{where}: bn eps must be a number in (0, 1), got {eps!r}")
    momentum = bn.get("momentum")
    if momentum is not None and not _is_number(momentum):
        raise UnsafeCheckpointError(f"{where}: bn momentum must be a number or null")


def _check_zero_pad(zero_pad: Any, where: str) -> None:
    """The option-A shortcut: ``{"stride": s, "channels": [before, after]}``, small integers."""
    if not isinstance(zero_pad, dict) or set(zero_pad) != {"stride", "channels"}:
        raise UnsafeCheckpointError(
            f"{where}: zero_pad_shortcut must be a dict with exactly 'stride' and 'channels'"
        )
    _require(_is_int(zero_pad["stride"], 1, _MAX_STRIDE), where, "stride", zero_pad["stride"])
    channels = zero_pad["channels"]
    if not isinstance(channels, list | tuple) or len(channels) != 2:
        raise UnsafeCheckpointError(f"{where}: zero_pad_shortcut channels must be [before, after]")
    for value in channels:
        _require(_is_int(value, 0, _MAX_CHANNELS), where, "channels", value)


def _check_fixed(step: dict[str, Any], where: str, names: set[str]) -> None:
    _check_name(step["name"], where, names)
    kind, params = step["kind"], step["params"]
    if kind not in _FIXED_PARAMS:
        raise UnsafeCheckpointError(f"{where}: unknown fixed op kind {kind!r}")
    if not isinstance(params, dict):
        raise UnsafeCheckpointError(f"{where}: params must be a dict")
    extra = set(params) - _FIXED_PARAMS[kind]
    if extra:
        raise UnsafeCheckpointError(f"{where}: {kind} takes no parameter {sorted(extra)[0]!r}")
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        if len(values) > 4 or not all(_is_scalar(v) for v in values):
            raise UnsafeCheckpointError(f"{where}: {kind} parameter {key!r} is {value!r}")
    if kind == "linear":
        for field in ("in_features", "out_features"):
            _require(_is_int(params.get(field), 1, 1 << 20), where, field, params.get(field))


def _check_name(value: Any, where: str, names: set[str]) -> None:
    if not isinstance(value, str) or not value or "." in value or len(value) > 200:
        raise UnsafeCheckpointError(f"{where}: layer name {value!r} is not a plain name")
    if value in names:
        raise UnsafeCheckpointError(f"{where}: layer name {value!r} is used twice")
    names.add(value)


def _require(ok: bool, where: str, field: str, value: Any) -> None:
    if not ok:
        raise UnsafeCheckpointError(
            f"{where}: {field!r} is out of range or not an integer: {value!r}"
        )


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool) or _is_number(value)


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    return bool(mapping) and all(isinstance(v, torch.Tensor) for v in mapping.values())
