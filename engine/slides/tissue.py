"""Where the tissue is: a mask found on a low-resolution image of the slide (numpy only).

The detector looks at a thumbnail (a few hundred to a thousand pixels across): glass is bright
and grey, H&E tissue is saturated or dark. A pixel is tissue when its saturation (max - min of
R, G, B) is above a threshold, chosen by Otsu's method or fixed, or when it is dark. Holes smaller
than ``max_hole_fraction`` of the image are filled (lumina, fat cells inside a section) and specks
smaller than ``min_speck_fraction`` are removed (dust, debris). The mask is then carried onto any
map grid (the trunk's output cells) by the share of tissue pixels under each cell.

Tissue is detected once per slide, on its thumbnail, whatever then runs on it: training,
validation and evaluation (:mod:`engine.train.masks`) carry the same :class:`TissueMask` onto
the trunk's grid over their input that inference carries onto its grid over the region read
(:func:`slide_tissue` caches it per slide file and parameters). Otsu's threshold depends on the
image it is chosen on: chosen on a crop that is all tissue, it would split the tissue itself.

Planes: ``th_`` pixels of the thumbnail, which spans the slide's whole level-0 extent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.geometry import Box, MapGeometry

METHODS = ("otsu", "saturation")

#: Share of a map cell that must be tissue (or, for training masks, annotated area) for the cell
#: to count: the one threshold of training, evaluation and inference masks.
MIN_CELL_TISSUE = 0.05

#: Slides whose detected tissue :func:`slide_tissue` keeps (a 1024-px thumbnail mask is 1 MB).
TISSUE_CACHE_SLIDES = 32


@dataclass(frozen=True)
class TissueParams:
    """How tissue is told from glass. ``method`` "otsu" picks the saturation threshold per slide
    (never below ``saturation``/2, so a blank slide finds nothing); "saturation" uses
    ``saturation`` as it is. Pixels darker than ``dark`` (mean of R, G, B) count as tissue too
    (haematoxylin-dense or black tissue has little saturation)."""

    method: str = "otsu"
    thumb_px: int = 1024
    saturation: int = 20
    dark: int = 200
    max_hole_fraction: float = 0.001
    min_speck_fraction: float = 0.0002

    def __post_init__(self) -> None:
        from engine.errors import SpecError

        if self.method not in METHODS:
            raise SpecError(f"tissue method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.thumb_px < 16:
            raise SpecError(f"tissue thumb_px must be at least 16, got {self.thumb_px}")
        for name in ("max_hole_fraction", "min_speck_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise SpecError(f"tissue {name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class TissueMask:
    """``th_mask`` (rows, cols) bool over the slide's whole level-0 extent ``l0_box``."""

    th_mask: np.ndarray
    l0_box: Box

    @property
    def fraction(self) -> float:
        """Share of the slide's area that is tissue."""
        return float(self.th_mask.mean()) if self.th_mask.size else 0.0

    def on_grid(self, grid: MapGeometry, *, min_fraction: float = MIN_CELL_TISSUE,
                l0_within: Box | None = None) -> np.ndarray:
        """(h, w) bool on ``grid``: a cell is tissue when at least ``min_fraction`` of its area is.
        ``l0_within``: the part of the slide the network sees (a region read, an input's pixels
        read from the slide); tissue outside it, like everything outside the slide, is none."""
        return coverage_on_grid(self.th_mask, self.l0_box, grid, l0_within) >= max(min_fraction, 1e-9)


def detect_tissue_rgb(rgb: np.ndarray, params: TissueParams = TissueParams()) -> np.ndarray:
    """(h, w) bool tissue mask of an (h, w, 3) uint8 RGB image."""
    img = rgb[..., :3].astype(np.int16)
    sat = (img.max(axis=2) - img.min(axis=2)).astype(np.uint8)
    threshold = params.saturation
    if params.method == "otsu":
        threshold = max(otsu_threshold(sat), params.saturation / 2)
    mask = (sat > threshold) | (img.mean(axis=2) < params.dark)
    area = mask.size
    mask = fill_holes(mask, max_size=int(params.max_hole_fraction * area))
    return remove_small(mask, min_size=int(np.ceil(params.min_speck_fraction * area)))


def detect_tissue(slide, params: TissueParams = TissueParams()) -> TissueMask:
    """The tissue of ``slide`` (an ``engine.slides.SlideSource``), found on its thumbnail."""
    from engine.slides.source import to_rgb

    thumb = to_rgb(slide.thumbnail(params.thumb_px))
    w, h = slide.dimensions
    return TissueMask(detect_tissue_rgb(thumb, params), Box(0, 0, w, h))


_cache: OrderedDict[tuple, TissueMask] = OrderedDict()
_cache_lock = threading.Lock()


