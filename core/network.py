"""A network described by a JSON-able list of steps: the form every built network takes.

Both the training-form network (surgery) and the merged deployable network (merge) are a
:class:`StepNetwork`. Its ``spec`` plus its ``state_dict`` are everything needed to rebuild it, so
checkpoints hold only plain tensors and JSON (they load with ``torch.load(weights_only=True)``) and
no class is ever unpickled.

Step kinds:
  ``pad``    zero-pad the map by ``amount`` on every side (training form: a segment's total padding)
  ``conv``   a conv named ``name`` (optionally followed by BatchNorm ``bn``)
  ``act``    an activation of ``kind``
  ``save``   keep the current map in ``slot`` for a later residual add
  ``add``    add ``slot`` (cropped by ``crop``, through an optional 1x1 ``shortcut`` or an optional
             ``zero_pad_shortcut``) to the map
  ``fixed``  a fixed op (pool, flatten, dropout, linear, head activation) named ``name``

``zero_pad_shortcut`` (``{"stride": s, "channels": [before, after]}``) is the parameter-free
"option A" shortcut of CIFAR ResNets: ``F.pad(skip[:, :, ::s, ::s], (0, 0, 0, 0, before, after))``.
A spec that uses it has version 2; every other spec is still written as version 1, so files that
older readers accept are unchanged, and an older reader refuses a version-2 spec instead of
silently dropping the shortcut.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UnsafeCheckpointError

__all__ = [
    "StepNetwork",
    "conv_step",
    "make_activation",
    "make_fixed_op",
    "spec_version",
    "NETWORK_SPEC_VERSION",
    "NETWORK_SPEC_VERSIONS",
    "ZERO_PAD_SPEC_VERSION",
]

NETWORK_SPEC_VERSION = 1  # the version of a spec that uses no later feature
ZERO_PAD_SPEC_VERSION = 2  # first version with an add step's zero_pad_shortcut
NETWORK_SPEC_VERSIONS = (NETWORK_SPEC_VERSION, ZERO_PAD_SPEC_VERSION)  # what this code reads

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}


def spec_version(steps: list[dict[str, Any]]) -> int:
    """The oldest spec version that can express ``steps`` (what a builder writes)."""
    uses_zero_pad = any(step.get("zero_pad_shortcut") for step in steps if step["op"] == "add")
    return ZERO_PAD_SPEC_VERSION if uses_zero_pad else NETWORK_SPEC_VERSION


def make_activation(kind: str) -> nn.Module:
    """The activation module of ``kind`` (one of chain.ACTIVATION_KINDS)."""
    try:
        return _ACTIVATIONS[kind]()
    except KeyError as exc:
        raise UnsafeCheckpointError(f"unknown activation kind {kind!r}") from exc


def make_fixed_op(kind: str, params: dict[str, Any]) -> nn.Module:
    """Build a fixed op from its spec (weights, for linear, are loaded separately)."""
    if kind in _ACTIVATIONS:
        return make_activation(kind)
    builders = {
        "maxpool2d": lambda p: nn.MaxPool2d(**p),
        "avgpool2d": lambda p: nn.AvgPool2d(**p),
        "adaptive_avgpool2d": lambda p: nn.AdaptiveAvgPool2d(_tuple(p["output_size"])),
        "flatten": lambda p: nn.Flatten(**p),
        "dropout": lambda p: nn.Dropout(**p),
        "linear": lambda p: nn.Linear(**p),
        "spatial_mean": lambda p: SpatialMean(**p),
    }
    if kind not in builders:
        raise UnsafeCheckpointError(f"unknown fixed op kind {kind!r}")
    return builders[kind]({k: _tuple(v) for k, v in params.items()})


class SpatialMean(nn.Module):
    """``x.mean((2, 3))``: the global pooling some models write as a tensor method."""

    def __init__(self, keepdim: bool = False) -> None:
        super().__init__()
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=self.keepdim)


class StepNetwork(nn.Module):
    """Runs a list of steps over named convs, BNs, shortcuts and fixed ops.

    Args:
        spec: ``{"version", "input_shape", "steps"}``; see the module docstring for step kinds.
        initialize: run the layers' random initialisation. Builders that load every weight right
            after (surgery, merge, export) skip it: it is most of the build time.
    """

    def __init__(self, spec: dict[str, Any], *, initialize: bool = True) -> None:
        super().__init__()
        if not initialize:
            with torch.device("meta"):
                self.__init__(spec, initialize=True)
            self.to_empty(device="cpu")
            return
        self.spec = copy.deepcopy(spec)
        self.layers = nn.ModuleDict()
        for step in self.spec["steps"]:
            op = step["op"]
            if op == "conv":
                self.layers[step["name"]] = _conv_from(step)
                if step.get("bn"):
                    self.layers[step["bn"]["name"]] = _bn_from(step["bn"])
            elif op == "add":
                shortcut = step.get("shortcut")
                if shortcut:
                    self.layers[shortcut["name"]] = _conv_from(shortcut)
                    if shortcut.get("bn"):
                        self.layers[shortcut["bn"]["name"]] = _bn_from(shortcut["bn"])
            elif op == "act":
                self.layers[step["name"]] = make_activation(step["kind"])
            elif op == "fixed":
                self.layers[step["name"]] = make_fixed_op(step["kind"], step["params"])
            elif op not in ("pad", "save"):
                raise UnsafeCheckpointError(f"unknown network step {op!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.spec["input_shape"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        for step in self.spec["steps"]:
            x = self.run_step(step, x, saved)
        return x

    def timed_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[str, float]]]:
        """``forward``, timing each step where it runs: ``(output, [(label, seconds), ...])``.

        Why: a layer timed alone (a latency table entry) runs on a hot cache, and the speed
        model misses where a layer costs something else inside the network
        (``bench/bench_speed_parts.py`` compares the two). Labels: a conv's, an activation's or
        a fixed op's name, ``add <slot>`` for a residual add (its shortcut included), ``pad``;
        ``save`` steps cost nothing and are left out. Meaningful on the CPU, where each op ends
        before the next starts.
        """
        saved: dict[int, torch.Tensor] = {}
        times: list[tuple[str, float]] = []
        clock = time.perf_counter
        for step in self.spec["steps"]:
            started = clock()
            x = self.run_step(step, x, saved)
            if step["op"] != "save":
                times.append((step_label(step), clock() - started))
        return x, times

    def run_step(
        self, step: dict[str, Any], x: torch.Tensor, saved: dict[int, torch.Tensor]
    ) -> torch.Tensor:
        """One step of the spec (module docstring) on ``x``; a ``save`` step writes ``saved``."""
        op = step["op"]
        if op == "conv":
            x = self.layers[step["name"]](x)
            if step.get("bn"):
                x = self.layers[step["bn"]["name"]](x)
        elif op == "pad":
            x = F.pad(x, [step["amount"]] * 4)
        elif op in ("act", "fixed"):
            x = self.layers[step["name"]](x)
        elif op == "save":
            saved[step["slot"]] = x
        else:  # add
            skip = saved[step["slot"]]
            crop = step.get("crop", 0)
            if crop:
                skip = skip[:, :, crop:, crop:]
            shortcut = step.get("shortcut")
            if shortcut:
                skip = self.layers[shortcut["name"]](skip)
                if shortcut.get("bn"):
                    skip = self.layers[shortcut["bn"]["name"]](skip)
            zero_pad = step.get("zero_pad_shortcut")
            if zero_pad:
                stride = zero_pad["stride"]
                before, after = zero_pad["channels"]
                # option A: subsample, then zero channels around the original ones
                skip = F.pad(skip[:, :, ::stride, ::stride], (0, 0, 0, 0, before, after))
            skip = skip[:, :, : x.shape[2], : x.shape[3]]
            if skip.shape != x.shape:
                raise RuntimeError(
                    f"residual add of slot {step['slot']}: skip {tuple(skip.shape)} does not "
                    f"match {tuple(x.shape)}"
                )
            x = x + skip
        return x

    def conv_count(self) -> int:
        """Number of Conv2d layers, shortcut convs included."""
        return sum(isinstance(m, nn.Conv2d) for m in self.modules())

    def depth(self) -> int:
        """Number of convs on the main path (what LayerMerge shortens)."""
        return sum(step["op"] == "conv" for step in self.spec["steps"])


def conv_step(
    name: str, conv: nn.Conv2d, *, padding: int, bn: nn.BatchNorm2d | None, bn_name: str | None
) -> dict[str, Any]:
    """The spec of a conv (and its BN) copied from an existing module."""
    step: dict[str, Any] = {
        "op": "conv",
        "name": name,
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel": conv.kernel_size[0],
        "stride": conv.stride[0],
        "padding": padding,
        "groups": conv.groups,
        "bias": conv.bias is not None,
        "bn": None,
    }
    if bn is not None:
        step["bn"] = {
            "name": bn_name,
            "num_features": bn.num_features,
            "eps": bn.eps,
            "momentum": bn.momentum,
        }
    return step


def step_label(step: dict[str, Any]) -> str:
    """What :meth:`StepNetwork.timed_forward` calls a step."""
    if step["op"] == "add":
        return f"add {step['slot']}"
    return str(step.get("name") or step["op"])


def _conv_from(step: dict[str, Any]) -> nn.Conv2d:
    return nn.Conv2d(
        step["in_channels"],
        step["out_channels"],
        step["kernel"],
        stride=step["stride"],
        padding=step["padding"],
        groups=step["groups"],
        bias=step["bias"],
    )


def _bn_from(spec: dict[str, Any]) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(spec["num_features"], eps=spec["eps"], momentum=spec["momentum"])


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
