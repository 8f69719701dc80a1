"""A slide region as a lazily read, normalised network input; and the tissue bounding box.

Torch-free at import so the viewer can use :func:`tissue_box`; the tensor work happens in
:class:`SlideRegionSource.read`, which only the engine's workers call.
"""

from __future__ import annotations

import numpy as np

from engine.errors import RegionError
from engine.geometry import Box, LevelRegion, l0_to_lv_covering
from engine.slides.source import SlideSource, to_rgb


def level_region(slide: SlideSource, level: int, l0_box: Box | tuple[float, float, float, float]) -> LevelRegion:
    """The level-``level`` pixels covering ``l0_box`` (rounded outward), clipped to the level."""
    if not 0 <= level < slide.level_count:
        raise RegionError(f"{slide.path}: level {level} does not exist; the slide has levels 0..{slide.level_count - 1}")
    l0_box = Box.of(l0_box)
    ds = slide.level_downsamples[level]
    lv_box = l0_to_lv_covering(l0_box, ds).intersect(Box(0, 0, *slide.level_dimensions[level]))
    if lv_box.is_empty:
        raise RegionError(f"{slide.path}: the region {l0_box.as_tuple()} (level 0) lies outside the slide "
                          f"({slide.dimensions[0]}x{slide.dimensions[1]})")
    return LevelRegion(level, ds, int(lv_box.x0), int(lv_box.y0), int(lv_box.width), int(lv_box.height))


def choose_level(slide: SlideSource, *, level: int | None, mpp: float | None, fallback_level: int | None) -> int:
    """The pyramid level to read: given, else the finest level not coarser than ``mpp``."""
    if level is not None:
        return level
    if mpp is not None and slide.mpp is not None:
        return slide.get_best_level_for_downsample(mpp / slide.mpp[0])
    return fallback_level or 0


def tissue_box(slide: SlideSource, *, thumb_px: int = 1024, margin: float = 0.02) -> Box:
    """Level-0 bounding box of the tissue, found on a thumbnail (saturated or dark pixels).

    Falls back to the whole slide when nothing looks like tissue (e.g. a grey test image).
    """
    thumb = slide.thumbnail(thumb_px).astype(np.int16)
    spread = thumb.max(axis=2) - thumb.min(axis=2)  # saturation without a colour-space conversion
    mask = (spread > 20) | (thumb.mean(axis=2) < 200)
    w, h = slide.dimensions
    if not mask.any():
        return Box(0, 0, w, h)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    sx, sy = w / thumb.shape[1], h / thumb.shape[0]
    mx, my = margin * w, margin * h
    # The thumbnail's pixels to level 0 (a thumbnail is no pyramid level), widened by the margin.
    return Box(max(0, int(cols[0] * sx - mx)), max(0, int(rows[0] * sy - my)),
               min(w, int((cols[-1] + 1) * sx + mx)), min(h, int((rows[-1] + 1) * sy + my)))


class SlideRegionSource:
    """A :class:`~engine.streaming.RegionSource` over a slide region: tiles read on demand.

    ``read(rows, cols)`` takes rows/cols relative to the region (level plane) and returns a
    (1, 3, h, w) float tensor normalised with ``(rgb / 255 - mean) / std``.
    """

    def __init__(self, slide: SlideSource, region: LevelRegion, mean, std, dtype=None):
        import torch

        self.slide, self.region = slide, region
        self.shape = (1, 3, region.lv_h, region.lv_w)
        self.dtype = dtype or torch.float32
        self._mean = torch.tensor(mean, dtype=self.dtype).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=self.dtype).view(1, 3, 1, 1)

    def read(self, rows: tuple[int, int], cols: tuple[int, int]):
        import torch

        l0_x, l0_y = self.region.l0_read_origin(cols[0], rows[0])
        rgb = to_rgb(self.slide.read_region(l0_x, l0_y, self.region.level, cols[1] - cols[0], rows[1] - rows[0]),
                     self.slide.background_rgb)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self.dtype) / 255.0
        return (x - self._mean) / self._std
