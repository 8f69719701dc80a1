"""How much of a map falls on annotated outlines: per slide, and over a cohort.

The map's cells are scored against the cells whose centre lies inside the class's outlines
(:func:`~engine.annotations.raster.mask_from_annotations` on the map's own grid) with
:func:`engine.metrics.saliency_localisation`: ``mass_inside`` (the share of the map's mass in
the class), ``even_share`` (the share of cells in the class: what a map spread evenly would
score) and ``pixel_auc`` (the map value as a per-cell detector of the class). Only cells the
job computed count (NaN cells are outside a run's region), and, when a tissue mask is given,
only tissue cells (glass is easy to rule out and would flatter every score).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from engine.annotations.errors import AnnotationError
from engine.annotations.files import load_annotations
from engine.annotations.model import AnnotationSet
from engine.annotations.raster import mask_from_annotations
from engine.geometry import Box, MapGeometry
from engine.io.maps import MapLayer, read_maps
from engine.metrics import saliency_localisation
from engine.slides.tissue import TissueMask, detect_tissue

SCORES = ("mass_inside", "even_share", "pixel_auc")


def map_plane(layers: dict[str, MapLayer], meta: dict, layer: str, channel: str | int | None) -> tuple[np.ndarray, MapGeometry]:
    """One (h, w) plane of a maps file and its grid. A layer with classes (the prediction) takes
    ``channel`` (a class name or index; None: the last class, the positive one of a binary model)."""
    if layer not in layers:
        raise AnnotationError(f"the maps hold no {layer!r} layer (they hold {', '.join(sorted(layers)) or 'none'})")
    values = np.asarray(layers[layer].values, np.float64)
    if values.ndim == 3:
        classes = list(meta.get("classes", []))
        if channel is None:
            k = values.shape[0] - 1
        elif isinstance(channel, str) and not channel.lstrip("-").isdigit():
            if channel not in classes:
                raise AnnotationError(f"class {channel!r} is not one of the map's ({', '.join(classes)})")
            k = classes.index(channel)
        else:
            k = int(channel)
            if not 0 <= k < values.shape[0]:
                raise AnnotationError(f"channel {k} does not exist; the {layer} map has {values.shape[0]}")
        values = values[k]
    return values, MapGeometry(Box.of(layers[layer].l0_box), tuple(values.shape))


def score_plane(values: np.ndarray, grid: MapGeometry, annotations: AnnotationSet, class_name: str | None, *,
                tissue: np.ndarray | TissueMask | None = None) -> dict:
    """The scores of one map plane on ``grid`` against the ``class_name`` outlines (None: every
    annotation with an area); ``tissue``: a mask on the grid, or a slide's :class:`TissueMask`."""
    values = np.asarray(values, np.float64)
    inside = mask_from_annotations(annotations, grid, None if class_name is None else [class_name])
    keep = np.isfinite(values)
    if isinstance(tissue, TissueMask):
        tissue = tissue.on_grid(grid)
    if tissue is not None:
        tissue = np.asarray(tissue, bool)
        if tissue.shape != values.shape:
            raise AnnotationError(f"the tissue mask is {tissue.shape} but the map is {values.shape} cells")
        keep &= tissue
    result = saliency_localisation(values, inside, keep)
    return {"mass_inside": result["mass_in_lesion"], "even_share": result["lesion_share"],
            "pixel_auc": result["pixel_auc"], "cells": int(keep.sum()), "cells_inside": int((inside & keep).sum()),
            "class": class_name, "over": "tissue" if tissue is not None else "computed cells"}


def score_maps(maps: str | os.PathLike, annotations: str | os.PathLike | AnnotationSet, class_name: str | None = None,
               *, layer: str = "saliency", channel: str | int | None = None,
               tissue: bool | np.ndarray | TissueMask | None = None, slide: str | os.PathLike | None = None) -> dict:
    """Score the ``layer`` of a ``maps.npz`` (or its folder) against an annotation file (or set).

    ``tissue=True`` finds the tissue of ``slide`` (default: the slide the maps file names) with
    :func:`engine.slides.tissue.detect_tissue` and scores tissue cells only.
    """
    layers, meta = read_maps(maps)
    values, grid = map_plane(layers, meta, layer, channel)
    if not isinstance(annotations, AnnotationSet):
        annotations = load_annotations(annotations).annotations
    if tissue is True:
        from engine.slides import open_slide

        with open_slide(slide or meta["slide"]) as s:
            tissue = detect_tissue(s)
    elif tissue is False:
        tissue = None
    result = score_plane(values, grid, annotations, class_name, tissue=tissue)
    return {"maps": str(maps), "layer": layer, **result}


def score_cohort(csv_path: str | os.PathLike, class_name: str | None = None, **kw) -> dict:
    """Score every row of a CSV with ``maps`` and ``annotations`` columns (and ``slide``, which
    names the row and, with ``tissue=True``, gives the tissue); paths relative to the CSV.

    Returns ``{"slides": [per-slide dicts], "mean": {score: mean over the slides where it is defined}, "n": ...}``.
    """
    base = Path(csv_path).parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise AnnotationError(f"{csv_path}: cannot read: {exc.strerror or exc}") from None
    if not rows or not {"maps", "annotations"} <= set(rows[0]):
        raise AnnotationError(f"{csv_path}: needs a header with 'maps' and 'annotations' columns (and 'slide')")
    slides = []
    for row in rows:
        slide = row.get("slide") or None
        slide_path = str(base / slide) if slide else None
        result = score_maps(base / row["maps"], base / row["annotations"], class_name,
                            slide=slide_path, **kw)
        slides.append({"slide": slide or row["maps"], **result})
    mean = {}
    for key in SCORES:
        finite = [s[key] for s in slides if not math.isnan(s[key])]
        mean[key] = float(np.mean(finite)) if finite else math.nan
    return {"slides": slides, "mean": mean, "n": len(slides)}
