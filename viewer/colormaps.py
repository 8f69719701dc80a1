"""Colour-mapping of float maps to premultiplied BGRA bytes (pure numpy, worker threads).

The output layout is what ``QImage.Format_ARGB32_Premultiplied`` holds in memory on a
little-endian machine (B, G, R, A), the raster engine's fast path, so the UI thread only
copies bytes into an image and never converts. LUT entries are opaque, so premultiplying is
trivial: a cell is either its LUT colour at alpha 255 or fully transparent (zero bytes).
Opacity is applied when painting, so changing it never re-maps anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from pyqtgraph import colormap

#: Perceptually uniform sequential maps, then diverging ones (CET-D1: blue-white-red,
#: CET-D1A: its darker variant); names as pyqtgraph knows them.
SEQUENTIAL = ("viridis", "magma", "inferno", "plasma", "cividis")
DIVERGING = ("CET-D1", "CET-D1A")
COLORMAPS = SEQUENTIAL + DIVERGING
LUT_SIZE = 256


@dataclass(frozen=True)
class LayerStyle:
    """How one map layer is drawn. ``vmin``/``vmax`` map to the ends of the colormap (values
    outside are clipped); cells below ``threshold`` (when set) and NaN cells are transparent.
    ``version`` changes whenever the colour-mapping changes, so stale RGBA can be recognised."""

    colormap: str = "viridis"
    vmin: float = 0.0
    vmax: float = 1.0
    threshold: float | None = None
    opacity: float = 0.6
    visible: bool = True
    smooth: bool = False
    #: Follow the data: the range grows as patches raise the maximum (until the user sets one).
    auto_range: bool = False
    version: int = 0

    def maps_like(self, other: "LayerStyle") -> bool:
        """True when both give the same RGBA for every value (opacity and smoothing are paint-time)."""
        return (self.colormap, self.vmin, self.vmax, self.threshold) == (other.colormap, other.vmin, other.vmax, other.threshold)

    def changed(self, **changes) -> "LayerStyle":
        """A copy with ``changes``; ``version`` is bumped only when the colour-mapping changes."""
        new = replace(self, **changes)
        return replace(new, version=self.version + 1) if not new.maps_like(self) else new


@lru_cache(maxsize=None)
def lut_rgba(name: str) -> np.ndarray:
    """(LUT_SIZE, 4) uint8 RGBA of the named colormap (read-only; shared between threads)."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    lut = np.ascontiguousarray(colormap.get(name).getLookupTable(0.0, 1.0, LUT_SIZE, alpha=True), dtype=np.uint8)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=None)
def _lut_bgra(name: str) -> np.ndarray:
    lut = lut_rgba(name)[:, [2, 1, 0, 3]].copy()
    lut.setflags(write=False)
    return lut


def lut_indices(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """LUT indices (uint8) of float ``values`` scaled linearly from [vmin, vmax] and clipped."""
    span = vmax - vmin if vmax != vmin else 1.0
    scaled = (np.nan_to_num(values, nan=vmin) - vmin) * ((LUT_SIZE - 1) / span)
    return np.clip(scaled + 0.5, 0, LUT_SIZE - 1).astype(np.uint8)


def colourize(values: np.ndarray, style: LayerStyle) -> np.ndarray:
    """(h, w) float -> (h, w, 4) uint8 premultiplied BGRA, C-contiguous. Runs on workers."""
    bgra = _lut_bgra(style.colormap)[lut_indices(values, style.vmin, style.vmax)]
    hidden = np.isnan(values)
    if style.threshold is not None:
        hidden |= values < style.threshold
    bgra[hidden] = 0
    return bgra
