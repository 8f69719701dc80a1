"""Turn a trunk (an ``nn.Module``) into a graph of local operations that can run on tiles.

The trunk is traced with ``torch.fx``. Each node becomes one of:

* ``window``: a layer that reads a sliding window (Conv2d, MaxPool2d, AvgPool2d). It knows its
  geometry along both axes and runs on a tile with padding applied only at true borders.
* ``pointwise``/``join``: a layer whose output pixel depends only on the same pixel of its
  inputs (activations, eval-mode BatchNorm, residual additions, channel concatenation).

Anything else (BatchNorm with batch statistics, adaptive or global pooling, attention, reshapes,
upsampling) is not local: it is refused here with an error naming the layer and the fix.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from engine.errors import NotStreamableError
from engine.streaming import window_ops
from engine.streaming.geometry import AxisWindow

# Modules that act on each pixel independently (given eval mode where it matters).
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
)
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout)
_BATCHNORM_MODULES = (nn.BatchNorm2d, nn.SyncBatchNorm)
# Layers StreamingModule(freeze_batchnorm=True) keeps in eval mode.
FROZEN_MODULES = _BATCHNORM_MODULES + _DROPOUT_MODULES

_POINTWISE_FUNCTIONS: set[Any] = {
    torch.relu, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp, torch.square,
    torch.sqrt, torch.clamp, torch.clip, torch.sin, torch.cos, torch.log1p,
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.sigmoid, F.tanh, F.prelu, F.logsigmoid,
    operator.neg, operator.abs,
}
# Binary elementwise functions; in-place operator forms are computed out of place, which is
# the same value and keeps tile crops (views) of shared activations untouched.
_ELEMENTWISE_FUNCTIONS: dict[Any, Any] = {
    operator.add: operator.add, operator.iadd: operator.add,
    operator.sub: operator.sub, operator.isub: operator.sub,
    operator.mul: operator.mul, operator.imul: operator.mul,
    operator.truediv: operator.truediv, operator.itruediv: operator.truediv,
    torch.add: torch.add, torch.sub: torch.sub, torch.mul: torch.mul, torch.div: torch.div,
    torch.maximum: torch.maximum, torch.minimum: torch.minimum,
}
_POINTWISE_METHODS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "tanh_": "tanh", "add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub",
    "sub_": "sub", "div": "div", "div_": "div", "clamp": "clamp", "clamp_": "clamp",
    "clamp_min": "clamp_min", "clamp_min_": "clamp_min", "abs": "abs", "neg": "neg", "exp": "exp",
    "contiguous": "contiguous", "float": "float", "double": "double", "half": "half",
    "bfloat16": "bfloat16",
}


@dataclass
class StreamNode:
    """One operation of the streamable graph.

    ``inputs`` are indices of the spatial nodes it reads. ``axes`` is ``(rows, cols)`` window
    geometry for window nodes and None for pixel-local nodes.
    """

    name: str
    kind: str  # "input" | "window" | "local"
    inputs: tuple[int, ...]
    axes: tuple[AxisWindow, AxisWindow] | None = None
    run: Callable[..., torch.Tensor] | None = None
    consumers: list[int] = field(default_factory=list)


@dataclass
class StreamGraph:
    """Nodes in topological order; node 0 is the input, the last node is the output."""

    nodes: list[StreamNode]
    modules: dict[str, nn.Module]

    def spatial_sizes(self, in_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Global (rows, cols) of every node's output for an input of ``in_hw``."""
        sizes: list[tuple[int, int]] = []
        for node in self.nodes:
            if node.kind == "input":
                hw = in_hw
            elif node.kind == "window":
                src = sizes[node.inputs[0]]
                hw = (node.axes[0].out_len(src[0]), node.axes[1].out_len(src[1]))
            else:
                shapes = {sizes[i] for i in node.inputs}
                if len(shapes) != 1:
                    raise NotStreamableError(
                        f"layer '{node.name}' combines feature maps of different sizes {sorted(shapes)} "
                        f"for an input of {in_hw[0]}x{in_hw[1]}; its branches do not align on this input size. "
                        "Pad or crop the input so every branch produces the same size.")
                hw = shapes.pop()
            if hw[0] <= 0 or hw[1] <= 0:
                raise NotStreamableError(
                    f"an input of {in_hw[0]}x{in_hw[1]} pixels is too small for this trunk: "
                    f"layer '{node.name}' would produce an empty {hw[0]}x{hw[1]} map.")
            sizes.append(hw)
        return sizes

    def check_modes(self) -> None:
        """Refuse layers that became non-local since build time (e.g. ``.train()`` on BatchNorm)."""
        for name, module in self.modules.items():
            _check_module_mode(name, module)


