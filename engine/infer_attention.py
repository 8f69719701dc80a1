"""The attention layer ("attention") of a model whose head pools with attention weights.

An attention weight is a softmax over every pooled cell of the slide, so no cell's weight is
known before the last block has run. What each block does fix is its cells' attention scores,
and the weights are those scores' exponentials up to one factor (the softmax's sum). So, when the
head has no spatial stages left (its cells are the trunk's), each block's cells are emitted
live as the unnormalised weight ``exp(score - score of an all-zero cell)``; once the whole map is
known, the exact normalised attention (the head's own ``attention`` on the masked map, summing to
1 over the kept cells) replaces the whole layer in one patch. Live and final maps differ by that
one factor only, so the picture does not change when the final map arrives: a viewer that fits
its colour range to the data shows the same image, now in the weights' own units. A head with
spatial stages gives only the final map, on its own grid.

The head's interface gives weights, not scores. The scores of a block, relative to a reference
cell, come from the head's attention over the block's cells plus the reference (an all-zero
feature vector, the same for every block): ``log a_i - log a_ref = s_i - s_ref``, exactly, because
the softmax's sum cancels. This is computed in float64 on a copy of the head, so weights as small
as 1e-300 keep their logarithm.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from engine.events import EventCallback
from engine.geometry import LevelRegion, head_cell_hw
from engine.infer_head import HeadEvaluator, nan_outside
from engine.infer_maps import MapAccumulator

ATTENTION = "attention"
#: exp() above this overflows float32; a live weight is capped there (the final map is exact).
LOG_FLOAT32_MAX = math.log(np.finfo(np.float32).max)


def relative_scores(head64: torch.nn.Module, block: torch.Tensor) -> np.ndarray:
    """(h, w) float64: each cell's attention score less the score of an all-zero cell, for the
    float64 head ``head64`` (whose attention treats cells one by one: no spatial stages)."""
    _, c, h, w = block.shape
    cells = block[:1].detach().to(torch.float64).reshape(1, c, 1, h * w)
    cells = torch.cat([torch.zeros_like(cells[..., :1]), cells], dim=3)
    with torch.no_grad(), torch.autocast(block.device.type, enabled=False):
        weights = head64.attention(cells).reshape(-1)
    log_weights = torch.log(weights)
    return (log_weights[1:] - log_weights[0]).reshape(h, w).cpu().numpy()


class AttentionMap:
    """The attention layer of one run: live unnormalised weights block by block (heads without
    spatial stages), then the normalised weights once the map is whole."""

    def __init__(self, head: HeadEvaluator, region: LevelRegion, cell_hw: tuple[int, int], out_hw: tuple[int, int],
                 classes: tuple[str, ...], emit: EventCallback):
        self.head, self.region, self.cell_hw, self.out_hw = head, region, cell_hw, out_hw
        self.classes, self.emit = classes, emit
        self.map: MapAccumulator | None = None
        self._head64 = copy.deepcopy(head.head).double() if head.cells_live else None

    def _accumulator(self, map_hw: tuple[int, int], cell_hw: tuple[int, int]) -> MapAccumulator:
        if self.map is None:
            # Like the prediction map: the trunk's last cells reach past the region; the map ends at it.
            self.map = MapAccumulator(ATTENTION, self.region, cell_hw, map_hw, channels=(), fill=math.nan, clip=True,
                                      classes=self.classes, emit=self.emit)
        return self.map

    def add_block(self, rows: tuple[int, int], cols: tuple[int, int], fmap_block: torch.Tensor,
                  keep: np.ndarray | None) -> None:
        """A forward block's cells (trunk grid): their unnormalised weights, live."""
        weights = np.exp(np.minimum(relative_scores(self._head64, fmap_block), LOG_FLOAT32_MAX))
        values = nan_outside(weights.astype(np.float32), keep)
        self._accumulator(self.out_hw, self.cell_hw).put(values, rows, cols)

    def finish(self, fmap: torch.Tensor, mask: torch.Tensor | None) -> None:
        """The normalised attention of the whole (stitched) map, replacing the live weights."""
        weights = self.head.attention(fmap, mask)
        map_hw = tuple(weights.shape)
        keep = None if mask is None else self.head.head_cells(mask, map_hw)
        # Each head cell is the stages' stride in trunk cells (as for the prediction map).
        cell_hw = head_cell_hw(self.cell_hw, self.head.stride)
        self._accumulator(map_hw, cell_hw).put_whole(nan_outside(weights.astype(np.float32), keep))
