"""Slides held in memory as numpy arrays: plain images, and test and demo slides (torch-free)."""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from engine.errors import SlideOpenError
from engine.geometry import l0_to_lv_origin
from engine.slides.source import DEFAULT_MAX_REGION_BYTES, SlideSource


class ArraySlide(SlideSource):
    """An in-memory slide over numpy arrays, with the same interface as an OpenSlide slide.

    ``levels`` is one ``(H, W, 3|4)`` uint8 array (level 0) or a list of them, finest first;
    ``build_levels`` adds 2x box-filtered levels until the coarsest fits ``min_size`` pixels.
    """

    def __init__(
        self,
        levels: np.ndarray | Sequence[np.ndarray],
        *,
        mpp: float | tuple[float, float] | None = None,
        objective_power: float | None = None,
        path: str = "<array>",
        vendor: str | None = "array",
        properties: dict[str, str] | None = None,
        associated: dict[str, np.ndarray] | None = None,
        build_levels: bool = False,
        min_size: int = 512,
        max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
    ) -> None:
        super().__init__(max_region_bytes=max_region_bytes)
        arrays = [levels] if isinstance(levels, np.ndarray) else list(levels)
        for a in arrays:
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
                raise SlideOpenError(f"{path}: an array slide needs uint8 (H, W, 3|4) arrays, got {a.dtype} {a.shape}")
        if build_levels:
            while max(arrays[-1].shape[:2]) > min_size and min(arrays[-1].shape[:2]) >= 2:
                arrays.append(_halve(arrays[-1]))
        self._levels = [np.ascontiguousarray(a) for a in arrays]
        self.path = path
        h0, w0 = self._levels[0].shape[:2]
        self.dimensions = (w0, h0)
        self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in self._levels)
        self.level_downsamples = tuple((w0 / a.shape[1] + h0 / a.shape[0]) / 2 for a in self._levels)
        if isinstance(mpp, numbers.Real):
            mpp = (float(mpp), float(mpp))
        self.mpp = tuple(mpp) if mpp else None
        self.objective_power = objective_power
        self.vendor = vendor
        self._associated = dict(associated or {})
        self.associated_image_names = tuple(self._associated)
        self.properties = dict(properties or {})

    def _read(self, l0_x, l0_y, level, lv_w, lv_h) -> np.ndarray:
        lv_x, lv_y = l0_to_lv_origin(l0_x, l0_y, self.level_downsamples[level])
        data = self._levels[level]
        out = data[lv_y : lv_y + lv_h, lv_x : lv_x + lv_w]
        if out.shape[:2] != (lv_h, lv_w):  # the half-pixel slack at the far edge
            padded = np.zeros((lv_h, lv_w, data.shape[2]), np.uint8)
            padded[: out.shape[0], : out.shape[1]] = out
            out = padded
        return np.ascontiguousarray(out)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._associated:
            super().associated_image(name)
        img = self._associated[name]
        if img.shape[2] == 4:
            return img
        return np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)

    def _close(self) -> None:
        self._levels = []


def _halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)