def _check_module_mode(name: str, module: nn.Module) -> None:
    if isinstance(module, _BATCHNORM_MODULES):
        if module.training or module.running_mean is None:
            raise NotStreamableError(
                f"layer '{name}' ({type(module).__name__}) normalises with batch statistics, which mix "
                "pixels across the whole image, so tiles cannot be stitched exactly. Freeze it "
                "(StreamingModule(..., freeze_batchnorm=True) or call .eval() on it) so it uses its "
                "running statistics, or move it into the head.")
    if isinstance(module, _DROPOUT_MODULES) and module.training and module.p > 0:
        raise NotStreamableError(
            f"layer '{name}' ({type(module).__name__}) is in training mode: its random mask would differ "
            "between the forward pass and the per-tile recomputation in backward. Put it in eval mode "
            "(StreamingModule(..., freeze_batchnorm=True) does so) or move it into the head.")


def _refuse(name: str, what: str) -> NotStreamableError:
    return NotStreamableError(
        f"layer '{name}' ({what}) is not local: an output pixel depends on the whole image, so it "
        "cannot run tile by tile. Move it and everything after it into the head (split the model "
        "earlier), or replace it with a local layer.")


def _window_node(name: str, module: nn.Module) -> tuple[tuple[AxisWindow, AxisWindow], Callable]:
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise NotStreamableError(
                f"layer '{name}' (Conv2d) uses padding_mode='{module.padding_mode}'; streaming supports "
                "zero padding only (circular padding is not local at all). Use padding_mode='zeros', or "
                "pad the input image once instead.")
        k, s, d = module.kernel_size, module.stride, module.dilation
        if module.padding == "same":
            pads = []
            for i in range(2):
                total = d[i] * (k[i] - 1)
                pads.append((total // 2, total - total // 2))
        elif module.padding == "valid":
            pads = [(0, 0), (0, 0)]
        else:
            pads = [(module.padding[0],) * 2, (module.padding[1],) * 2]
        axes = tuple(AxisWindow(k[i], s[i], d[i], pads[i][0], pads[i][1]) for i in range(2))
        return axes, window_ops.conv_runner(module)
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            raise NotStreamableError(f"layer '{name}' (MaxPool2d) returns indices; streaming supports "
                                     "return_indices=False only.")
        k, s, p, d = (_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                      _pair(module.padding), _pair(module.dilation))
        axes = tuple(AxisWindow(k[i], s[i], d[i], p[i], p[i], bool(module.ceil_mode)) for i in range(2))
        return axes, window_ops.maxpool_runner(module, axes)
    if isinstance(module, nn.AvgPool2d):
        k, s, p = _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)
        axes = tuple(AxisWindow(k[i], s[i], 1, p[i], p[i], bool(module.ceil_mode)) for i in range(2))
        return axes, window_ops.avgpool_runner(module, axes)
    raise AssertionError(type(module))


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


_WINDOW_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _pointwise_module_runner(name: str, module: nn.Module) -> Callable:
    _check_module_mode(name, module)
    if isinstance(module, _DROPOUT_MODULES):
        return lambda x: x  # eval-mode dropout is the identity
    if getattr(module, "inplace", False):
        # In place on a tile crop would write through the view into an activation that other
        # consumers (a residual shortcut) still read; compute the same value out of place.
        module = copy.copy(module)
        module.inplace = False
    return module


def trace_trunk(trunk: nn.Module, *, freeze_batchnorm: bool = False) -> StreamGraph:
    """Trace ``trunk`` into a :class:`StreamGraph`, refusing every non-local layer by name."""
    if freeze_batchnorm:
        for m in trunk.modules():
            if isinstance(m, FROZEN_MODULES):
                m.eval()
    try:
        gm = torch.fx.symbolic_trace(trunk)
    except Exception as exc:  # fx raises many types; the message is what matters to the user
        raise NotStreamableError(
            f"could not trace the trunk {type(trunk).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "Streaming needs a trunk whose forward has no data-dependent control flow.") from exc

    modules = dict(gm.named_modules())
    nodes: list[StreamNode] = []
    index: dict[torch.fx.Node, int] = {}
    constants: dict[torch.fx.Node, str] = {}
    used_modules: dict[str, nn.Module] = {}

    for fx_node in gm.graph.nodes:
        op, name = fx_node.op, str(fx_node.target)
        if op == "placeholder":
            if nodes:
                raise NotStreamableError("the trunk's forward takes more than one input; streaming "
                                         "supports a single image tensor (NCHW).")
            index[fx_node] = len(nodes)
            nodes.append(StreamNode("input", "input", ()))
            continue
        if op == "get_attr":
            constants[fx_node] = fx_node.target
            continue
        if op == "output":
            out = fx_node.args[0]
            if not isinstance(out, torch.fx.Node) or out not in index:
                raise NotStreamableError("the trunk must return a single feature map (NCHW tensor) computed "
                                         "from its input; it returns something else.")
            if index[out] != len(nodes) - 1:
                # Keep the invariant "last node is the output" by reordering nothing: just refuse
                # dead branches, which would be wasted work per tile anyway.
                raise NotStreamableError("the trunk computes layers after its output that it never uses; "
                                         "remove them.")
            break

        spatial = [a for a in fx_node.all_input_nodes if a in index]
        unknown = [a for a in fx_node.all_input_nodes if a not in index and a not in constants]
        if unknown or not spatial:
            raise NotStreamableError(
                f"layer '{name}' computes something that does not come from the image ({op}); streaming "
                "supports layers applied to the image's feature maps only.")

        if op == "call_module":
            module = modules[fx_node.target]
            used_modules[name] = module
            if isinstance(module, _WINDOW_MODULES):
                axes, run = _window_node(name, module)
                node = StreamNode(name, "window", (index[spatial[0]],), axes, run)
            elif isinstance(module, _POINTWISE_MODULES + _BATCHNORM_MODULES + _DROPOUT_MODULES):
                fn = _pointwise_module_runner(name, module)
                node = StreamNode(name, "local", (index[spatial[0]],), None, _bind(fn, fx_node, index, constants, gm))
            else:
                raise _refuse(name, type(module).__name__)
        elif op == "call_function":
            target = fx_node.target
            if target in _ELEMENTWISE_FUNCTIONS:
                fn = _ELEMENTWISE_FUNCTIONS[target]
            elif target in _POINTWISE_FUNCTIONS:
                fn = target
            elif target is torch.cat:
                dim = fx_node.kwargs.get("dim", fx_node.args[1] if len(fx_node.args) > 1 else 0)
                if dim not in (1, -3):
                    raise _refuse(name, f"torch.cat along dim {dim}")
                fn = torch.cat
            else:
                raise _refuse(name, getattr(target, "__name__", str(target)))
            node = StreamNode(name, "local", tuple(index[a] for a in spatial), None,
                              _bind(fn, fx_node, index, constants, gm, drop_inplace=True))
        elif op == "call_method":
            if fx_node.target not in _POINTWISE_METHODS:
                raise _refuse(name, f"Tensor.{fx_node.target}")
            method = _POINTWISE_METHODS[fx_node.target]
            node = StreamNode(name, "local", tuple(index[a] for a in spatial), None,
                              _bind_method(method, fx_node, index, constants, gm))
        else:
            raise _refuse(name, op)

        index[fx_node] = len(nodes)
        for i in node.inputs:
            nodes[i].consumers.append(len(nodes))
        nodes.append(node)

    if len(nodes) < 2:
        raise NotStreamableError("the trunk has no layers; give it at least one convolution.")
    return StreamGraph(nodes, used_modules)


def _resolve_args(fx_node, index, constants, gm, tensors_by_index, drop_inplace):
    def sub(a):
        if a in index:
            return tensors_by_index[index[a]]
        return _get_constant(gm, constants[a])

    args = torch.fx.node.map_arg(fx_node.args, sub)
    kwargs = dict(torch.fx.node.map_arg(fx_node.kwargs, sub))
    if drop_inplace and "inplace" in kwargs:
        kwargs["inplace"] = False
    return args, kwargs


def _get_constant(gm: nn.Module, target: str) -> torch.Tensor:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and (value.shape[-1] > 1 or value.shape[-2] > 1):
        raise NotStreamableError(
            f"the trunk uses the tensor '{target}' with a spatial extent {tuple(value.shape)}; only "
            "per-channel constants (spatial size 1) can be applied tile by tile.")
    return value


def _bind(fn, fx_node, index, constants, gm, drop_inplace=False) -> Callable:
    """A runner ``run(inputs_by_index) -> Tensor`` replaying the fx call on tile tensors."""

    def run(tensors_by_index: dict[int, torch.Tensor]) -> torch.Tensor:
        args, kwargs = _resolve_args(fx_node, index, constants, gm, tensors_by_index, drop_inplace)
        return fn(*args, **kwargs)

    return run


def _bind_method(method: str, fx_node, index, constants, gm) -> Callable:
    def run(tensors_by_index: dict[int, torch.Tensor]) -> torch.Tensor:
        args, kwargs = _resolve_args(fx_node, index, constants, gm, tensors_by_index, False)
        return getattr(args[0], method)(*args[1:], **kwargs)

    return run
