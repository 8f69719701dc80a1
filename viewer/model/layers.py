"""Map layers: which one (:class:`LayerKey`), how it is drawn (:class:`LayerStyle`), and its
colour-mapping to premultiplied BGRA bytes (pure numpy, run on workers).

A map source as the engine names it ("prediction", "saliency") splits into display layers: one
per class for the per-class "prediction" map, one for any other source. The key keeps source and
class apart, so nothing parses them out of a display name.

The BGRA layout is what ``QImage.Format_ARGB32_Premultiplied`` holds in memory on a
little-endian machine (B, G, R, A), the raster engine's fast path, so the UI thread only
copies bytes into an image and never converts. LUT entries are opaque, so premultiplying is
trivial: a cell is either its LUT colour at alpha 255 or fully transparent (zero bytes).
Opacity is applied when painting, so changing it never re-maps anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.colormaps import colorize_bgra

#: The engine's per-class map source; every other source is one layer.
PREDICTION = "prediction"


@dataclass(frozen=True)
class LayerKey:
    """One display layer: the map ``source`` and, for a per-class source, the class."""

    source: str
    class_name: str | None = None

    @property
    def label(self) -> str:
        """The short name (the class, else the source): what the value readout prints."""
        return self.class_name if self.class_name is not None else self.source

    def __str__(self) -> str:
        return self.source if self.class_name is None else f"{self.source}: {self.class_name}"


SALIENCY = LayerKey("saliency")
#: The tissue mask a masked run used (1 on tissue cells, 0 on glass), on the prediction map's grid.
TISSUE = LayerKey("tissue")
#: An attention head's weights: unnormalised while the run goes, normalised (sum 1) at its end.
ATTENTION = LayerKey("attention")


def layer_keys(source: str, classes: tuple[str, ...]) -> list[LayerKey]:
    """The display layers a map source splits into, in the order of its planes."""
    if source == PREDICTION:
        return [LayerKey(source, c) for c in classes]
    return [LayerKey(source)]


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


def default_style(key: LayerKey) -> LayerStyle:
    if key.source == SALIENCY.source:
        return LayerStyle(colormap="magma", vmin=0.0, vmax=1.0, opacity=0.6, auto_range=True)
    if key.source == TISSUE.source:
        # Glass (0) transparent, tissue (1) a light tint at the top of the map: the slide shows through.
        return LayerStyle(colormap="viridis", vmin=0.0, vmax=1.0, threshold=0.5, opacity=0.35)
    if key.source == ATTENTION.source:
        # Weights are tiny (they sum to 1 over the slide) and unnormalised while the run goes: the
        # range follows the data.
        return LayerStyle(colormap="inferno", vmin=0.0, vmax=1.0, opacity=0.6, auto_range=True)
    return LayerStyle(colormap="viridis", vmin=0.0, vmax=1.0, opacity=0.5)


def colourize(values: np.ndarray, style: LayerStyle) -> np.ndarray:
    """(h, w) float -> (h, w, 4) uint8 premultiplied BGRA, C-contiguous, in ``style``. Runs on workers."""
    return colorize_bgra(values, style.colormap, style.vmin, style.vmax, style.threshold)
