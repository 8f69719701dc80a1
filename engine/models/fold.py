"""Fold frozen BatchNorm layers into the convolutions before them, for passes that train nothing.

An eval-mode BatchNorm is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with rescaled weights and a shifted bias: the same function (to float rounding, ~1e-6 relative
in float32) with one pass over each activation fewer. Inference and saliency (the input
gradient) use it; training does not, since the BatchNorm affine parameters have gradients of
their own. Zero padding commutes with the fold (the conv pads before it scales), so streamed
tiles stay exact at the image border.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _foldable_pairs(trunk: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) pairs where the BatchNorm is the conv's only consumer and each
    module is called once (a module reused at two places cannot take one folded weight)."""
    try:
        graph = fx.symbolic_trace(trunk).graph
    except Exception:  # noqa: BLE001  (untraceable: nothing folded; StreamingModule explains the trace failure)
        return []
    modules = dict(trunk.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = modules[src.target], modules[node.target]
        if (isinstance(conv, nn.Conv2d) and not bn.training and bn.track_running_stats
                and bn.running_mean is not None and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


def fold_batchnorm(trunk: nn.Module) -> nn.Module:
    """A copy of ``trunk`` with each eval-mode BatchNorm2d that only follows a Conv2d folded into
    it (with its running statistics) and replaced by ``nn.Identity``; the module tree and parameter names
    stay as they were, and ``trunk`` itself is untouched. Returns ``trunk`` when there is nothing
    to fold. The copy's parameters do not require gradients."""
    pairs = _foldable_pairs(trunk) if any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules()) else []
    if not pairs:
        return trunk
    folded = copy.deepcopy(trunk)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
            conv.weight, conv.bias = weight, bias
            parent_name, _, child = bn_name.rpartition(".")
            setattr(folded.get_submodule(parent_name) if parent_name else folded, child, nn.Identity())
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded
