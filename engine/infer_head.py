"""The model's head on the streamed trunk's map, as inference needs it: what it allows to be
computed block by block, slide-level logits (over a mask of the trunk's cells), per-cell class
probabilities, attention weights, and the gradient of a logit with respect to the pooled features.

Heads are used through their public interface only (``forward(fmap, mask=None)``,
``forward_cells``, ``attention(fmap, mask=None)`` for an attention head, ``stages``, and for a
global pool + linear head ``pool``, ``classify`` and ``fc``), so any head of
:mod:`engine.models` that follows it runs here.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from engine.errors import SpecError
from engine.geometry import trunk_mask_on_head_grid
from engine.models.head_grid import mask_on_head_grid, stages_stride

#: Heads whose pool a :class:`~engine.streaming.pooled.GlobalPoolReducer` takes block by block.
BLOCK_POOLS = ("max", "avg")


def masked(fmap: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The masked model's input: trunk cells outside ``mask`` set to 0. ``torch.where``, not a
    product: skipped blocks hold NaN in the stitched map, and NaN * 0 is NaN."""
    if mask is None:
        return fmap
    return torch.where(mask.to(fmap.device), fmap, torch.zeros((), dtype=fmap.dtype, device=fmap.device))


def head_stride(head) -> tuple[int, int]:
    """Trunk cells (rows, cols) per cell of ``head``'s grid: its ``stride``, else traced from its stages."""
    stride = getattr(head, "stride", None)
    if stride is not None:
        return tuple(stride)
    stages = getattr(head, "stages", None)
    return stages_stride(stages) if stages is not None else (1, 1)


def masked_cell_logits(head, fmap: torch.Tensor, mask: torch.Tensor | None, stride: tuple[int, int]) -> torch.Tensor:
    """(N, K, h, w) per-cell logits of the masked model on the head's grid: ``forward_cells`` of
    the map with the trunk cells outside ``mask`` set to 0, NaN on the head cells holding no
    cell of the mask (carried by ``stride``, the head's). None for ``mask``: every cell, as the
    unmasked model. Inference's prediction maps and evaluation's kept maps both come from here."""
    cells = head.forward_cells(masked(fmap, mask))
    if mask is None:
        return cells
    keep = mask_on_head_grid(mask.to(cells.device), stride, tuple(cells.shape[2:]))
    return torch.where(keep, cells, torch.full((), math.nan, dtype=cells.dtype, device=cells.device))


class HeadEvaluator:
    """The conventional head on the streamed trunk's map.

    ``cells_live``: the head has no spatial stages left, so each trunk block's per-cell
    probabilities (and attention scores) are exact as soon as the block is computed.
    ``pool_live``: besides, the head is a global max/avg pool and a linear layer, so the map is
    pooled block by block and never held (its gradient made block by block too).
    ``is_attention``: the head pools with attention weights (a softmax over the whole map).
    """

    def __init__(self, head):
        self.head = head
        stages = getattr(head, "stages", None)
        # A head that does not say what stages it has is taken to have some: nothing is then
        # emitted per block, which is never wrong.
        self.cells_live = stages is not None and len(list(stages.children())) == 0
        self.is_attention = callable(getattr(head, "attention", None))
        reducible = getattr(head, "reducible", getattr(head, "pool", None) in BLOCK_POOLS)
        self.pool_live = (self.cells_live and reducible and not self.is_attention and getattr(head, "pool", None)
                          in BLOCK_POOLS and hasattr(head, "fc") and callable(getattr(head, "classify", None)))
        self.takes_mask = _accepts(head.forward, "mask")
        self.stride = head_stride(head)  # trunk cells per head cell (rows, cols)

    def check_mask(self) -> None:
        """Refuse a masked run on a head that cannot pool over a mask (before anything is read)."""
        if not self.pool_live and not self.takes_mask:
            raise SpecError("this model's head cannot pool over a mask of the slide (tissue mask or regions): "
                            "run with tissue_mask 'none' (--tissue-mask none) and without regions, or use a model "
                            "whose head is a global pool and a linear layer")

    def cell_probabilities(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
        """(classes, h, w) float32 probabilities of the head's cells on (part of) the map; with
        ``mask`` (on ``fmap``'s cells), of the masked model, NaN on head cells outside it."""
        with torch.no_grad():
            logits = masked_cell_logits(self.head, fmap.detach().float(), mask, self.stride)
            probs = torch.softmax(logits, dim=1)[0]
        return probs.cpu().numpy().astype(np.float32)

    def head_cells(self, mask: torch.Tensor, head_hw: tuple[int, int]) -> np.ndarray:
        """(h, w) bool on the head's grid: the head cells holding a cell of ``mask`` (trunk grid),
        the cells the masked head pools over."""
        return trunk_mask_on_head_grid(mask[0, 0].cpu().numpy(), self.stride, head_hw)

    def logits(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Slide-level logits of the stitched map; with ``mask``, of the masked model."""
        if mask is None:
            return self.head(fmap.float())
        return self.head(masked(fmap, mask).float(), mask=mask)

    def attention(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
        """(h, w) float64 attention weights on the head's grid (summing to 1 over the mask)."""
        with torch.no_grad():
            fmap = masked(fmap.detach(), mask).float()
            weights = self.head.attention(fmap) if mask is None else self.head.attention(fmap, mask=mask)
        return weights[0, 0].double().cpu().numpy()

    def pooled_logits(self, reducer) -> torch.Tensor:
        return self.head.classify(reducer.pooled().float())

    def pooled_logit_grad(self, target: int) -> torch.Tensor:
        """d logit[target] / d pooled features: the classifier's row, (1, C)."""
        return self.head.fc.weight[target].detach().float()[None, :]


def nan_outside(values: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """``values`` (..., h, w) with the cells outside ``keep`` set NaN (in place)."""
    if keep is not None:
        values[..., ~keep] = math.nan
    return values


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
