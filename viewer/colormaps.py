"""Colour-mapping of float maps to premultiplied BGRA bytes (pure numpy, worker threads).

The output layout is what ``QImage.Format_ARGB32_Premultiplied`` holds in memory on a
little-endian machine (B, G, R, A), the raster engine's fast path, so the UI thread only
copies bytes into an image and never converts. LUT entries are opaque, so premultiplying is
trivial: a cell is either its LUT colour at alpha 255 or fully transparent (zero bytes).
Opacity is applied when painting, so changing it never re-maps anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import numpy as np

from engine.colormaps import COLORMAPS, DIVERGING, LUT_SIZE, SEQUENTIAL, colorize_bgra, lut_indices, lut_rgba

__all__ = ["COLORMAPS", "DIVERGING", "LUT_SIZE", "SEQUENTIAL", "LayerStyle", "colourize", "lut_indices", "lut_rgba"]

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


def colourize(values: np.ndarray, style: LayerStyle) -> np.ndarray:
    """(h, w) float -> (h, w, 4) uint8 premultiplied BGRA, C-contiguous, in ``style``. Runs on workers."""
    return colorize_bgra(values, style.colormap, style.vmin, style.vmax, style.threshold)
