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
from pathlib import Path

import numpy as np
import tifffile

from engine.colormaps import lut_indices, lut_rgba
from engine.geometry import Box, MapGeometry
from engine.io import atomic

TILE = 256


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


def write_registered_tiff(path: str | os.PathLike, values: np.ndarray, map_l0_box, slide_l0_size: tuple[int, int],
                          slide_mpp: float | None, *, rgba: tuple[str, float, float] | None = None,
                          tile: int = TILE) -> Path:
    """Write one registered pyramid of the (h, w) map ``values`` covering ``map_l0_box``.

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

    return atomic.write_with(path, fill)


def write_registered_heatmaps(out_dir: str | os.PathLike, layers: dict, slide_l0_size: tuple[int, int],
                              slide_mpp: float | None, *, classes: tuple[str, ...] = (),
                              colormap: str = "viridis") -> dict[str, str]:
    """For each plane of each layer (an :class:`engine.io.maps.MapLayer`-like object with
    ``values`` (K, h, w) or (h, w) and ``l0_box``), the RGBA and the float32 registered TIFFs in
    ``out_dir``; returns ``{kind: path}`` with kinds ``<label>_heatmap_tiff`` and
    ``<label>_values_tiff`` (labels as in maps.npz: ``saliency``, ``prediction_<class>``).

    The prediction is coloured over [0, 1], other layers over [0, their largest value].
    """
    out = atomic.make_folder(out_dir)
    written: dict[str, str] = {}
    for name, layer in layers.items():
        values = np.asarray(layer.values, np.float32)
        planes = [(name, values)] if values.ndim == 2 else [
            (f"{name}_{classes[k] if k < len(classes) else k}", values[k]) for k in range(values.shape[0])]
        for label, plane in planes:
            finite = np.isfinite(plane)
            hi = 1.0 if name == "prediction" else float(np.max(plane[finite])) if finite.any() else 1.0
            rgba_path = out / f"{label}.heatmap.tif"
            write_registered_tiff(rgba_path, plane, layer.l0_box, slide_l0_size, slide_mpp,
                                  rgba=(colormap, 0.0, hi if hi > 0 else 1.0))
            values_path = out / f"{label}.values.tif"
            write_registered_tiff(values_path, plane, layer.l0_box, slide_l0_size, slide_mpp)
            written[f"{label}_heatmap_tiff"] = str(rgba_path)
            written[f"{label}_values_tiff"] = str(values_path)
    return written
