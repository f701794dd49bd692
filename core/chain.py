"""A model traced into LayerMerge's chain of convs and activations (LAYERMERGE.md §1.1, §9.1).

The chain is what every other step reads: the ordered main-path convs with their true input shapes,
the activation slot after each conv, the residual spans with their shortcut convs, the break
positions no segment may cross, and the fixed ops (pools, the classifier) around them. It is found
by tracing with ``torch.fx`` and ``ShapeProp``, never from per-architecture lists, so a model the
code has never heard of works as long as it is built from the supported ops. Anything else is
refused with :class:`UnsupportedLayerError` naming the module: an op is never guessed.

Positions are numbered ``0..N``: position ``p`` is the point just after conv ``p`` (and its BN, its
residual add and its activation). Conv 0 (the stem) is always kept with its activation.

Models are traced as research code writes them, with no rewrite: functional activations
(``F.relu``, ``torch.relu``, ``x.relu()``, in-place variants), flattening by
``x.view(x.size(0), -1)``, pooling by ``F.avg_pool2d(x, x.size(3))`` or ``x.mean((2, 3))``,
helper functions and lambdas called from ``forward``, and the parameter-free "option A" shortcut
of CIFAR ResNets (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``), which is linear and so is
absorbed by a merge exactly like a fixed 1x1 strided conv. Shape arguments (``x.size(3)``) are
read from the traced input, so the chain is specific to its input size, as it always was.

Every name stored in a chain is stable across processes (module paths, function names), never an
object's ``repr``: the chain's digest keys cached tables, and must not change from one run to the
next.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata

from core.errors import UnsupportedLayerError

__all__ = [
    "ConvSpec",
    "OpSpec",
    "ResidualSpan",
    "Chain",
    "trace_chain",
    "ACTIVATION_KINDS",
]

CHAIN_VERSION = 1

# Activation modules and functions the method may remove; each maps to a kind name.
_ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.Hardswish: "hardswish",
    nn.GELU: "gelu",
    nn.Mish: "mish",
}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.relu_: "relu",
    F.relu6: "relu6",
    F.silu: "silu",
    F.hardswish: "hardswish",
    F.gelu: "gelu",
    F.mish: "mish",
}
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}  # x.relu(), x.relu_()
ACTIVATION_KINDS = tuple(sorted(set(_ACTIVATION_MODULES.values())))
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_TRANSPARENT_MODULES = (nn.Identity, nn.Dropout)
_AVG_POOL_FUNCTIONS = {F.avg_pool2d}  # torch._C._nn.avg_pool2d, as fx records it
_RESHAPE_METHODS = ("flatten", "view", "reshape", "squeeze")
_TRACE_BATCH = 2  # not 1, so a flatten that also squeezes the batch dimension is caught
# What to write instead of an op the chain cannot hold, by op name (the fallback is generic).
_OP_ADVICE = {
    "cat": "LayerMerge merges one chain of convs; concatenating branches (Inception, DenseNet) "
    "cannot be merged",
    "mul": "a product of two branches (squeeze-excitation, attention) is not linear and cannot be "
    "merged",
    "sigmoid": "gates such as squeeze-excitation are not supported",
    "interpolate": "upsampling belongs to a UNet (the diffusion family), not to a classifier chain",
    "getitem": "slice inputs only in a residual shortcut (option A: x[:, :, ::2, ::2]); elsewhere "
    "use a strided conv or a pooling module",
    "pad": "zero-pad channels only in a residual shortcut (option A); give convs their own padding",
}


@dataclass(frozen=True)
class ConvSpec:
    """One main-path conv with its geometry at the traced input size.

    ``input_shape`` is the TRUE per-sample input shape (C, H, W) recorded while tracing; the
    original LayerMerge code chains convs on a bare tensor and so skips ResNet's maxpool
    (LAYERMERGE.md §3.2). ``weight_l1`` is the raw (BN not folded) l1 norm used to choose which
    convs a kernel option keeps (§2.2).
    """

    index: int
    name: str
    kernel: int
    stride: int
    padding: int
    groups: int
    in_channels: int
    out_channels: int
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    bias: bool
    bn: str | None
    weight_l1: float

    @property
    def depthwise(self) -> bool:
        """A depthwise conv: one filter per channel, channels unchanged."""
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def reducible(self) -> bool:
        """Prunable (replaceable by identity): same channels in and out, stride 1 (§1.2)."""
        return self.in_channels == self.out_channels and self.stride == 1


@dataclass(frozen=True)
class OpSpec:
    """A fixed, non-mergeable op (pool, flatten, dropout, linear, or an activation in the head).

    ``module`` is the module path in the source model when the op is a module (its weights are
    copied from there); ``params`` rebuilds it without the source model (export).
    """

    kind: str
    params: dict[str, Any]
    module: str | None = None


@dataclass(frozen=True)
class ResidualSpan:
    """A residual block whose convs are (start, end]; the skip runs from position start to end.

    ``shortcut`` is the module path of a 1x1 shortcut conv (with ``shortcut_bn``). ``channel_pad``
    marks instead the parameter-free "option A" shortcut of CIFAR ResNets: the skip is subsampled
    by ``shortcut_stride`` (``x[:, :, ::s, ::s]``) and zero-padded by ``(before, after)`` channels,
    which is the fixed 1x1 strided conv with identity weights on the original channels and zeros on
    the padded ones. With neither, the skip is an identity. The add happens after conv ``end``'s
    BN and before its activation.
    """

    start: int
    end: int
    shortcut: str | None = None
    shortcut_bn: str | None = None
    shortcut_stride: int = 1
    shortcut_in_channels: int = 0
    shortcut_out_channels: int = 0
    channel_pad: tuple[int, int] | None = None

    @property
    def is_identity(self) -> bool:
        """The skip adds the block's input as it is (no conv, no subsampling or padding)."""
        return self.shortcut is None and self.channel_pad is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; ``channel_pad`` only when set, so older chains keep their digest."""
        data = asdict(self)
        if self.channel_pad is None:
            data.pop("channel_pad")
        else:
            data["channel_pad"] = list(self.channel_pad)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResidualSpan:
        pad = data.get("channel_pad")
        return cls(**{**data, "channel_pad": None if pad is None else tuple(pad)})


@dataclass(frozen=True)
class Chain:
    """A traced model: everything LayerMerge needs to know about its depth structure."""

    convs: tuple[ConvSpec, ...]
    activations: tuple[str | None, ...]
    activation_modules: tuple[str | None, ...]
    residuals: tuple[ResidualSpan, ...]
    breaks: frozenset[int]
    post_ops: tuple[tuple[OpSpec, ...], ...]
    input_shape: tuple[int, int, int]
    default_activation: str | None
    version: int = CHAIN_VERSION

    @property
    def last_position(self) -> int:
        """N: positions run 0..N."""
        return len(self.convs) - 1

    @property
    def head(self) -> tuple[OpSpec, ...]:
        """The fixed ops after the last position (pooling, classifier)."""
        return self.post_ops[-1]

    @property
    def reducible_convs(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.convs[1:] if c.reducible)

    def residual_ending_at(self, position: int) -> ResidualSpan | None:
        return next((r for r in self.residuals if r.end == position), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "input_shape": list(self.input_shape),
            "default_activation": self.default_activation,
            "convs": [asdict(c) for c in self.convs],
            "activations": list(self.activations),
            "activation_modules": list(self.activation_modules),
            "residuals": [r.to_dict() for r in self.residuals],
            "breaks": sorted(self.breaks),
            "post_ops": [[asdict(op) for op in ops] for ops in self.post_ops],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chain:
        return cls(
            convs=tuple(
                ConvSpec(
                    **{
                        **c,
                        "input_shape": tuple(c["input_shape"]),
                        "output_shape": tuple(c["output_shape"]),
                    }
                )
                for c in data["convs"]
            ),
            activations=tuple(data["activations"]),
            activation_modules=tuple(data["activation_modules"]),
            residuals=tuple(ResidualSpan.from_dict(r) for r in data["residuals"]),
            breaks=frozenset(int(b) for b in data["breaks"]),
            post_ops=tuple(tuple(OpSpec(**op) for op in ops) for ops in data["post_ops"]),
            input_shape=tuple(data["input_shape"]),
            default_activation=data["default_activation"],
            version=int(data.get("version", CHAIN_VERSION)),
        )

    def digest(self) -> str:
        """Digest of the structure (weights excluded), used as a cache and table key.

        Built from stable names only (module paths, function names, shapes), so the same model
        gives the same digest in every process.
        """
        data = self.to_dict()
        for conv in data["convs"]:
            conv.pop("weight_l1")
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def trace_chain(
    model: nn.Module, input_size: int | tuple[int, int], *, in_channels: int = 3
) -> Chain:
    """Trace ``model`` into a :class:`Chain` at the given input size.

    Args:
        model: a CNN built from convs, BNs, activations, residual adds, pools and linear layers.
        input_size: spatial size of the input (an int for square inputs, or (H, W)).
        in_channels: channels of the input image.

    Returns:
        The chain, with true input shapes recorded by shape propagation.

    Raises:
        UnsupportedLayerError: the model holds an op the method cannot handle, naming its module.

    Example:
        >>> chain = trace_chain(torchvision.models.resnet34(), 224)
        >>> chain.last_position
        32
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    was_training = model.training
    model.eval()
    try:
        try:
            graph_module = fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types for untraceable Python in forward
            raise UnsupportedLayerError(_trace_failure(model, exc)) from exc
        example = torch.zeros(_TRACE_BATCH, in_channels, height, width)
        propagation = _ValueProp(graph_module)
        try:
            with torch.no_grad():
                propagation.run(example)
        except Exception as exc:  # the user's model failed on this input: say where and why
            raise UnsupportedLayerError(
                _run_failure(model, graph_module, propagation.current, exc, example.shape[1:])
            ) from exc
    finally:
        model.train(was_training)
    return _ChainBuilder(graph_module, (in_channels, height, width)).build()


