"""The head's grid over the trunk's: the stride of the head's stages, taken from their layer
geometry, and a trunk mask carried onto the head's cells (the torch twin of
:func:`engine.geometry.trunk_mask_on_head_grid`, on the mask's device).

The stride is not ``round(H / h)`` or ``ceil(H / h)`` of the two maps' sizes: on a 13-cell trunk
map, stages of stride 4 give 4 head cells, and 13 / 4 rounds to 3. It is traced once from the
stages (:func:`engine.streaming.graph.trace_trunk`, :func:`engine.streaming.plan.axis_geometry`),
where the model is built or loaded, never on a data-loading thread: torch.fx patches
``nn.Module.__call__`` process-wide while it traces.
"""

from __future__ import annotations

import torch
from torch import nn


def stages_stride(stages: nn.Module) -> tuple[int, int]:
    """(rows, cols) trunk cells per head cell: the total stride of ``stages`` ((1, 1) without any)."""
    if not list(stages.children()):
        return (1, 1)
    from engine.streaming.graph import trace_trunk
    from engine.streaming.plan import axis_geometry

    # Tracing refuses norms in training mode (batch statistics are not local); the geometry does
    # not depend on the mode, so trace in eval mode and give every module its mode back.
    modes = [(m, m.training) for m in stages.modules()]
    stages.eval()
    try:
        graph = trace_trunk(stages)
    finally:
        for m, training in modes:
            m.training = training
    return axis_geometry(graph, 0).stride, axis_geometry(graph, 1).stride


def mask_on_head_grid(mask: torch.Tensor, stride: tuple[int, int], head_hw: tuple[int, int]) -> torch.Tensor:
    """``mask`` (N, 1, H, W) bool on the trunk's grid carried to the head's grid of ``head_hw``
    cells: :func:`engine.geometry.trunk_mask_on_head_grid`'s rule, on the mask's device."""
    (h, w), (sh, sw) = tuple(head_hw), tuple(stride)
    if (sh, sw) == (1, 1) and tuple(mask.shape[-2:]) == (h, w):
        return mask
    rows, cols = min(mask.shape[-2], h * sh), min(mask.shape[-1], w * sw)
    padded = torch.zeros((*mask.shape[:-2], h * sh, w * sw), dtype=torch.bool, device=mask.device)
    padded[..., :rows, :cols] = mask[..., :rows, :cols]
    return padded.reshape(*mask.shape[:-2], h, sh, w, sw).any(dim=-1).any(dim=-2)
