"""Each input's mask on the trunk's output grid: the cells its head pools over (training, validation,
evaluation).

A mask comes from one of two sources. A slide with an annotation file (the labels CSV's
``annotations`` column) pools over the area of its ``include_classes`` annotations (none named:
all) less its ``exclude_classes``, rasterised from level-0 coordinates through the input's
:class:`~engine.train.data.Placement`. Otherwise, with ``tissue_mask`` "auto", the slide's tissue
is the one inference finds: detected once per slide on its thumbnail
(:func:`engine.slides.tissue.slide_tissue`, with the run's ``tissue_params``), then carried onto
the trunk's grid over the input's level-0 box by area; the input's padding (background around a
small slide) and everything outside the slide is no tissue. "none" gives no mask.

The augmented input's grid is anchored at its own pixel (0, 0). Each of its cells is a rectangle
of the unaugmented input (a flip or a quarter turn maps rectangles onto rectangles), so the
cells are found on the unaugmented input's plane, where the grid starts at the far edge of an
axis the augmentation reverses, and turned with the input's own augmentation
(:func:`engine.train.data.oriented`): exact for every flip and quarter turn. Annotation masks
are rasterised on a thumbnail of the input and turned the same way. A cell is in when at least
:data:`~engine.slides.tissue.MIN_CELL_TISSUE` of it is.

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
from engine.slides.tissue import MIN_CELL_TISSUE, TissueMask, TissueParams, coverage_on_grid, slide_tissue
from engine.train.data import Augmentation, Placement, oriented

#: ``grid(in_hw) -> (out_hw, stride)``: the trunk's output size and stride (rows, cols) for an input.
TrunkGrid = Callable[[tuple[int, int]], tuple[tuple[int, int], tuple[int, int]]]


def thumbnail_step(in_hw: tuple[int, int], thumb_px: int) -> int:
    """Every how many input pixels a thumbnail of at most ``thumb_px`` per side takes one."""
    return max(1, math.ceil(max(in_hw) / thumb_px))


def cells_from_thumbnail(th_values: np.ndarray, in_hw: tuple[int, int], aug: Augmentation, grid: TrunkGrid,
                         min_fraction: float = MIN_CELL_TISSUE) -> np.ndarray:
    """(h, w) bool on the trunk's grid of the augmented input: cells at least ``min_fraction``
    covered by ``th_values`` (bool or coverage in [0, 1]) spanning the unaugmented input."""
    th = oriented(th_values, aug)
    h_in, w_in = in_hw if aug.rot90 % 2 == 0 else in_hw[::-1]
    out_hw, stride = grid((h_in, w_in))
    cells = MapGeometry(Box(0, 0, out_hw[1] * stride[1], out_hw[0] * stride[0]), out_hw)
    return coverage_on_grid(np.ascontiguousarray(th), Box(0, 0, w_in, h_in), cells) >= min_fraction


def _axes_of(aug: Augmentation) -> tuple[tuple[int, bool], tuple[int, bool]]:
    """For each axis (rows, cols) of the augmented input: the unaugmented input's axis it runs
    along and whether it runs backwards, read off :func:`oriented` itself."""
    probe = oriented(np.arange(4).reshape(2, 2), aug)
    axes = []
    for step in (probe[1, 0], probe[0, 1]):
        (r0, c0), (r1, c1) = divmod(int(probe[0, 0]), 2), divmod(int(step), 2)
        axes.append((0, r1 < r0) if r1 != r0 else (1, c1 < c0))
    return axes[0], axes[1]


def tissue_cells(tissue: TissueMask, placement: Placement, aug: Augmentation, grid: TrunkGrid,
                 min_fraction: float = MIN_CELL_TISSUE) -> np.ndarray:
    """(h, w) bool on the trunk's grid of the augmented input placed at ``placement``: the cells
    of the slide's ``tissue`` (:meth:`TissueMask.on_grid`, as inference), inside the pixels read."""
    in_hw = (placement.height, placement.width)
    aug_hw = in_hw if aug.rot90 % 2 == 0 else in_hw[::-1]
    out_hw, stride = grid(aug_hw)
    n, size, start = [0, 0], [0, 0], [0, 0]  # per axis of the unaugmented input
    for aug_axis, (axis, backwards) in enumerate(_axes_of(aug)):
        n[axis], size[axis] = out_hw[aug_axis], stride[aug_axis]
        # A reversed axis's first cell starts at the input's far edge; its last may reach before pixel 0.
        start[axis] = in_hw[axis] - n[axis] * size[axis] if backwards else 0
    in_box = Box(start[1], start[0], start[1] + n[1] * size[1], start[0] + n[0] * size[0])
    cells = tissue.on_grid(MapGeometry(placement.in_to_l0(in_box), (n[0], n[1])), min_fraction=min_fraction,
                           l0_within=placement.l0_read_box)
    return np.ascontiguousarray(oriented(cells, aug))


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

    @staticmethod
    def used_by(spec, records) -> bool:
        """Whether a training run of ``spec`` over ``records`` pools over masks: tissue masks
        ("auto"), or a slide with an annotations file."""
        return spec.tissue_mask == "auto" or any(r.annotations is not None for r in records)

    def __call__(self, record: SlideRecord, rgb: np.ndarray, placement: Placement | None,
                 aug: Augmentation) -> torch.Tensor | None:
        """(1, 1, h, w) bool mask of ``rgb`` (the unaugmented input) seen through ``aug``, or None."""
        in_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        if record.annotations is None and self.mode != "auto":
            return None
        if placement is None:
            raise ValueError("a tissue or annotation mask needs the input's placement on the slide")
        if record.annotations is not None:
            th = self.annotation_thumbnail(record, placement, in_hw)
            cells = cells_from_thumbnail(th, in_hw, aug, self.grid)
            what = f"its annotations ({record.annotations.name}) cover"
        else:
            cells = tissue_cells(slide_tissue(record.path, self.params), placement, aug, self.grid)
            what = "its detected tissue covers"
        if not cells.any():
            self._warn(record, f"{record.path.name}: {what} no cell of the model's map; "
                               "this slide is pooled over its whole input")
            return None
        return torch.from_numpy(cells)[None, None]

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
