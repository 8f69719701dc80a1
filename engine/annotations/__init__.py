"""Annotations on slides, in level-0 pixel coordinates (torch-free, Qt-free).

* :mod:`~engine.annotations.model`: :class:`Annotation` (frozen: geometry, kind, class, colour,
  name, lock, measurements) and :class:`AnnotationSet` (list-like, with class colours).
* :mod:`~engine.annotations.files`: :func:`load_annotations` / :func:`save_annotations` for QuPath
  GeoJSON (:mod:`~engine.annotations.geojson`) and ASAP XML (:mod:`~engine.annotations.asap`).
* :mod:`~engine.annotations.raster`: masks and exact coverage on any map grid.
* :mod:`~engine.annotations.contours`: thresholded maps to polygons, or cells to detections.
* :mod:`~engine.annotations.stats`: counts and areas per class.
"""

from engine.annotations.asap import CAMELYON16_EXCLUDED_CLASSES, CAMELYON16_TUMOR_CLASSES
from engine.annotations.contours import detections_from_map, polygons_from_map
from engine.annotations.errors import AnnotationError
from engine.annotations.files import MAX_FILE_BYTES, LoadResult, load_annotations, save_annotations
from engine.annotations.model import (
    AREA_KINDS,
    AREA_PX,
    AREA_UM,
    ELLIPSE,
    KINDS,
    LINE,
    MULTIPOLYGON,
    POINT,
    POINTS,
    POLYGON,
    RECTANGLE,
    Annotation,
    AnnotationSet,
)
from engine.annotations.raster import mask_from_annotations, rasterize
from engine.annotations.shapes import ELLIPSE_VERTICES
from engine.annotations.stats import AnnotationStats, ClassStats, stats

__all__ = ["AREA_KINDS", "AREA_PX", "AREA_UM", "CAMELYON16_EXCLUDED_CLASSES", "CAMELYON16_TUMOR_CLASSES",
           "ELLIPSE", "ELLIPSE_VERTICES", "KINDS", "LINE", "MAX_FILE_BYTES", "MULTIPOLYGON", "POINT", "POINTS",
           "POLYGON", "RECTANGLE", "Annotation", "AnnotationError", "AnnotationSet", "AnnotationStats",
           "ClassStats", "LoadResult", "detections_from_map", "load_annotations", "mask_from_annotations",
           "polygons_from_map", "rasterize", "save_annotations", "stats"]
