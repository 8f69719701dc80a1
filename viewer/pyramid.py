"""The display pyramid: a slide's real levels, plus virtual levels beyond the coarsest.

A slide without coarse levels (a single-level SVS, a generic tiled TIFF) would otherwise be
painted zoomed out from full-resolution tiles: at 25 % zoom the UI thread scaled 16 level-0
pixels into every screen pixel, up to 300 ms a paint on CMU-1-Small-Region.svs. Virtual
levels halve the coarsest real level until it is a few tiles across. A tile worker makes their
tiles by area-averaging a region of that real level (:func:`read_virtual_region`); they are
then cached, pinned and painted like real tiles, so the UI thread only draws tiles of roughly
screen resolution. Qt-free, like ``engine.geometry``.

Planes: ``l0_`` level-0 pixels, ``lv_`` pixels of a display level, ``src_`` pixels of the
real level a virtual level is made from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.geometry import Box
from engine.slides import SlideSource, to_rgb

#: Virtual levels stop once the coarsest level's long side is at most this (4 tiles): a
#: level that small costs a few milliseconds to paint however far the view zooms out, and
#: stopping there leaves real pyramids (whose coarsest level is usually this small) as they are.
VIRTUAL_STOP_PX = 1024
#: A coarsest real level larger than this gets no virtual levels: making their tiles reads
#: all of it (about 8 s of decoding on one reader here at this size), and such an image is
#: too large to show zoomed out either way.
VIRTUAL_SOURCE_MAX_PIXELS = 2**28
#: Source rows read per chunk when making a virtual tile, so a large factor never asks the
#: slide for one huge region (``read_region`` caps bytes, and OpenSlide allocates up front).
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class DisplayLevel:
    """One level the view can paint. ``factor`` is source-level pixels per ``lv_`` pixel:
    1 for a real level, 2, 4, ... for a virtual one made from ``source_level``."""

    lv_width: int
    lv_height: int
    downsample: float  # level-0 pixels per lv pixel
    source_level: int
    factor: int = 1

    @property
    def is_virtual(self) -> bool:
        return self.factor > 1


@dataclass(frozen=True)
class DisplayPyramid:
    """The real levels of a slide (same indices as the source's) followed by its virtual ones."""

    levels: tuple[DisplayLevel, ...]

    @classmethod
    def of(cls, source: SlideSource) -> "DisplayPyramid":
        levels = [
            DisplayLevel(w, h, ds, level)
            for level, ((w, h), ds) in enumerate(zip(source.level_dimensions, source.level_downsamples))
        ]
        coarsest = levels[-1]
        if coarsest.lv_width * coarsest.lv_height <= VIRTUAL_SOURCE_MAX_PIXELS:
            factor = 2
            while max(levels[-1].lv_width, levels[-1].lv_height) > VIRTUAL_STOP_PX:
                levels.append(
                    DisplayLevel(
                        math.ceil(coarsest.lv_width / factor),
                        math.ceil(coarsest.lv_height / factor),
                        coarsest.downsample * factor,
                        coarsest.source_level,
                        factor,
                    )
                )
                factor *= 2
        return cls(tuple(levels))

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> DisplayLevel:
        return self.levels[index]

    @property
    def coarsest(self) -> int:
        return len(self.levels) - 1

    def best_level_for_downsample(self, downsample: float) -> int:
        """The finest level whose downsample is not above ``downsample`` (OpenSlide's rule,
        over real and virtual levels alike)."""
        best = 0
        for index, level in enumerate(self.levels):
            if level.downsample <= downsample * (1 + 1e-9):
                best = index
        return best


def area_average(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of an (H, W, 3) uint8 image; a partial block
    at the right or bottom edge is the mean of the pixels it has. Returns
    (ceil(H / factor), ceil(W / factor), 3) uint8.

    PIL's ``reduce`` is this box filter in C, several times faster than numpy sums here.
    """
    return np.asarray(Image.fromarray(rgb).reduce(factor))


def read_virtual_region(source: SlideSource, level: DisplayLevel, lv_box: Box) -> np.ndarray:
    """The RGB uint8 pixels of ``lv_box`` (integer corners, inside ``level``) of a virtual
    level: the matching region of its source level, read in row chunks and area-averaged.

    Call it on a worker: it reads ``factor**2`` times the pixels it returns."""
    src_w, src_h = source.level_dimensions[level.source_level]
    src_ds = source.level_downsamples[level.source_level]
    f = level.factor
    src_x0, src_y0 = int(lv_box.x0) * f, int(lv_box.y0) * f
    src_x1, src_y1 = min(int(lv_box.x1) * f, src_w), min(int(lv_box.y1) * f, src_h)
    rows_per_chunk = max(1, CHUNK_ROWS // f) * f  # whole blocks per chunk: no block is split
    parts = []
    for src_y in range(src_y0, src_y1, rows_per_chunk):
        rows = min(rows_per_chunk, src_y1 - src_y)
        l0_x = min(round(src_x0 * src_ds), source.dimensions[0] - 1)
        l0_y = min(round(src_y * src_ds), source.dimensions[1] - 1)
        region = source.read_region(l0_x, l0_y, level.source_level, src_x1 - src_x0, rows)
        parts.append(area_average(to_rgb(region, source.background_rgb), f))
    return np.ascontiguousarray(np.concatenate(parts)) if len(parts) > 1 else parts[0]
