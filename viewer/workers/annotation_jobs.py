"""Annotation work done off the UI thread: reading and writing files, the simplified outlines
the painter draws at low zoom, and maps turned into polygons.

Each function is a job for :class:`~viewer.workers.background.BackgroundRunner`: it takes plain
values and returns plain values (``QPainterPath`` is a value type, safe to build on a worker).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import shapely
from PySide6.QtCore import QByteArray, QDataStream, Qt
from PySide6.QtGui import QPainterPath, QPolygonF

from engine.annotations import Annotation, AnnotationSet, load_annotations, polygons_from_map, save_annotations
from engine.annotations.files import LoadResult
from engine.geometry import MapGeometry

#: Douglas-Peucker tolerances (level-0 px) each outline is kept at, doubling, so the painter's
#: pick (the coarsest within a screen pixel) is never more than twice as fine as it could be.
L0_TOLERANCES = (0.0,) + tuple(float(2**k) for k in range(12))
#: Outlines with fewer vertices than this are drawn exactly at every zoom (simplifying them saves nothing).
SIMPLIFY_FROM_VERTICES = 64
SIDECAR_SUFFIX = ".annotations.geojson"


def sidecar_path(slide_key: str, fallback_folder: str | None) -> Path:
    """Where a slide's annotations autosave: beside the slide, or in ``fallback_folder`` when
    the slide's folder cannot be written (a read-only share, a mounted archive)."""
    slide = Path(slide_key)
    beside = slide.with_name(slide.name + SIDECAR_SUFFIX)
    if os.access(slide.parent, os.W_OK) or fallback_folder is None:
        return beside
    return Path(fallback_folder) / beside.name


#: Files and documents past these sizes are parsed and written in a helper process: json.loads
#: of a 3 MB file is one ~90 ms C call that holds the GIL, which would stall the UI thread.
IN_PROCESS_MAX_BYTES = 512 * 2**10
IN_PROCESS_MAX_VERTICES = 20_000
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helper() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: a forked copy of a process running Qt threads can deadlock.
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def shutdown_helper() -> None:
    """Stop the helper process (the app's shutdown; a later job starts a new one)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def load_job(path: str) -> LoadResult:
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size <= IN_PROCESS_MAX_BYTES:
        return load_annotations(path)
    return _helper().submit(load_annotations, path).result()


def load_if_exists_job(path: str) -> LoadResult | None:
    return load_job(path) if Path(path).exists() else None


def _save(annotations: AnnotationSet, path: str) -> tuple[str, ...]:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save_annotations(annotations, path, allow_loss=True)


def save_job(annotations: AnnotationSet, path: str, version: int) -> tuple[str, int, tuple[str, ...]]:
    """Write (atomically, through the engine's writer); returns the path, the document version
    written, and what the format could not hold."""
    vertices = int(shapely.get_num_coordinates([a.geometry for a in annotations]).sum()) if len(annotations) else 0
    if vertices <= IN_PROCESS_MAX_VERTICES:
        return path, version, _save(annotations, path)
    return path, version, _helper().submit(_save, annotations, path).result()


def _ring_polygon(coords: np.ndarray) -> QPolygonF:
    """Through ``QDataStream``'s QPolygonF format (a big-endian count, then x, y doubles): built
    in C, about 80x faster than a QPointF per vertex, and without holding the GIL for tens of
    milliseconds while the UI thread waits for it."""
    data = np.array([len(coords)], ">u4").tobytes() + np.ascontiguousarray(coords, ">f8").tobytes()
    polygon = QPolygonF()
    QDataStream(QByteArray(data)) >> polygon
    return polygon


def painter_path(geometry) -> QPainterPath:
    """A level-0 ``QPainterPath`` of a shapely geometry (rings closed, holes odd-even filled)."""
    path = QPainterPath()
    path.setFillRule(Qt.FillRule.OddEvenFill)
    for part in shapely.get_parts(geometry):
        kind = part.geom_type
        if kind == "Polygon":
            for ring in (part.exterior, *part.interiors):
                path.addPolygon(_ring_polygon(np.asarray(ring.coords)))
                path.closeSubpath()
        elif kind in ("LineString", "MultiLineString"):
            for line in shapely.get_parts(part):
                path.addPolygon(_ring_polygon(np.asarray(line.coords)))
        # Points are drawn as screen-sized markers by the painter, not as paths.
    return path


def outline_paths(geometry) -> dict[float, QPainterPath]:
    """The outline at each of :data:`L0_TOLERANCES` (only the exact one for small outlines)."""
    exact = painter_path(geometry)
    if shapely.get_num_coordinates(geometry) < SIMPLIFY_FROM_VERTICES:
        return {0.0: exact}
    paths, previous = {0.0: exact}, 0.0
    for tolerance in L0_TOLERANCES[1:]:
        # Plain Douglas-Peucker (15x faster than topology-preserving): these are only drawn, and
        # a crossing a pixel wide is invisible. An outline smaller than the tolerance collapses;
        # it keeps the finer path, which is a few segments by then.
        simple = shapely.simplify(geometry, tolerance, preserve_topology=False)
        paths[tolerance] = paths[previous] if simple.is_empty else painter_path(simple)
        previous = tolerance
    return paths


def outlines_job(annotations: list[Annotation]) -> list[tuple[Annotation, dict[float, QPainterPath]]]:
    return [(a, outline_paths(a.geometry)) for a in annotations]


def contours_job(values: np.ndarray, grid: MapGeometry, threshold: float, class_name: str | None,
                 mpp, score_name: str) -> list[Annotation]:
    return polygons_from_map(values, grid, threshold, class_name=class_name, mpp=mpp, score_name=score_name)
