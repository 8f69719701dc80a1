"""Heatmaps registered to their slide: one pyramidal tiled TIFF per map plane that ASAP, QuPath
and OpenSlide overlay on the slide without any alignment step.

Level 0 of each TIFF spans the slide's whole level-0 extent at the map's cell size, so pixel
(i, j) covers level-0 pixels ``[j * cw, (j + 1) * cw) x [i * ch, (i + 1) * ch)`` at every zoom;
the map (which covers only its ``l0_box``, e.g. the tissue box) is placed in it and the rest is
transparent (RGBA) or NaN (float). Each pixel takes the value of the map cell under its centre
(nearest), so a map whose cells line up with the TIFF's grid is copied exactly. The coarser
levels halve the size each time (downsamples 2, 4, 8, ..., as ASAP writes its own pyramids and
OpenSlide's generic-tiff reader finds them: tiled levels in the main IFD chain, marked reduced
by NewSubfileType) until the level fits one tile. The physical pixel size goes into the
resolution tags (ResolutionUnit centimetre, X/YResolution = 1e4 / (slide µm/px * cell) px/cm).

Two files per plane: ``<label>.heatmap.tif``, 8-bit RGBA colour-mapped (what OpenSlide and the
viewers display), and ``<label>.values.tif``, float32 values with NaN where nothing was
computed (for analysis in tifffile, QuPath or Python; OpenSlide does not decode float samples).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from engine.colormaps import lut_indices, lut_rgba
from engine.errors import ResultsError
from engine.geometry import Box, MapGeometry
from engine.io import atomic
from engine.io.paths import file_parts, is_safe_name, safe_child

TILE = 256


#: Layers whose values are shares in [0, 1] (class probabilities, the tissue mask): their TIFFs
#: span 0..1. Every other layer's (saliency, attention) spans 0 to its maximum.
UNIT_RANGE_LAYERS = ("prediction", "tissue")

def registered_levels(slide_l0_size: tuple[int, int], cell_l0: tuple[float, float], *,
                      tile: int = TILE) -> list[tuple[int, int, int]]:
    """``[(downsample, width, height), ...]`` of a registered heatmap's pyramid: level 0 covers
    the slide at ``cell_l0`` (width, height) level-0 px per pixel; each next level halves it."""
    w = max(1, math.ceil(slide_l0_size[0] / cell_l0[0]))
    h = max(1, math.ceil(slide_l0_size[1] / cell_l0[1]))
    levels, ds = [(1, w, h)], 1
    while max(-(-w // ds), -(-h // ds)) > tile:
        ds *= 2
        levels.append((ds, -(-w // ds), -(-h // ds)))
    return levels


def resample_registered(values: np.ndarray, grid: MapGeometry, cell_l0: tuple[float, float], downsample: int,
                        size: tuple[int, int]) -> np.ndarray:
    """(height, width) float32 plane of a registered level: each pixel the map cell under its
    centre, NaN off the map."""
    width, height = size
    xs = (np.arange(width) + 0.5) * (cell_l0[0] * downsample)
    ys = (np.arange(height) + 0.5) * (cell_l0[1] * downsample)
    cols = np.floor(grid.l0_to_map_xy(np.column_stack([xs, np.zeros_like(xs)]))[:, 0]).astype(np.int64)
    rows = np.floor(grid.l0_to_map_xy(np.column_stack([np.zeros_like(ys), ys]))[:, 1]).astype(np.int64)
    h, w = grid.shape
    col_ok, row_ok = (cols >= 0) & (cols < w), (rows >= 0) & (rows < h)
    out = np.full((height, width), np.nan, np.float32)
    out[np.ix_(row_ok, col_ok)] = np.asarray(values, np.float32)[np.ix_(rows[row_ok], cols[col_ok])]
    return out


def colour_rgba(plane: np.ndarray, colormap: str, vmin: float, vmax: float) -> np.ndarray:
    """(h, w, 4) uint8 RGBA, NaN cells fully transparent (and black, so premultiplied readers agree)."""
    rgba = lut_rgba(colormap)[lut_indices(plane, vmin, vmax)]
    rgba[np.isnan(plane)] = 0
    return np.ascontiguousarray(rgba)


def registered_tiff_fill(values: np.ndarray, map_l0_box, slide_l0_size: tuple[int, int], slide_mpp: float | None, *,
                         rgba: tuple[str, float, float] | None = None, tile: int = TILE) -> atomic.Fill:
    """The content of one registered pyramid of the (h, w) map ``values`` covering
    ``map_l0_box``, as an :mod:`engine.io.atomic` fill (so a caller can stage it with the other
    files of a result and replace them together).

    ``rgba=(colormap, vmin, vmax)`` writes the colour-mapped RGBA version, else float32 values.
    ``slide_mpp`` (µm per level-0 px) fills the resolution tags; None leaves them out.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"a registered heatmap needs one (h, w) map plane, got shape {values.shape}")
    grid = MapGeometry(Box.of(map_l0_box), tuple(values.shape))
    cell = grid.l0_cell
    levels = registered_levels(slide_l0_size, cell, tile=tile)

    def fill(f) -> None:
        bigtiff = levels[0][1] * levels[0][2] * 4 * 4 / 3 > 2**31
        with tifffile.TiffWriter(f, bigtiff=bigtiff) as tw:
            for k, (ds, w, h) in enumerate(levels):
                plane = resample_registered(values, grid, cell, ds, (w, h))
                extra = {}
                if slide_mpp:
                    um = (slide_mpp * cell[0] * ds, slide_mpp * cell[1] * ds)
                    extra = {"resolution": (1e4 / um[0], 1e4 / um[1]), "resolutionunit": "CENTIMETER"}
                if rgba is not None:
                    data = colour_rgba(plane, *rgba)
                    extra.update(photometric="rgb", extrasamples=("UNASSALPHA",))
                else:
                    data = plane
                    extra.update(photometric="minisblack")
                tw.write(data, tile=(tile, tile), compression="zlib", subfiletype=1 if k else 0,
                         metadata=None, **extra)

    return fill


