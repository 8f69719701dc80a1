"""A global pool over a streamed map, reduced block by block: the map is never held whole.

A classifier whose head is a global max or mean pool followed by a linear layer needs, of the
trunk's output map, only the pooled vector in the forward pass, and in the backward pass a
gradient that is known cell by cell once the pool is known: ``w / (h * w)`` everywhere for the
mean, ``w / ties`` at the maxima for the max (as ``amax`` spreads it). So
:class:`GlobalPoolReducer` takes the blocks of :meth:`StreamingModule.forward_blocks` as they
come and :meth:`GlobalPoolReducer.grad_for_block` feeds :meth:`StreamingModule.backward_from`.
Results equal pooling the stitched map (the mean up to summation order).

With an output-plane ``mask`` (a tissue mask on the trunk's grid), cells outside it take no
part: they are neither a maximum nor summed nor counted, and their gradient is 0. A block with
no cell in the mask then needs no computing at all: :func:`mask_skip` is the
:attr:`~engine.streaming.hooks.StreamHooks.skip_block` that leaves it out, forward and backward.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.errors import EmptyMaskError
from engine.specs import POOLS

#: Positions kept per (image, channel) that tie at its maximum. A channel flat over the slide
#: (e.g. a ReLU channel that is 0 everywhere) ties at every cell; past this many ties its cells
#: are found again from the backward pass's recomputed block instead of being stored.
TIE_CAP = 64


def _mask_planes(mask) -> torch.Tensor:
    """A mask (H, W), (N, H, W) or (N, 1, H, W), bool tensor or array, as (N or 1, 1, H, W) bool."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(torch.bool)
    if m.dim() == 2:
        m = m[None]
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"a pool mask is (H, W) or (N, 1, H, W) on the output plane, got shape {tuple(m.shape)}")
    return m


def mask_skip(mask):
    """A ``skip_block(rows, cols)`` that leaves out every block whose owned output cells all lie
    outside ``mask`` (output plane; for several images, outside each image's)."""
    any_image = _mask_planes(mask).any(dim=0)[0].cpu().numpy()
    # A summed-area table answers "any cell of the mask in this block" in O(1) per block.
    table = np.zeros((any_image.shape[0] + 1, any_image.shape[1] + 1), np.int64)
    table[1:, 1:] = any_image.cumsum(0).cumsum(1)

    def skip(rows: tuple[int, int], cols: tuple[int, int]) -> bool:
        (r0, r1), (c0, c1) = rows, cols
        return int(table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]) == 0

    return skip