class _ValueProp(fx.Interpreter):
    """Runs the graph once, recording each tensor's shape and each plain value (``x.size(3)``).

    Like torch.fx's ShapeProp (``node.meta["tensor_meta"]``), which prints a traceback on any
    failure; research code also passes shapes read at run time as arguments
    (``F.avg_pool2d(x, x.size(3))``), kept in ``node.meta["value"]`` at the traced input size.
    ``current`` is the node running, to name it when the model fails.
    """

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        elif isinstance(result, int | float | bool | torch.Size) or (
            isinstance(result, tuple) and all(isinstance(v, int) for v in result)
        ):
            n.meta["value"] = result
        return result


def _trace_failure(model: nn.Module, exc: Exception) -> str:
    """One line for a forward torch.fx cannot trace: which module, which line, what to write."""
    names = {id(m): name for name, m in model.named_modules()}
    where = ""
    frame_module, frame_line = None, ""
    traceback = exc.__traceback__
    while traceback is not None:  # the innermost frame running a method of one of the modules
        frame = traceback.tb_frame
        code = frame.f_code
        owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
        if isinstance(owner, nn.Module) and id(owner) in names:
            frame_module = owner
            frame_line = f"{code.co_filename.rsplit('/', 1)[-1]}:{traceback.tb_lineno}"
        traceback = traceback.tb_next
    if frame_module is not None:
        path = names[id(frame_module)]
        module = f"module '{path}' ({type(frame_module).__name__})" if path else "its forward"
        where = f" in {module} at {frame_line}"
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"{type(model).__name__} cannot be traced with torch.fx{where}: {detail[:160]}; write "
        "forward without Python decisions on tensor values (if/while on a tensor, int(x.size(0)), "
        "tensor.item()): decide them in __init__ or from the layer configuration"
    )


