"""A slide region as a lazily read, normalised network input; and the tissue bounding box.

Torch-free at import so the viewer can use :func:`tissue_box`; the tensor work happens in
:class:`SlideRegionSource.read`, which only the engine's workers call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import RegionError
from engine.slides.source import SlideSource, to_rgb


@dataclass(frozen=True)
class LevelRegion:
    """A region of one pyramid level: ``lv_x0, lv_y0`` (level plane) and size in level pixels."""

    level: int
    downsample: float
    lv_x0: int
    lv_y0: int
    lv_w: int
    lv_h: int

    @property
    def l0_box(self) -> tuple[float, float, float, float]:
        ds = self.downsample
        return (self.lv_x0 * ds, self.lv_y0 * ds, (self.lv_x0 + self.lv_w) * ds, (self.lv_y0 + self.lv_h) * ds)

    def lv_to_l0_box(self, lv_x0: float, lv_y0: float, lv_x1: float, lv_y1: float) -> tuple[float, float, float, float]:
        """A box given relative to this region's origin (level pixels) on the level-0 plane."""
        ds = self.downsample
        return ((self.lv_x0 + lv_x0) * ds, (self.lv_y0 + lv_y0) * ds,
                (self.lv_x0 + lv_x1) * ds, (self.lv_y0 + lv_y1) * ds)


def level_region(slide: SlideSource, level: int, l0_box: tuple[int, int, int, int]) -> LevelRegion:
    """The level-``level`` pixels covering ``l0_box``, clipped to the level."""
    if not 0 <= level < slide.level_count:
        raise RegionError(f"{slide.path}: level {level} does not exist; the slide has levels 0..{slide.level_count - 1}")
    ds = slide.level_downsamples[level]
    lv_w_all, lv_h_all = slide.level_dimensions[level]
    x0, y0, x1, y1 = l0_box
    lv_x0, lv_y0 = max(0, int(x0 // ds)), max(0, int(y0 // ds))
    lv_x1, lv_y1 = min(lv_w_all, int(-(-x1 // ds))), min(lv_h_all, int(-(-y1 // ds)))
    if lv_x1 <= lv_x0 or lv_y1 <= lv_y0:
        raise RegionError(f"{slide.path}: the region {l0_box} (level 0) lies outside the slide "
                          f"({slide.dimensions[0]}x{slide.dimensions[1]})")
    return LevelRegion(level, ds, lv_x0, lv_y0, lv_x1 - lv_x0, lv_y1 - lv_y0)


def choose_level(slide: SlideSource, *, level: int | None, mpp: float | None, fallback_level: int | None) -> int:
    """The pyramid level to read: given, else the finest level not coarser than ``mpp``."""
    if level is not None:
        return level
    if mpp is not None and slide.mpp is not None:
        return slide.get_best_level_for_downsample(mpp / slide.mpp[0])
    return fallback_level or 0


def tissue_box(slide: SlideSource, *, thumb_px: int = 1024, margin: float = 0.02) -> tuple[int, int, int, int]:
    """Level-0 bounding box of the tissue, found on a thumbnail (saturated or dark pixels).

    Falls back to the whole slide when nothing looks like tissue (e.g. a grey test image).
    """
    thumb = slide.thumbnail(thumb_px).astype(np.int16)
    spread = thumb.max(axis=2) - thumb.min(axis=2)  # saturation without a colour-space conversion
    mask = (spread > 20) | (thumb.mean(axis=2) < 200)
    w, h = slide.dimensions
    if not mask.any():
        return 0, 0, w, h
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    sx, sy = w / thumb.shape[1], h / thumb.shape[0]
    mx, my = margin * w, margin * h
    return (max(0, int(cols[0] * sx - mx)), max(0, int(rows[0] * sy - my)),
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

        r = self.region
        l0_x = int(round((r.lv_x0 + cols[0]) * r.downsample))
        l0_y = int(round((r.lv_y0 + rows[0]) * r.downsample))
        rgb = to_rgb(self.slide.read_region(l0_x, l0_y, r.level, cols[1] - cols[0], rows[1] - rows[0]),
                     self.slide.background_rgb)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self.dtype) / 255.0
        return (x - self._mean) / self._std