def write_registered_tiff(path: str | os.PathLike, values: np.ndarray, map_l0_box, slide_l0_size: tuple[int, int],
                          slide_mpp: float | None, *, rgba: tuple[str, float, float] | None = None,
                          tile: int = TILE) -> Path:
    """Write one registered pyramid (see :func:`registered_tiff_fill`) to ``path`` atomically."""
    return atomic.write_with(path, registered_tiff_fill(values, map_l0_box, slide_l0_size, slide_mpp, rgba=rgba, tile=tile))


#: The two files of a plane: (kind, file-name suffix); ``heatmap`` is RGBA, ``values`` float32.
KINDS = (("heatmap", ".heatmap.tif"), ("values", ".values.tif"))


@dataclass(frozen=True)
class RegisteredFile:
    """One registered TIFF to write: its file name, what it shows, and its content."""

    file_name: str
    layer: str
    class_name: str | None
    kind: str  # "heatmap" or "values"
    fill: atomic.Fill

    @property
    def output_kind(self) -> str:
        """The ``{kind: path}`` key: ``saliency_heatmap_tiff``, ``prediction_tumour_values_tiff``."""
        return self.file_name.removesuffix(".tif").replace(".", "_") + "_tiff"


def registered_files(layers: dict, slide_l0_size: tuple[int, int], slide_mpp: float | None, *,
                     classes: tuple[str, ...] = (), colormap: str = "viridis") -> list[RegisteredFile]:
    """The RGBA and float32 registered TIFFs of every plane of every layer (an
    :class:`engine.io.maps.MapLayer`-like object with ``values`` (K, h, w) or (h, w) and
    ``l0_box``). File names: ``<layer>.<kind>.tif`` or ``<layer>_<class>.<kind>.tif``, the class
    part from :func:`engine.io.paths.file_parts` (an index unless every class name is plainly
    safe); the prediction and the tissue mask are coloured over [0, 1], other layers over [0, their largest value]."""
    files = []
    for name, layer in layers.items():
        if not is_safe_name(name):
            raise ResultsError(f"refused to write a map layer named {name!r}: layer names must be plain names")
        values = np.asarray(layer.values, np.float32)
        if values.ndim == 2:
            planes = [(name, None, values)]
        else:
            names = [classes[k] if k < len(classes) else str(k) for k in range(values.shape[0])]
            planes = [(f"{name}_{part}", names[k], values[k]) for k, part in enumerate(file_parts(names))]
        for label, cls, plane in planes:
            finite = np.isfinite(plane)
            hi = 1.0 if name in UNIT_RANGE_LAYERS else float(np.max(plane[finite])) if finite.any() else 1.0
            rgba = (colormap, 0.0, hi if hi > 0 else 1.0)
            for kind, suffix in KINDS:
                fill = registered_tiff_fill(plane, layer.l0_box, slide_l0_size, slide_mpp,
                                            rgba=rgba if kind == "heatmap" else None)
                files.append(RegisteredFile(f"{label}{suffix}", name, cls, kind, fill))
    return files


def slide_extent(slide_path: str | os.PathLike | None, l0_boxes) -> tuple[tuple[int, int], str]:
    """The level-0 size a registered heatmap spans: the slide's (``"slide"``), read from its
    header, or, when the slide cannot be opened, the smallest extent holding every map box
    (``"maps"``: still registered at the origin, only missing the slide's far margins)."""
    if slide_path:
        from engine.errors import SlideError
        from engine.slides import open_slide

        try:
            with open_slide(slide_path) as slide:
                return tuple(int(v) for v in slide.dimensions), "slide"
        except (SlideError, OSError):
            pass
    boxes = [Box.of(b) for b in l0_boxes]
    return (max(1, math.ceil(max(b.x1 for b in boxes))), max(1, math.ceil(max(b.y1 for b in boxes)))), "maps"


def write_registered_heatmaps(out_dir: str | os.PathLike, layers: dict, slide_l0_size: tuple[int, int],
                              slide_mpp: float | None, *, classes: tuple[str, ...] = (),
                              colormap: str = "viridis") -> dict[str, str]:
    """Write :func:`registered_files` into ``out_dir`` (all staged, then moved into place
    together); returns ``{kind: path}`` with kinds ``<label>_heatmap_tiff`` and
    ``<label>_values_tiff`` (labels as in maps.npz: ``saliency``, ``prediction_<class>``)."""
    out = atomic.make_folder(out_dir)
    files = registered_files(layers, slide_l0_size, slide_mpp, classes=classes, colormap=colormap)
    atomic.replace_together([(safe_child(out, f.file_name), f.fill) for f in files])
    return {f.output_kind: str(safe_child(out, f.file_name)) for f in files}
