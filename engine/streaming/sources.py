"""Where a streamed input comes from: a tensor in memory, or regions read lazily.

A source is anything with ``shape`` (N, C, H, W), ``dtype`` and ``read(rows, cols)`` returning the
tensor of input rows ``[rows[0], rows[1])`` and columns ``[cols[0], cols[1])`` (input plane).
A slide read at some level is such a source: only the tiles being computed are ever in memory.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch


@runtime_checkable
class RegionSource(Protocol):
    shape: tuple[int, int, int, int]
    dtype: torch.dtype

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor: ...


class TensorSource:
    """A tensor already in memory (views, no copies)."""

    def __init__(self, x: torch.Tensor):
        if x.dim() != 4:
            raise ValueError(f"streaming expects an NCHW tensor, got shape {tuple(x.shape)}")
        self.tensor = x
        self.shape = tuple(x.shape)
        self.dtype = x.dtype

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        return self.tensor[:, :, rows[0]:rows[1], cols[0]:cols[1]]


class CallableSource:
    """Wraps ``fn(rows, cols) -> tensor`` with a declared shape, e.g. a lazy slide reader.

    The returned tile is checked against the requested size, so a reader bug surfaces as a
    clear error instead of a silently misaligned map.
    """

    def __init__(self, shape: tuple[int, int, int, int], fn: Callable[[tuple[int, int], tuple[int, int]], torch.Tensor],
                 dtype: torch.dtype = torch.float32):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self._fn = fn

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        t = self._fn(rows, cols)
        want = (self.shape[0], self.shape[1], rows[1] - rows[0], cols[1] - cols[0])
        if tuple(t.shape) != want:
            raise ValueError(f"source returned a tile of shape {tuple(t.shape)} for rows {rows}, "
                             f"cols {cols}; expected {want}")
        return t if t.dtype == self.dtype else t.to(self.dtype)
