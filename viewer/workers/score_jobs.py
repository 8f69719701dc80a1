"""Worker job of the *Score against annotations* panel: how much of a map layer falls inside an
annotation class, by the engine's own scoring (:func:`engine.annotations.score.score_plane`, the
function ``engine.api.score_maps`` runs on a maps file), on the map in memory.

It rasterises the outlines onto the map's grid and, for *Tissue only*, finds the slide's tissue
(one slide read per slide, cached): neither may run on the UI thread.
"""

from __future__ import annotations

import functools

import numpy as np

from engine.annotations import AnnotationSet
from engine.annotations.score import score_plane
from engine.geometry import MapGeometry
from engine.slides import open_slide
from engine.slides.tissue import TissueMask, detect_tissue


@functools.lru_cache(maxsize=8)
def slide_tissue(slide_path: str) -> TissueMask:
    """The slide's tissue mask (read from its thumbnail level once per slide)."""
    with open_slide(slide_path) as slide:
        return detect_tissue(slide)


def score_layer_job(values: np.ndarray, geometry: MapGeometry, annotations: AnnotationSet, class_name: str | None,
                    tissue_slide: str | None) -> dict:
    """The scores of one map plane against the ``class_name`` outlines (None: every annotation
    with an area): ``mass_inside``, ``even_share``, ``pixel_auc``, ``cells``, ``cells_inside``.
    ``values`` may be a live layer still being filled: the copy taken here is what is scored.
    ``tissue_slide``: score the slide's tissue cells only."""
    plane = np.array(values, np.float64)
    tissue = slide_tissue(tissue_slide) if tissue_slide else None
    return score_plane(plane, geometry, annotations, class_name, tissue=tissue)
