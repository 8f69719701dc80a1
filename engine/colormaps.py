"""The one colour-mapping of float maps (pure numpy; worker threads, the CLI, exported files).

A map value becomes a colour in two steps, shared by everything that draws a map: scale
``[vmin, vmax]`` linearly onto a 256-entry table and clip (:func:`lut_indices`), then look the
index up in the named table. NaN cells (never computed) and cells below a threshold are
*hidden*: transparent where the output has alpha, ``hidden_rgb`` where it has not.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.colormap_tables import TABLES_HEX

#: Perceptually uniform sequential maps, then diverging ones (CET-D1: blue-white-red,
#: CET-D1A: its darker variant).
SEQUENTIAL = ("viridis", "magma", "inferno", "plasma", "cividis")
DIVERGING = ("CET-D1", "CET-D1A")
COLORMAPS = SEQUENTIAL + DIVERGING
LUT_SIZE = 256


@lru_cache(maxsize=None)
def lut_rgba(name: str) -> np.ndarray:
    """(LUT_SIZE, 4) uint8 RGBA of the named colour map, opaque (read-only; shared between threads)."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    rgb = np.frombuffer(bytes.fromhex("".join(TABLES_HEX[name])), dtype=np.uint8).reshape(LUT_SIZE, 3)
    lut = np.concatenate([rgb, np.full((LUT_SIZE, 1), 255, np.uint8)], axis=1)
    lut.setflags(write=False)
    return lut


@lru_cache(maxsize=None)
def lut_bgra(name: str) -> np.ndarray:
    """The same table in B, G, R, A order: what ``QImage.Format_ARGB32_Premultiplied`` holds in
    memory on a little-endian machine (opaque entries, so premultiplying changes nothing)."""
    lut = lut_rgba(name)[:, [2, 1, 0, 3]].copy()
    lut.setflags(write=False)
    return lut


def lut_indices(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """LUT indices (uint8) of float ``values`` scaled linearly from [vmin, vmax] and clipped."""
    span = vmax - vmin if vmax != vmin else 1.0
    scaled = (np.nan_to_num(values, nan=vmin) - vmin) * ((LUT_SIZE - 1) / span)
    return np.clip(scaled + 0.5, 0, LUT_SIZE - 1).astype(np.uint8)


def hidden_cells(values: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """True where a cell is not drawn: NaN (not computed) or below ``threshold``."""
    hidden = np.isnan(values)
    if threshold is not None:
        hidden |= values < threshold
    return hidden


def colorize_bgra(values: np.ndarray, name: str, vmin: float, vmax: float,
                  threshold: float | None = None) -> np.ndarray:
    """(h, w) float -> (h, w, 4) uint8 premultiplied BGRA, C-contiguous; hidden cells all zero."""
    bgra = lut_bgra(name)[lut_indices(values, vmin, vmax)]
    bgra[hidden_cells(values, threshold)] = 0
    return bgra


def colorize_rgb(values: np.ndarray, name: str, vmin: float, vmax: float, *,
                 threshold: float | None = None, hidden_rgb: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """(h, w) float -> (h, w, 3) uint8 RGB, for files without alpha; hidden cells ``hidden_rgb``."""
    rgb = lut_rgba(name)[lut_indices(values, vmin, vmax), :3]
    rgb[hidden_cells(values, threshold)] = hidden_rgb
    return np.ascontiguousarray(rgb)