def _run_failure(
    model: nn.Module,
    graph_module: fx.GraphModule,
    node: fx.Node | None,
    exc: Exception,
    shape: tuple[int, ...],
) -> str:
    """One line for a model that fails on the example input: where, and the likely cause."""
    where = ""
    if node is not None and node.op == "call_module":
        module = graph_module.get_submodule(str(node.target))
        where = f" at '{node.target}' ({type(module).__name__})"
    elif node is not None:
        where = f" at '{node.name}'"
    message = str(exc).split("While executing")[0]  # fx appends the failing graph node
    detail = " ".join(message.split())[:160] or type(exc).__name__
    size = "x".join(str(s) for s in shape)
    return (
        f"{type(model).__name__} fails on a {size} input{where} ({type(exc).__name__}: {detail}); "
        "is that the input size it was made for? give the size it expects (--input-size)"
    )


class _ChainBuilder:
    """Walks the fx graph's main path forward and fills the chain fields."""

    def __init__(self, graph_module: fx.GraphModule, input_shape: tuple[int, int, int]) -> None:
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.input_shape = input_shape
        self.nodes = list(graph_module.graph.nodes)

    # -- public -------------------------------------------------------------------------------
    def build(self) -> Chain:
        main_nodes, adds = self._main_path()
        main_set = set(main_nodes)
        convs: list[ConvSpec] = []
        activations: list[str | None] = []
        activation_modules: list[str | None] = []
        post_ops: list[list[OpSpec]] = []
        residuals: list[ResidualSpan] = []
        added_at: set[int] = set()
        position_of_node: dict[fx.Node, int] = {}
        last_node_of_position: dict[int, fx.Node] = {}
        position = -1
        for node in main_nodes:
            if node.op == "placeholder":
                position_of_node[node] = -1
                last_node_of_position[-1] = node
                continue
            module = self.modules.get(node.target) if node.op == "call_module" else None
            where = self._where(node)
            if isinstance(module, nn.Conv2d):
                position += 1
                convs.append(self._conv_spec(position, node, module))
                activations.append(None)
                activation_modules.append(None)
                post_ops.append([])
            elif isinstance(module, nn.BatchNorm2d):
                self._attach_bn(convs, node, position, post_ops, activations, added_at, where)
            elif (kind := self._activation_kind(node, module)) is not None:
                if position < 0:
                    raise UnsupportedLayerError(f"activation {where} comes before the first conv")
                if post_ops[position]:
                    if position == len(convs) - 1 and self._is_last_conv(node, main_nodes):
                        post_ops[position].append(OpSpec(kind, {}, self._module_name(node)))
                    else:
                        raise UnsupportedLayerError(
                            f"activation {where} follows a pooling or linear op inside the network"
                        )
                elif activations[position] is not None:
                    raise UnsupportedLayerError(
                        f"two activations in a row after conv {convs[position].name} ({where})"
                    )
                else:
                    activations[position] = kind
                    activation_modules[position] = _stable_name(node)
            elif node in adds:
                residuals.append(
                    self._residual(
                        node,
                        adds[node],
                        position,
                        convs,
                        activations,
                        post_ops,
                        position_of_node,
                        last_node_of_position,
                        main_set,
                        added_at,
                    )
                )
                added_at.add(position)
            elif self._is_transparent(node, module):
                if position < 0:
                    raise UnsupportedLayerError(f"op {where} comes before the first conv")
                dropout = self._dropout_p(node, module)
                if dropout is not None and self._is_last_conv(node, main_nodes):
                    post_ops[position].append(
                        OpSpec("dropout", {"p": dropout}, self._module_name(node))
                    )
            else:
                op = self._fixed_op(node, module, where)
                if position < 0:
                    raise UnsupportedLayerError(
                        f"op {where} comes before the first conv; the chain must start with a conv"
                    )
                post_ops[position].append(op)
            position_of_node[node] = position
            last_node_of_position[position] = node
        if not convs:
            raise UnsupportedLayerError("the model has no Conv2d on its main path")
        breaks = self._breaks(convs, post_ops, main_nodes)
        counts = Counter(a for a in activations if a is not None)
        default_activation = counts.most_common(1)[0][0] if counts else None
        return Chain(
            convs=tuple(convs),
            activations=tuple(activations),
            activation_modules=tuple(activation_modules),
            residuals=tuple(residuals),
            breaks=frozenset(breaks),
            post_ops=tuple(tuple(ops) for ops in post_ops),
            input_shape=self.input_shape,
            default_activation=default_activation,
        )

    # -- main path ------------------------------------------------------------------------------
    def _main_path(self) -> tuple[list[fx.Node], dict[fx.Node, fx.Node]]:
        """Walk back from the output along the branch with more convs; returns forward order.

        Also returns, for every residual add on the main path, the input node of its other branch.
        """
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedLayerError(
                f"the model takes {len(placeholders)} inputs; exactly one image tensor is supported"
            )
        depth: dict[fx.Node, int] = {}
        for node in self.nodes:
            inputs = [depth[a] for a in node.all_input_nodes if a in depth]
            is_conv = node.op == "call_module" and isinstance(
                self.modules.get(node.target), nn.Conv2d
            )
            depth[node] = (max(inputs) if inputs else 0) + int(is_conv)
        output = next(n for n in self.nodes if n.op == "output")
        if len(output.all_input_nodes) != 1 or not _is_tensor(output.all_input_nodes[0]):
            raise UnsupportedLayerError(
                "the model must return exactly one tensor (the logits); return a tuple or dict "
                "from a wrapper, not from the model given to LayerMerge"
            )
        main: list[fx.Node] = []
        adds: dict[fx.Node, fx.Node] = {}
        current = output.all_input_nodes[0]
        while current.op != "placeholder":
            main.append(current)
            inputs = _tensor_inputs(current)
            if len(inputs) == 1:
                current = inputs[0]
                continue
            if len(inputs) == 2 and self._is_add(current):
                first, second = inputs
                main_input, other = (
                    (first, second) if depth[first] >= depth[second] else (second, first)
                )
                adds[current] = other
                current = main_input
                continue
            if not inputs:
                raise UnsupportedLayerError(
                    f"op {self._where(current)} makes a tensor from no input tensor; the network "
                    "must be one chain from its input image to its output"
                )
            raise UnsupportedLayerError(
                f"op {self._where(current)} combines {len(inputs)} tensors; only residual "
                f"additions of two branches are supported{self._advice(current)}"
            )
        main.append(current)
        main.reverse()
        return main, adds

    def _residual(
        self,
        node: fx.Node,
        other: fx.Node,
        position: int,
        convs: list[ConvSpec],
        activations: list[str | None],
        post_ops: list[list[OpSpec]],
        position_of_node: dict[fx.Node, int],
        last_node_of_position: dict[int, fx.Node],
        main_set: set[fx.Node],
        added_at: set[int],
    ) -> ResidualSpan:
        where = self._where(node)
        if position < 0:
            raise UnsupportedLayerError(f"residual add {where} comes before the first conv")
        if activations[position] is not None or post_ops[position] or position in added_at:
            raise UnsupportedLayerError(
                f"residual add {where} must directly follow a conv's BatchNorm; an activation, "
                "pool or second add comes first"
            )
        shortcut_nodes: list[fx.Node] = []
        current = other
        while current not in main_set:
            shortcut_nodes.append(current)
            inputs = _tensor_inputs(current)
            if len(inputs) != 1:
                raise UnsupportedLayerError(
                    f"the skip branch of residual add {where} is not a simple chain "
                    f"({self._where(current)})"
                )
            current = inputs[0]
        start = position_of_node[current]
        if start < 0:
            raise UnsupportedLayerError(f"residual add {where} skips from the network input")
        if last_node_of_position.get(start) is not current:
            raise UnsupportedLayerError(
                f"the skip of residual add {where} starts in the middle of layer "
                f"{convs[start].name}; it must start after the layer's activation"
            )
        shortcut_nodes.reverse()
        span = ResidualSpan(start=start, end=position)
        if not shortcut_nodes:
            if current.meta["tensor_meta"].shape != node.meta["tensor_meta"].shape:
                raise UnsupportedLayerError(
                    f"identity skip of residual add {where} changes shape without a shortcut conv"
                )
            return span
        if all(_subsample_step(n) or _channel_pad(n) for n in shortcut_nodes):
            return self._zero_pad_span(node, where, span, current, shortcut_nodes)
        conv_node, *rest = shortcut_nodes
        conv = self.modules.get(conv_node.target) if conv_node.op == "call_module" else None
        bn_node = rest[0] if rest else None
        bn = self.modules.get(bn_node.target) if bn_node is not None else None
        if (
            not isinstance(conv, nn.Conv2d)
            or len(rest) > 1
            or (bn_node is not None and not isinstance(bn, nn.BatchNorm2d))
        ):
            names = ", ".join(self._where(n) for n in shortcut_nodes)
            raise UnsupportedLayerError(
                f"the skip branch of residual add {where} holds {names}; only an identity, a "
                "1x1 conv (optionally followed by BatchNorm) or the option-A shortcut "
                "F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p)) can be absorbed"
            )
        if conv.kernel_size != (1, 1) or conv.padding != (0, 0) or conv.groups != 1:
            raise UnsupportedLayerError(
                f"shortcut conv {conv_node.target} has kernel {conv.kernel_size}, padding "
                f"{conv.padding}, groups {conv.groups}; only dense 1x1 shortcuts are supported"
            )
        return ResidualSpan(
            start=start,
            end=position,
            shortcut=str(conv_node.target),
            shortcut_bn=str(bn_node.target) if bn_node is not None else None,
            shortcut_stride=int(conv.stride[0]),
            shortcut_in_channels=conv.in_channels,
            shortcut_out_channels=conv.out_channels,
        )

    def _zero_pad_span(
        self,
        add: fx.Node,
        where: str,
        span: ResidualSpan,
        source: fx.Node,
        nodes: list[fx.Node],
    ) -> ResidualSpan:
        """The option-A shortcut: subsample by a stride, zero-pad channels; a fixed 1x1 conv."""
        stride, before, after = 1, 0, 0
        for n in nodes:
            step = _subsample_step(n)
            if step:
                stride *= step
            else:
                pad_before, pad_after = _channel_pad(n) or (0, 0)
                before, after = before + pad_before, after + pad_after
        channels, height, width = (int(v) for v in source.meta["tensor_meta"].shape[1:])
        expected = (channels + before + after, -(-height // stride), -(-width // stride))
        got = tuple(int(v) for v in nodes[-1].meta["tensor_meta"].shape[1:])
        if got != expected or got != tuple(int(v) for v in add.meta["tensor_meta"].shape[1:]):
            raise UnsupportedLayerError(
                f"the subsample-and-pad skip of residual add {where} gives {got}, not the block's "
                f"output {tuple(add.meta['tensor_meta'].shape[1:])}"
            )
        return ResidualSpan(
            start=span.start,
            end=span.end,
            shortcut_stride=stride,
            shortcut_in_channels=channels,
            shortcut_out_channels=expected[0],
            channel_pad=(before, after),
        )

    # -- node kinds -----------------------------------------------------------------------------
    def _conv_spec(self, index: int, node: fx.Node, conv: nn.Conv2d) -> ConvSpec:
        name = str(node.target)
        kernel_h, kernel_w = conv.kernel_size
        if kernel_h != kernel_w or conv.stride[0] != conv.stride[1]:
            raise UnsupportedLayerError(
                f"conv '{name}' has kernel {conv.kernel_size} and stride {conv.stride}; only square "
                "kernels and strides are supported"
            )
        if kernel_h % 2 == 0:
            raise UnsupportedLayerError(
                f"conv {name} has an even kernel {kernel_h}; merging needs odd"
            )
        if conv.dilation != (1, 1):
            raise UnsupportedLayerError(f"conv '{name}' is dilated {conv.dilation}; not supported")
        if conv.padding_mode != "zeros" or conv.padding != (kernel_h // 2, kernel_h // 2):
            raise UnsupportedLayerError(
                f"conv '{name}' has padding {conv.padding} ({conv.padding_mode}); merging needs "
                f"'same' zero padding {kernel_h // 2}"
            )
        in_meta = node.all_input_nodes[0].meta.get("tensor_meta")
        out_meta = node.meta.get("tensor_meta")
        return ConvSpec(
            index=index,
            name=name,
            kernel=kernel_h,
            stride=int(conv.stride[0]),
            padding=int(conv.padding[0]),
            groups=conv.groups,
            in_channels=conv.in_channels,
            out_channels=conv.out_channels,
            input_shape=tuple(int(s) for s in in_meta.shape[1:]),
            output_shape=tuple(int(s) for s in out_meta.shape[1:]),
            bias=conv.bias is not None,
            bn=None,
            weight_l1=float(conv.weight.detach().abs().sum()),
        )

    def _attach_bn(
        self,
        convs: list[ConvSpec],
        node: fx.Node,
        position: int,
        post_ops: list[list[OpSpec]],
        activations: list[str | None],
        added_at: set[int],
        where: str,
    ) -> None:
        previous = node.all_input_nodes[0]
        previous_module = (
            self.modules.get(previous.target) if previous.op == "call_module" else None
        )
        if (
            position < 0
            or not isinstance(previous_module, nn.Conv2d)
            or convs[position].bn is not None
            or activations[position] is not None
            or post_ops[position]
            or position in added_at
        ):
            raise UnsupportedLayerError(f"BatchNorm {where} does not directly follow a conv")
        bn = self.modules[node.target]
        if not bn.affine or not bn.track_running_stats:
            raise UnsupportedLayerError(f"BatchNorm {where} needs affine=True and running stats")
        conv = convs[position]
        convs[position] = ConvSpec(**{**asdict(conv), "bn": str(node.target)})

    def _activation_kind(self, node: fx.Node, module: nn.Module | None) -> str | None:
        if module is not None:
            for module_type, kind in _ACTIVATION_MODULES.items():
                if type(module) is module_type:
                    return kind
            return None
        if node.op == "call_function":
            return _ACTIVATION_FUNCTIONS.get(node.target)
        if node.op == "call_method":
            return _ACTIVATION_METHODS.get(str(node.target))
        return None

    def _is_transparent(self, node: fx.Node, module: nn.Module | None) -> bool:
        """Ops that are the identity in eval mode: Identity, dropout, ``x.contiguous()``."""
        if module is not None:
            return isinstance(module, _TRANSPARENT_MODULES)
        if node.op == "call_function":
            return node.target in (F.dropout, F.dropout2d)
        return node.op == "call_method" and node.target == "contiguous"

    def _dropout_p(self, node: fx.Node, module: nn.Module | None) -> float | None:
        if isinstance(module, nn.Dropout):
            return float(module.p)
        if node.op == "call_function" and node.target is F.dropout:
            return float(_arg(node, 1, "p", 0.5))
        return None

    def _fixed_op(self, node: fx.Node, module: nn.Module | None, where: str) -> OpSpec:
        name = str(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.MaxPool2d):
            return OpSpec(
                "maxpool2d",
                {
                    "kernel_size": module.kernel_size,
                    "stride": module.stride,
                    "padding": module.padding,
                    "dilation": module.dilation,
                    "ceil_mode": module.ceil_mode,
                },
                name,
            )
        if isinstance(module, nn.AvgPool2d):
            return OpSpec(
                "avgpool2d",
                {
                    "kernel_size": module.kernel_size,
                    "stride": module.stride,
                    "padding": module.padding,
                    "ceil_mode": module.ceil_mode,
                    "count_include_pad": module.count_include_pad,
                },
                name,
            )
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return OpSpec("adaptive_avgpool2d", {"output_size": _plain(module.output_size)}, name)
        if isinstance(module, nn.Flatten):
            return OpSpec(
                "flatten", {"start_dim": module.start_dim, "end_dim": module.end_dim}, name
            )
        if isinstance(module, nn.Linear):
            return OpSpec(
                "linear",
                {
                    "in_features": module.in_features,
                    "out_features": module.out_features,
                    "bias": module.bias is not None,
                },
                name,
            )
        if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            return OpSpec(
                "adaptive_avgpool2d", {"output_size": _plain(_arg(node, 1, "output_size"))}
            )
        if node.op == "call_function" and node.target in _AVG_POOL_FUNCTIONS:
            return self._avg_pool(node, where)
        if node.op == "call_function" and node.target is F.max_pool2d:
            return self._max_pool(node, where)
        if node.op == "call_function" and node.target is torch.flatten:
            start = _arg(node, 1, "start_dim", 0)
            end = _arg(node, 2, "end_dim", -1)
            return OpSpec("flatten", {"start_dim": int(start), "end_dim": int(end)})
        if node.op == "call_method" and node.target == "flatten":
            start = _arg(node, 1, "start_dim", 0)
            end = _arg(node, 2, "end_dim", -1)
            return OpSpec("flatten", {"start_dim": int(start), "end_dim": int(end)})
        if node.op == "call_method" and node.target in _RESHAPE_METHODS:
            return self._reshape(node, where)
        if (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        ):
            dims = _arg(node, 1, "dim")
            keepdim = _arg(node, 2, "keepdim", False)
            dims = list(dims) if isinstance(dims, tuple | list) else [dims]
            if all(isinstance(d, int) for d in dims) and sorted(d % 4 for d in dims) == [2, 3]:
                return OpSpec("spatial_mean", {"keepdim": bool(keepdim)})
        kind = type(module).__name__ if module is not None else _stable_name(node)
        raise UnsupportedLayerError(
            f"{where} ({kind}) is not supported on a LayerMerge chain; supported are Conv2d, "
            "BatchNorm2d, activations (ReLU, ReLU6, SiLU, Hardswish, GELU, Mish), residual adds, "
            "pools, flatten, dropout and Linear" + (self._advice(node) or "")
        )

    def _avg_pool(self, node: fx.Node, where: str) -> OpSpec:
        """``F.avg_pool2d``; over the whole map (``x.size(3)``) it is a global average pool."""
        kernel = _pair(_arg(node, 1, "kernel_size"))
        stride = _arg(node, 2, "stride", None)
        stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        padding = _pair(_arg(node, 3, "padding", 0))
        ceil_mode = bool(_arg(node, 4, "ceil_mode", False))
        count_include_pad = bool(_arg(node, 5, "count_include_pad", True))
        if _arg(node, 6, "divisor_override", None) is not None:
            raise UnsupportedLayerError(
                f"{where}: avg_pool2d with divisor_override is not supported; use a plain average"
            )
        height, width = (int(v) for v in _tensor_inputs(node)[0].meta["tensor_meta"].shape[2:])
        if kernel == [height, width] and padding == [0, 0]:
            # F.avg_pool2d(x, x.size(3)): global pooling at any input size, as the model means it
            return OpSpec("adaptive_avgpool2d", {"output_size": 1})
        return OpSpec(
            "avgpool2d",
            {
                "kernel_size": kernel,
                "stride": stride,
                "padding": padding,
                "ceil_mode": ceil_mode,
                "count_include_pad": count_include_pad,
            },
        )

    def _max_pool(self, node: fx.Node, where: str) -> OpSpec:
        kernel = _pair(_arg(node, 1, "kernel_size"))
        stride = _arg(node, 2, "stride", None)
        stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
        if _arg(node, 6, "return_indices", False):
            raise UnsupportedLayerError(f"{where}: max_pool2d with return_indices is not supported")
        return OpSpec(
            "maxpool2d",
            {
                "kernel_size": kernel,
                "stride": stride,
                "padding": _pair(_arg(node, 3, "padding", 0)),
                "dilation": _pair(_arg(node, 4, "dilation", 1)),
                "ceil_mode": bool(_arg(node, 5, "ceil_mode", False)),
            },
        )

    def _reshape(self, node: fx.Node, where: str) -> OpSpec:
        """``x.view(x.size(0), -1)``, ``reshape``, ``squeeze``: fine when they flatten per sample."""
        before = tuple(int(v) for v in _tensor_inputs(node)[0].meta["tensor_meta"].shape)
        after = tuple(int(v) for v in node.meta["tensor_meta"].shape)
        if after == (before[0], math.prod(before[1:])):
            return OpSpec("flatten", {"start_dim": 1, "end_dim": -1})
        raise UnsupportedLayerError(
            f"{where} reshapes {before} to {after} (batch {before[0]} at tracing); only flattening "
            "each sample to a vector is supported: write torch.flatten(x, 1) or "
            "x.view(x.size(0), -1)"
        )

    def _advice(self, node: fx.Node) -> str:
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        advice = _OP_ADVICE.get(str(name).rstrip("_"))
        return f" ({advice})" if advice else ""

    # -- breaks ---------------------------------------------------------------------------------
    def _breaks(
        self, convs: list[ConvSpec], post_ops: list[list[OpSpec]], main_nodes: list[fx.Node]
    ) -> set[int]:
        """Positions no segment may cross (LAYERMERGE.md §1.3, general rule).

        Position 0 and N; every position followed by a fixed op (a pool inside the network); and
        for each strided conv p, the first q >= p where conv q+1 has kernel > 1 or q ends the
        innermost block module holding p, so a strided conv merges only with the 1x1 convs that
        follow it inside its own block.
        """
        last = len(convs) - 1
        breaks = {0, last}
        breaks.update(p for p in range(last) if post_ops[p])
        names = [c.name for c in convs]
        for conv in convs[1:]:
            if conv.stride == 1:
                continue
            block_end = self._block_end(conv.index, names)
            q = conv.index
            while q < last and convs[q + 1].kernel == 1 and q != block_end:
                q += 1
            breaks.add(q)
        return breaks

    @staticmethod
    def _block_end(index: int, names: list[str]) -> int:
        """Last main-path conv of the innermost module (with 2+ main convs) holding conv index."""
        parts = names[index].split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut]) + "."
            members = [i for i, name in enumerate(names) if name.startswith(prefix)]
            if len(members) > 1:
                return max(members)
        return index

    # -- helpers --------------------------------------------------------------------------------
    def _is_add(self, node: fx.Node) -> bool:
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            return "alpha" not in node.kwargs
        return node.op == "call_method" and node.target in ("add", "add_")

    def _is_last_conv(self, node: fx.Node, main_nodes: list[fx.Node]) -> bool:
        """True when no conv follows ``node`` on the main path (it belongs to the head)."""
        after = main_nodes[main_nodes.index(node) + 1 :]
        return not any(
            n.op == "call_module" and isinstance(self.modules.get(n.target), nn.Conv2d)
            for n in after
        )

    def _module_name(self, node: fx.Node) -> str | None:
        return str(node.target) if node.op == "call_module" else None

    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"'{node.target}' ({type(self.modules[node.target]).__name__})"
        target = getattr(node.target, "__name__", str(node.target))
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, module_type = list(stack.values())[-1]
            type_name = getattr(module_type, "__name__", str(module_type))
            return f"'{target}' inside module '{path}' ({type_name})"
        return f"'{node.name}' ({node.op} {target})"


def _is_tensor(node: fx.Node) -> bool:
    """Whether a traced node produced a tensor (``x.size(0)`` and its indices do not)."""
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if _is_tensor(n)]


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument ``index`` (or keyword ``name``) of a call, shapes read at the traced size."""
    value = node.args[index] if len(node.args) > index else node.kwargs.get(name, default)
    return _resolve(value, node)


def _resolve(value: Any, node: fx.Node) -> Any:
    if isinstance(value, fx.Node):
        if "value" not in value.meta:
            raise UnsupportedLayerError(
                f"'{node.name}' takes an argument computed from tensor values ({value.name}); "
                "pass plain numbers or shapes (x.size(3)) instead"
            )
        found = value.meta["value"]
        return list(found) if isinstance(found, torch.Size | tuple) else found
    if isinstance(value, tuple | list):
        return [_resolve(v, node) for v in value]
    return value


def _pair(value: Any) -> list[int]:
    values = list(value) if isinstance(value, tuple | list) else [value, value]
    return [int(v) for v in (values * 2 if len(values) == 1 else values)]


def _subsample_step(node: fx.Node) -> int:
    """The step s of ``x[:, :, ::s, ::s]`` (a spatial subsample from 0), else 0."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return 0
    index = node.args[1]
    if not isinstance(index, tuple) or not all(isinstance(i, slice) for i in index):
        return 0
    if len(index) != 4 or index[0] != slice(None) or index[1] != slice(None):
        return 0
    steps = set()
    for part in index[2:]:
        if part.start not in (None, 0) or part.stop is not None:
            return 0
        steps.add(1 if part.step is None else part.step)
    step = steps.pop() if len(steps) == 1 else 0
    return step if isinstance(step, int) and step >= 1 else 0


def _channel_pad(node: fx.Node) -> tuple[int, int] | None:
    """``(before, after)`` of ``F.pad(x, (0, 0, 0, 0, before, after))`` with zeros, else None."""
    if node.op != "call_function" or node.target is not F.pad:
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    if not isinstance(pad, tuple | list) or not all(isinstance(p, int) for p in pad):
        return None
    pad = list(pad) + [0] * (6 - len(pad))
    if len(pad) not in (6, 8) or any(pad[:4]) or any(pad[6:]) or min(pad) < 0:
        return None
    if mode != "constant" or value not in (None, 0, 0.0):
        return None
    return int(pad[4]), int(pad[5])


def _stable_name(node: fx.Node) -> str:
    """A name for a node that is the same in every process: never an object's repr.

    Module ops are named by their path; functions by module and name (``torch.nn.functional.relu``);
    tensor methods by their name (``relu``).
    """
    if node.op in ("call_module", "call_method"):
        return str(node.target)
    target = node.target
    name = getattr(target, "__name__", None) or type(target).__name__
    module = getattr(target, "__module__", None) or "builtins"
    return f"{module}.{name}"


def _plain(value: Any) -> Any:
    """Tuples to lists and ints kept, so op params are JSON-able."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
