"""Each input's mask on the trunk's output grid: the cells its head pools over (training, validation,
evaluation).

A mask comes from one of two sources. A slide with an annotation file (the labels CSV's
``annotations`` column) pools over the area of its ``include_classes`` annotations (none named:
all) less its ``exclude_classes``, rasterised from level-0 coordinates through the input's
:class:`~engine.train.data.Placement`. Otherwise, with ``tissue_mask`` "auto", the tissue is
detected (:func:`engine.slides.tissue.detect_tissue_rgb`) on a thumbnail of the very pixels the
network reads; "none" gives no mask.

Planes: ``in_`` the input's pixels before augmentation, ``th_`` a thumbnail image spanning the
same extent. The thumbnail mask is turned with the input's augmentation (the same rot90 and flip
of :func:`engine.train.data.oriented`); a thumbnail pixel is a rectangle of the extent, so this
turns the mask exactly as the pixels are turned. It is then carried onto the trunk's grid of the
augmented input by area (:func:`engine.slides.tissue.coverage_on_grid`): a cell is in when at
least :data:`MIN_CELL_FRACTION` of it is.

A mask without any cell (a blank slide, annotations outside the input) has nothing to pool: the
input is then trained on whole, and a :class:`~engine.events.JobWarning` says so, once per slide.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

import numpy as np
import torch

from engine.events import JobWarning
from engine.geometry import Box, MapGeometry
from engine.io.labels import SlideRecord
from engine.slides.tissue import TissueParams, coverage_on_grid, detect_tissue_rgb
from engine.train.data import Augmentation, Placement, oriented

#: Share of a trunk cell that must be tissue (or annotated) for the cell to be pooled.
MIN_CELL_FRACTION = 0.05

#: ``grid(in_hw) -> (out_hw, stride)``: the trunk's output size and stride (rows, cols) for an input.
TrunkGrid = Callable[[tuple[int, int]], tuple[tuple[int, int], tuple[int, int]]]


def thumbnail_step(in_hw: tuple[int, int], thumb_px: int) -> int:
    """Every how many input pixels a thumbnail of at most ``thumb_px`` per side takes one."""
    return max(1, math.ceil(max(in_hw) / thumb_px))


def cells_from_thumbnail(th_values: np.ndarray, in_hw: tuple[int, int], aug: Augmentation, grid: TrunkGrid,
                         min_fraction: float = MIN_CELL_FRACTION) -> np.ndarray:
    """(h, w) bool on the trunk's grid of the augmented input: cells at least ``min_fraction``
    covered by ``th_values`` (bool or coverage in [0, 1]) spanning the unaugmented input."""
    th = oriented(th_values, aug)
    h_in, w_in = in_hw if aug.rot90 % 2 == 0 else in_hw[::-1]
    out_hw, stride = grid((h_in, w_in))
    cells = MapGeometry(Box(0, 0, out_hw[1] * stride[1], out_hw[0] * stride[0]), out_hw)
    return coverage_on_grid(np.ascontiguousarray(th), Box(0, 0, w_in, h_in), cells) >= min_fraction


class SlideMasks:
    """The masks of the inputs of one run. ``mode`` "auto" or "none" (the spec's ``tissue_mask``);
    ``include``/``exclude`` the annotation classes; ``emit`` receives the warnings (it may be
    called from the slide-reading thread)."""

    def __init__(self, mode: str, params: dict, grid: TrunkGrid, *, include=(), exclude=(),
                 emit: Callable[[object], None] | None = None):
        self.mode, self.params, self.grid = mode, TissueParams(**params), grid
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.emit = emit
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, record: SlideRecord, rgb: np.ndarray, placement: Placement | None,
                 aug: Augmentation) -> torch.Tensor | None:
        """(1, 1, h, w) bool mask of ``rgb`` (the unaugmented input) seen through ``aug``, or None."""
        in_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        if record.annotations is not None:
            if placement is None:
                raise ValueError("an annotation mask needs the input's placement on the slide")
            th = self.annotation_thumbnail(record, placement, in_hw)
            what = f"its annotations ({record.annotations.name})"
        elif self.mode == "auto":
            th = self.tissue_thumbnail(rgb)
            what = "no tissue was detected"
        else:
            return None
        cells = cells_from_thumbnail(th, in_hw, aug, self.grid)
        if not cells.any():
            self._warn(record, f"{record.path.name}: {what} cover no cell of the model's map; "
                               "this slide is pooled over its whole input")
            return None
        return torch.from_numpy(cells)[None, None]

    def tissue_thumbnail(self, rgb: np.ndarray) -> np.ndarray:
        step = thumbnail_step(rgb.shape[:2], self.params.thumb_px)
        return detect_tissue_rgb(np.ascontiguousarray(rgb[::step, ::step]), self.params)

    def annotation_thumbnail(self, record: SlideRecord, placement: Placement, in_hw: tuple[int, int]) -> np.ndarray:
        """Coverage in [0, 1] of each thumbnail pixel of the input by the included, not excluded, areas."""
        from engine.annotations import load_annotations, mask_from_annotations

        annotations = load_annotations(record.annotations).annotations
        step = thumbnail_step(in_hw, self.params.thumb_px)
        th_hw = (math.ceil(in_hw[0] / step), math.ceil(in_hw[1] / step))
        grid = MapGeometry(placement.l0_box, th_hw)
        return mask_from_annotations(annotations, grid, self.include or None, self.exclude, coverage=True)

    def _warn(self, record: SlideRecord, message: str) -> None:
        with self._lock:
            if str(record.path) in self._warned:
                return
            self._warned.add(str(record.path))
        if self.emit is not None:
            self.emit(JobWarning(message, str(record.path)))
