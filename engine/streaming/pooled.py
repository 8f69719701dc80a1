"""A global pool over a streamed map, reduced block by block: the map is never held whole.

A classifier whose head is a global max or mean pool followed by a linear layer needs, of the
trunk's output map, only the pooled vector in the forward pass, and in the backward pass a
gradient that is known cell by cell once the pool is known: ``w / (h * w)`` everywhere for the
mean, ``w / ties`` at the maxima for the max (as ``amax`` spreads it). So
:class:`GlobalPoolReducer` takes the blocks of :meth:`StreamingModule.forward_blocks` as they
come and :meth:`GlobalPoolReducer.grad_for_block` feeds :meth:`StreamingModule.backward_from`.
Results equal pooling the stitched map (the mean up to summation order).
"""

from __future__ import annotations

import torch

POOLS = ("max", "avg")


class GlobalPoolReducer:
    """Running global ``"max"`` or ``"avg"`` pool of an (N, C, H, W) map given in disjoint blocks."""

    def __init__(self, pool: str):
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
        self.pool = pool
        self.cells = 0
        self.dtype: torch.dtype | None = None  # the map's
        self._sum: torch.Tensor | None = None  # (N, C), float64 for the mean
        self._max: torch.Tensor | None = None  # (N, C)
        self._where: list[torch.Tensor] = []  # rows of (n, c, row, col, value) that reached the running max

    def add(self, rows: tuple[int, int], cols: tuple[int, int], values: torch.Tensor) -> None:
        """Cells ``[rows) x [cols)`` of the map (output plane), shape (N, C, rows, cols)."""
        values = values.detach()
        self.dtype = values.dtype
        self.cells += values.shape[2] * values.shape[3]
        if self.pool == "avg":
            block_sum = values.double().sum(dim=(2, 3))
            self._sum = block_sum if self._sum is None else self._sum + block_sum
            return
        block_max = values.amax(dim=(2, 3))
        if self._max is None:
            reached = torch.ones_like(block_max, dtype=torch.bool)
            self._max = block_max.clone()
        else:
            reached = block_max >= self._max
            self._max = torch.maximum(self._max, block_max)
        if bool(reached.any()):
            # Only the channels whose maximum this block reached or raised; their cells at it.
            hit = (values == block_max[:, :, None, None]) & reached[:, :, None, None]
            n, c, r, k = hit.nonzero(as_tuple=True)
            self._where.append(torch.stack([n.double(), c.double(), (r + rows[0]).double(), (k + cols[0]).double(),
                                            values[n, c, r, k].double()], dim=1))
            if len(self._where) > 64:  # keep the list short: drop rows below the running max
                self._where = [self._maxima()]

    def _maxima(self) -> torch.Tensor:
        rows = torch.cat(self._where)
        n, c = rows[:, 0].long(), rows[:, 1].long()
        return rows[rows[:, 4] == self._max[n, c].double()]

    def pooled(self) -> torch.Tensor:
        """The pooled (N, C) vector (float32 for the max as the map's dtype gives it, the mean in
        the map's precision or better)."""
        if self.cells == 0:
            raise ValueError("no blocks were added")
        if self.pool == "avg":
            return self._sum / self.cells
        return self._max

    def grad_for_block(self, grad_pooled: torch.Tensor, dtype: torch.dtype | None = None):
        """The map's gradient block by block, given the gradient of the pooled (N, C) vector:
        a callable for :meth:`StreamingModule.backward_from`."""
        grad_pooled = grad_pooled.detach()
        if self.pool == "avg":
            per_cell = grad_pooled / self.cells

            def grad_avg(rows, cols):
                shape = (*per_cell.shape, rows[1] - rows[0], cols[1] - cols[0])
                return per_cell.to(dtype or per_cell.dtype)[:, :, None, None].expand(shape)

            return grad_avg
        maxima = self._maxima().to(grad_pooled.device)
        n, c = maxima[:, 0].long(), maxima[:, 1].long()
        ties = torch.zeros(grad_pooled.shape, dtype=torch.float64, device=grad_pooled.device)
        ties.index_put_((n, c), torch.ones_like(n, dtype=torch.float64), accumulate=True)
        share = grad_pooled.double()[n, c] / ties[n, c]  # amax spreads the gradient evenly over ties
        r, k = maxima[:, 2].long(), maxima[:, 3].long()

        def grad_max(rows, cols):
            inside = (r >= rows[0]) & (r < rows[1]) & (k >= cols[0]) & (k < cols[1])
            if not bool(inside.any()):
                return None
            g = torch.zeros((*grad_pooled.shape, rows[1] - rows[0], cols[1] - cols[0]),
                            dtype=dtype or grad_pooled.dtype, device=grad_pooled.device)
            g[n[inside], c[inside], r[inside] - rows[0], k[inside] - cols[0]] = share[inside].to(g.dtype)
            return g

        return grad_max
