"""Write the input gradient out tile by tile instead of holding it at full resolution.

Neighbouring cones overlap, so a pixel's gradient is complete only once every block whose cone
covers it has been back-propagated. Blocks run in raster order; after each block the sink emits
the cells no later block can touch. It keeps one band (one cone high, the image wide) of
accumulated gradient, optionally averaged over ``reduce`` x ``reduce`` cells, which is exact:
averaging is linear, so it commutes with the sum over blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GradientRegion:
    """A finished part of the input gradient.

    ``cells`` is ``(row0, row1, col0, col1)`` in the reduced plane (cell = reduce x reduce input
    pixels, aligned to the input's origin); ``pixels`` is the same box in input pixels, clipped to
    the image; ``values`` is (N, C, rows, cols), the mean gradient over each cell's pixels.
    """

    cells: tuple[int, int, int, int]
    pixels: tuple[int, int, int, int]
    values: torch.Tensor


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class InputGradientSink:
    """Receives the streamed input gradient as finished regions through ``on_region``."""

    def __init__(self, on_region: Callable[[GradientRegion], None], reduce: int = 1):
        if reduce < 1:
            raise ValueError(f"reduce must be a positive integer, got {reduce}")
        self.on_region = on_region
        self.reduce = int(reduce)

    # The methods below are driven by StreamingModule's backward, in raster block order.
    def begin(self, shape, row_cones: list[tuple[int, int]], col_cones: list[tuple[int, int]], device,
              dtype: torch.dtype = torch.float32) -> None:
        f = self.reduce
        # Accumulate in at least float32 (half-precision sums of many tiles lose the small terms).
        self._dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self._n, self._c, self._h, self._w = shape
        self._rows_c, self._cols_c = _ceil_div(self._h, f), _ceil_div(self._w, f)
        # A cell is final once the next block row/column's cone starts at or past its end.
        self._row_final = [row_cones[i + 1][0] // f for i in range(len(row_cones) - 1)] + [self._rows_c]
        self._col_final = [col_cones[j + 1][0] // f for j in range(len(col_cones) - 1)] + [self._cols_c]
        self._row_cones, self._col_cones = row_cones, col_cones
        self._device = device
        self._band: torch.Tensor | None = None
        self._band_r0 = 0

    def _ensure_band(self, row_end: int) -> torch.Tensor:
        rows = row_end - self._band_r0
        if self._band is None:
            self._band = torch.zeros(self._n, self._c, rows, self._cols_c, dtype=self._dtype, device=self._device)
        elif self._band.shape[2] < rows:
            grow = torch.zeros(self._n, self._c, rows - self._band.shape[2], self._cols_c,
                               dtype=self._band.dtype, device=self._device)
            self._band = torch.cat([self._band, grow], dim=2)
        return self._band

    def add(self, bi: int, bj: int, grad: torch.Tensor | None) -> None:
        """Add block (bi, bj)'s input gradient over its cone (None: the block had no gradient)."""
        f = self.reduce
        if grad is not None:
            (a, b), (c, d) = self._row_cones[bi], self._col_cones[bj]
            ca, cb, cc, cd = a // f, _ceil_div(b, f), c // f, _ceil_div(d, f)
            grad = grad.detach().to(self._dtype)
            if f > 1:
                pads = (c - cc * f, cd * f - d, a - ca * f, cb * f - b)
                grad = F.avg_pool2d(F.pad(grad, pads), f, f, 0, False, True, 1)  # cell sums
            band = self._ensure_band(cb)
            band[:, :, ca - self._band_r0:cb - self._band_r0, cc:cd] += grad
        r0 = self._row_final[bi - 1] if bi else 0
        c0 = self._col_final[bj - 1] if bj else 0
        self._emit(r0, self._row_final[bi], c0, self._col_final[bj])
        if bj == len(self._col_final) - 1 and self._band is not None:
            keep = self._row_final[bi] - self._band_r0
            self._band = self._band[:, :, keep:].clone() if keep < self._band.shape[2] else None
            self._band_r0 = self._row_final[bi]
        elif bj == len(self._col_final) - 1:
            self._band_r0 = self._row_final[bi]

    def _emit(self, r0: int, r1: int, c0: int, c1: int) -> None:
        if r1 <= r0 or c1 <= c0:
            return
        f = self.reduce
        band = self._ensure_band(r1)
        sums = band[:, :, r0 - self._band_r0:r1 - self._band_r0, c0:c1]
        rows = torch.clamp(torch.arange(r0 + 1, r1 + 1) * f, max=self._h) - torch.arange(r0, r1) * f
        cols = torch.clamp(torch.arange(c0 + 1, c1 + 1) * f, max=self._w) - torch.arange(c0, c1) * f
        counts = (rows[:, None] * cols[None, :]).to(device=sums.device, dtype=sums.dtype)
        pixels = (r0 * f, min(r1 * f, self._h), c0 * f, min(c1 * f, self._w))
        self.on_region(GradientRegion((r0, r1, c0, c1), pixels, sums / counts))
