"""The display pyramid: a slide's real levels, plus virtual levels beyond the coarsest.

A slide without coarse levels (a single-level SVS, a generic tiled TIFF) would otherwise be
painted zoomed out from full-resolution tiles: at 25 % zoom the UI thread scaled 16 level-0
pixels into every screen pixel, up to 300 ms a paint on CMU-1-Small-Region.svs. Virtual
levels halve the coarsest real level until it is a few tiles across. A tile worker makes their
tiles by area-averaging a region of that real level; they are then cached, pinned and painted
like real tiles, so the UI thread only draws tiles of roughly screen resolution. This module
only decides the levels, from the slide's level sizes; :mod:`viewer.workers.tiles` reads them.

Planes: ``l0_`` level-0 pixels, ``lv_`` pixels of a display level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

#: Virtual levels stop once the coarsest level's long side is at most this (4 tiles): a
#: level that small costs a few milliseconds to paint however far the view zooms out, and
#: stopping there leaves real pyramids (whose coarsest level is usually this small) as they are.
VIRTUAL_STOP_PX = 1024
#: A coarsest real level larger than this gets no virtual levels: making their tiles reads
#: all of it (about 8 s of decoding on one reader here at this size), and such an image is
#: too large to show zoomed out either way.
VIRTUAL_SOURCE_MAX_PIXELS = 2**28


class LevelSizes(Protocol):
    """What the levels are decided from: a slide's level sizes (``engine.slides.SlideSource`` has them)."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]


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
    def of(cls, source: LevelSizes) -> "DisplayPyramid":
        levels = [
            DisplayLevel(w, h, ds, level)
            for level, ((w, h), ds) in enumerate(zip(source.level_dimensions, source.level_downsamples, strict=True))
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