def slide_tissue(path: str | Path, params: TissueParams = TissueParams(), slide=None) -> TissueMask:
    """:func:`detect_tissue` of the slide file ``path``, found once per (file, modification time,
    ``params``) and kept for the next input or run of the same slide. Thread-safe (the training
    prefetcher reads slides on its own thread). ``slide``: the slide already open, if it is."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, params)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if slide is not None:
        tissue = detect_tissue(slide, params)
    else:
        from engine.slides import open_slide

        with open_slide(path) as opened:
            tissue = detect_tissue(opened, params)
    with _cache_lock:  # two threads may both have detected it: the same mask either way
        _cache[key] = tissue
        while len(_cache) > TISSUE_CACHE_SLIDES:
            _cache.popitem(last=False)
    return tissue


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 ``values``: the level that maximises the between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a bool image: ``(labels, sizes)``; ``labels`` is 0 outside the
    mask and 1..n inside, ``sizes[k]`` the pixel count of label k (``sizes[0]`` = 0).

    Works on runs of each row (a union-find over runs), so its Python work grows with the
    number of runs, not of pixels.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    run_rows, run_starts = np.nonzero(edges == 1)
    _, run_ends = np.nonzero(edges == -1)  # same order: row-major, one end per start
    n = len(run_rows)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_rows, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_first[r - 1], row_first[r]
        b0, b1 = row_first[r], row_first[r + 1]
        i, j = a0, b0
        while i < a1 and j < b1:  # merge-walk two sorted run lists; 4-connected: runs must share a column
            if run_starts[i] < run_ends[j] and run_starts[j] < run_ends[i]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if run_ends[i] < run_ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    uniq, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros((h, w), np.int32)
    lengths = run_ends - run_starts
    sizes = np.zeros(len(uniq) + 1, np.int64)
    np.add.at(sizes, run_label + 1, lengths)
    # Every pixel of every run, as flat indices, in one vectorised pass.
    first = run_rows * w + run_starts
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.arange(int(lengths.sum())) - offsets + np.repeat(first, lengths)
    labels.ravel()[flat] = np.repeat(run_label + 1, lengths)
    return labels, sizes


def remove_small(mask: np.ndarray, *, min_size: int) -> np.ndarray:
    """``mask`` without its components smaller than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels, sizes = label_components(mask)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray, *, max_size: int) -> np.ndarray:
    """``mask`` with every hole (a background component not touching the border) of at most
    ``max_size`` pixels filled."""
    if max_size <= 0:
        return mask.copy()
    labels, sizes = label_components(~mask)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_size
    fill[border] = False
    fill[0] = False
    return mask | fill[labels]


def coverage_on_grid(th_mask: np.ndarray, th_l0_box: Box, grid: MapGeometry,
                     l0_within: Box | None = None) -> np.ndarray:
    """(h, w) float: the share of each ``grid`` cell's area covered by ``th_mask``, a bool (or
    coverage in [0, 1]) image spanning ``th_l0_box`` (level 0), counting only the part of it
    inside ``l0_within`` (None: all of it). Outside the image and ``l0_within`` nothing is
    covered: a cell half past the slide's edge is at most half tissue. Exact area weighting of
    image pixels against cells along each axis (the weights are separable), so a cell smaller than
    an image pixel takes that pixel's value."""
    (y0, y1), (x0, x1) = (grid.l0_box.y0, grid.l0_box.y1), (grid.l0_box.x0, grid.l0_box.x1)
    within = (y0, y1, x0, x1) if l0_within is None else (l0_within.y0, l0_within.y1, l0_within.x0, l0_within.x1)
    rows = _axis_weights(th_l0_box.y0, th_l0_box.y1, th_mask.shape[0], y0, y1, grid.shape[0], within[:2])
    cols = _axis_weights(th_l0_box.x0, th_l0_box.x1, th_mask.shape[1], x0, x1, grid.shape[1], within[2:])
    covered = rows @ np.asarray(th_mask, dtype=np.float64) @ cols.T
    cell_h, cell_w = (y1 - y0) / grid.shape[0], (x1 - x0) / grid.shape[1]
    return covered / (cell_h * cell_w) if cell_h > 0 and cell_w > 0 else np.zeros(grid.shape)


def _axis_weights(src0: float, src1: float, n_src: int, dst0: float, dst1: float, n_dst: int,
                  within: tuple[float, float]) -> np.ndarray:
    """(n_dst, n_src): the length of overlap (level 0) between each destination cell and source
    pixel, inside ``within`` (lo, hi)."""
    src = np.linspace(src0, src1, n_src + 1)
    dst = np.linspace(dst0, dst1, n_dst + 1)
    lo = np.maximum(np.maximum(dst[:-1, None], src[None, :-1]), within[0])
    hi = np.minimum(np.minimum(dst[1:, None], src[None, 1:]), within[1])
    return np.clip(hi - lo, 0, None)