class GlobalPoolReducer:
    """Running global ``"max"`` or ``"avg"`` pool of an (N, C, H, W) map given in disjoint blocks,
    over the cells of ``mask`` (output plane, (H, W) or (N or 1, 1, H, W); None: every cell)."""

    def __init__(self, pool: str, mask=None):
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
        self.pool = pool
        self.mask: torch.Tensor | None = None if mask is None else _mask_planes(mask)
        self._counted: torch.Tensor | None = None  # (N or 1, 1) float64: mask cells added (masked mean)
        self.cells = 0
        self.dtype: torch.dtype | None = None  # the map's
        self._sum: torch.Tensor | None = None  # (N, C), float64 for the mean
        self._max: torch.Tensor | None = None  # (N, C)
        self._ties: torch.Tensor | None = None  # (N, C) float64: cells at the running max
        self._where: list[torch.Tensor] = []  # rows of (n, c, row, col, value) that reached the running max

    def add(self, rows: tuple[int, int], cols: tuple[int, int], values: torch.Tensor) -> None:
        """Cells ``[rows) x [cols)`` of the map (output plane), shape (N, C, rows, cols)."""
        values = values.detach()
        self.dtype = values.dtype
        self.cells += values.shape[2] * values.shape[3]
        inside = self._inside(rows, cols, values.device)
        if inside is not None:
            counted = inside.sum(dim=(2, 3)).double()
            self._counted = counted if self._counted is None else self._counted + counted
        if self.pool == "avg":
            if inside is not None:
                values = torch.where(inside, values, torch.zeros((), dtype=values.dtype, device=values.device))
            block_sum = values.double().sum(dim=(2, 3))
            self._sum = block_sum if self._sum is None else self._sum + block_sum
            return
        pooled_values = values
        if inside is not None:
            pooled_values = torch.where(inside, values, torch.full((), -math.inf, dtype=values.dtype,
                                                                   device=values.device))
        block_max = pooled_values.amax(dim=(2, 3))
        at_max = pooled_values == block_max[:, :, None, None]
        if inside is not None:
            at_max = at_max & inside
        block_ties = at_max.sum(dim=(2, 3)).double()
        if self._max is None:
            raised, equal = torch.ones_like(block_max, dtype=torch.bool), torch.zeros_like(block_max, dtype=torch.bool)
            self._max, self._ties = block_max.clone(), block_ties
        else:
            raised, equal = block_max > self._max, block_max == self._max
            self._ties = torch.where(raised, block_ties, torch.where(equal, self._ties + block_ties, self._ties))
            self._max = torch.maximum(self._max, block_max)
        keep = (raised | equal) & (self._ties <= TIE_CAP)  # record positions of sparse maxima only
        if bool(keep.any()):
            n, c, r, k = (at_max & keep[:, :, None, None]).nonzero(as_tuple=True)
            self._where.append(torch.stack([n.double(), c.double(), (r + rows[0]).double(), (k + cols[0]).double(),
                                            values[n, c, r, k].double()], dim=1))
            if len(self._where) > 64:  # keep the list short: drop rows below the running max
                self._where = [self._maxima()]

    def _inside(self, rows: tuple[int, int], cols: tuple[int, int], device) -> torch.Tensor | None:
        """The mask's cells ``[rows) x [cols)``, (N or 1, 1, rows, cols), or None without a mask."""
        if self.mask is None:
            return None
        if self.mask.device != torch.device(device):
            self.mask = self.mask.to(device)
        return self.mask[:, :, rows[0]:rows[1], cols[0]:cols[1]]

    def _maxima(self) -> torch.Tensor:
        """Stored positions at the final maximum, of channels with at most TIE_CAP ties."""
        rows = torch.cat(self._where) if self._where else torch.zeros((0, 5), dtype=torch.float64)
        rows = rows.to(self._max.device)
        n, c = rows[:, 0].long(), rows[:, 1].long()
        return rows[(rows[:, 4] == self._max[n, c].double()) & (self._ties[n, c] <= TIE_CAP)]

    def pooled(self) -> torch.Tensor:
        """The pooled (N, C) vector: the maximum in the map's dtype, the mean from a float64 sum.
        A new tensor (the reducer's own state never enters an autograd graph)."""
        if self.cells == 0 and self.mask is None:
            raise ValueError("no blocks were added")
        if self.pool == "avg":
            return self._sum / self._count()
        self._count()  # a masked max over no cell would be -inf, silently
        return self._max.clone()

    def _count(self):
        """The mean's divisor: every cell added, or the mask's cells among them, per image."""
        if self.mask is None:
            return self.cells
        if self._counted is None or not bool((self._counted > 0).all()):
            raise EmptyMaskError("the pool mask holds no cell of the blocks added for some image, so there is "
                                 "nothing to pool; use no mask (tissue_mask 'none') for it, or check the mask")
        return self._counted

    def grad_for_block(self, grad_pooled: torch.Tensor, dtype: torch.dtype | None = None):
        """The map's gradient block by block, given the gradient of the pooled (N, C) vector:
        a callable for :meth:`StreamingModule.backward_from`. With channels tied at their max
        over more than TIE_CAP cells, it has ``needs_values`` set: it is then called with the
        block's recomputed values too, and finds those channels' maxima in them."""
        grad_pooled = grad_pooled.detach()
        if self.pool == "avg":
            per_cell = grad_pooled / self._count().to(grad_pooled.device) if self.mask is not None \
                else grad_pooled / self.cells

            def grad_avg(rows, cols, values=None):
                shape = (*per_cell.shape, rows[1] - rows[0], cols[1] - cols[0])
                g = per_cell.to(dtype or per_cell.dtype)[:, :, None, None].expand(shape)
                inside = self._inside(rows, cols, g.device)
                if inside is None:
                    return g
                if not bool(inside.any()):
                    return None
                return torch.where(inside, g, torch.zeros((), dtype=g.dtype, device=g.device))

            return grad_avg
        device = grad_pooled.device
        ties = self._ties.to(device)
        share = grad_pooled.double() / ties  # amax spreads the gradient evenly over ties
        dense = (ties > TIE_CAP) & (grad_pooled != 0)
        maxima = self._maxima().to(device)
        n, c = maxima[:, 0].long(), maxima[:, 1].long()
        r, k = maxima[:, 2].long(), maxima[:, 3].long()
        sparse_share = share[n, c]
        top = self._max.to(device)

        def grad_max(rows, cols, values=None):
            shape = (*grad_pooled.shape, rows[1] - rows[0], cols[1] - cols[0])
            g = None
            inside = (r >= rows[0]) & (r < rows[1]) & (k >= cols[0]) & (k < cols[1])
            if bool(inside.any()):
                g = torch.zeros(shape, dtype=dtype or grad_pooled.dtype, device=device)
                g[n[inside], c[inside], r[inside] - rows[0], k[inside] - cols[0]] = sparse_share[inside].to(g.dtype)
            if values is not None and bool(dense.any()):
                at = (values.detach() == top[:, :, None, None].to(values.dtype)) & dense[:, :, None, None]
                inside = self._inside(rows, cols, at.device)
                if inside is not None:
                    at = at & inside
                if bool(at.any()):
                    g = torch.zeros(shape, dtype=dtype or grad_pooled.dtype, device=device) if g is None else g
                    g += at * share[:, :, None, None].to(g.dtype)
            return g

        grad_max.needs_values = bool(dense.any())
        return grad_max
