"""Paints one slide's annotations over the slide and its maps: outlines in their class colours,
an optional translucent fill, the selection with its vertex handles, and a label on hover.

Outlines are ``QPainterPath``s in the level-0 plane, drawn through the painter's transform with
a cosmetic pen, so zooming and panning build nothing. Large outlines come from a worker at
several simplification tolerances (:mod:`viewer.workers.annotation_jobs`); each paint picks the
coarsest within a screen pixel, so a 10,000-vertex outline costs a few hundred segments
when the slide is zoomed out. Until an outline's paths arrive its bounding box is drawn dashed.
Fills are off by default (as in QuPath); while the view moves, lines are drawn without
antialiasing, fills are left out and outlines may stray two screen pixels (coarser paths), the
costly parts of a frame over a large outline.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import shapely
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPainterPath, QPen, QTransform

from engine.annotations import Annotation
from engine.geometry import Box
from viewer.model.annotations import AnnotationDocument, polygon_rings
from viewer.model.viewport import ViewTransform
from viewer.workers.annotation_jobs import L0_TOLERANCES, SIMPLIFY_FROM_VERTICES, outline_paths, outlines_job

Submit = Callable[..., object]
#: Screen px a drawn outline may stray from the true one (the line itself is 1.6 px wide).
SCREEN_TOLERANCE = 1.0
#: The same while the view moves: those frames are drafts (no antialiasing, no fill) repainted
#: exactly once it stops. A hand-drawn outline keeps its jitter at a tolerance of one pixel: the
#: bench's 10,000-vertex outline at 5x is 2,900 segments at 1 px (2.6 ms to stroke here), 720 at
#: 2 px (0.8 ms), the bulk of an annotated pan frame's cost.
MOVING_SCREEN_TOLERANCE = 2.0
HANDLE_PX = 7
LABEL_MARGIN_PX = 40
POINT_PX = 5


def pick_tolerance(scale: float, screen_px: float = SCREEN_TOLERANCE) -> float:
    """The coarsest stored tolerance within ``screen_px`` screen px at ``scale`` (screen px per
    level-0 px)."""
    allowed = screen_px / scale
    return max(t for t in L0_TOLERANCES if t <= allowed)


class AnnotationPainter:
    """The view's annotation layer (``SlideView.add_overlay``) for one document at a time."""

    def __init__(self, repaint: Callable[[Box | None], None], submit: Submit,
                 moving: Callable[[], bool] = lambda: False) -> None:
        self._repaint, self._submit, self._moving = repaint, submit, moving
        self.document: AnnotationDocument | None = None
        self.fill_opacity = 0.0  # 0: outlines only
        self.visible = True
        self.hover_index: int | None = None
        self._paths: dict[int, tuple[Annotation, dict[float, QPainterPath]]] = {}
        self._pending: set[int] = set()
        self._bounds = np.zeros((0, 4))
        self._bounds_version = -1
        self.paths_ready = 0  # batches arrived (tests wait on it)
        self._last_scale = 1.0

    # -- binding ---------------------------------------------------------------------------
    def set_document(self, document: AnnotationDocument | None) -> None:
        if self.document is not None:
            self.document.changed.disconnect(self._on_changed)
            self.document.selection_changed.disconnect(self._on_selection)
        self.document = document
        self._paths.clear()
        self._pending.clear()
        self._bounds_version = -1
        self.hover_index = None
        if document is not None:
            document.changed.connect(self._on_changed)
            document.selection_changed.connect(self._on_selection)
            self._request_paths()
        self._repaint(None)

    def _on_changed(self, l0_box: Box | None) -> None:
        self._request_paths()
        # Handles and the label reach past the box by a few screen px: widen it at the last zoom drawn.
        self._repaint(None if l0_box is None else l0_box.expand(LABEL_MARGIN_PX / self._last_scale))

    def _on_selection(self) -> None:
        self._repaint(None)

    def set_fill(self, opacity: float) -> None:
        self.fill_opacity = opacity
        self._repaint(None)

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        self._repaint(None)

    def set_hover(self, index: int | None) -> None:
        if index != self.hover_index:
            self.hover_index = index
            self._repaint(None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _request_paths(self) -> None:
        """Small outlines are built now; large ones are simplified on a worker."""
        doc = self.document
        live = {id(a) for a in doc.annotations}
        for key in [k for k in self._paths if k not in live]:
            del self._paths[key]
        self._pending &= live
        large = []
        for a in doc.annotations:
            key = id(a)
            if key in self._paths or key in self._pending:
                continue
            if a.geometry.geom_type in ("Point", "MultiPoint"):
                self._paths[key] = (a, {})
            elif _vertex_count(a) < SIMPLIFY_FROM_VERTICES:
                self._paths[key] = (a, outline_paths(a.geometry))
            else:
                large.append(a)
                self._pending.add(key)
        if large:
            self._submit(outlines_job, large, on_done=self._take_paths)

    def _take_paths(self, results) -> None:
        for a, paths in results:
            if id(a) in self._pending:  # still in the document (ids of live objects are unique)
                self._pending.discard(id(a))
                self._paths[id(a)] = (a, paths)
        self.paths_ready += 1
        self._repaint(None)

    def _visible_indices(self, l0_visible_box: Box) -> np.ndarray:
        doc = self.document
        if self._bounds_version != doc.version:
            self._bounds = np.array([a.l0_box.as_tuple() for a in doc.annotations], float).reshape(-1, 4)
            self._bounds_version = doc.version
        b, v = self._bounds, l0_visible_box
        return np.nonzero((b[:, 0] <= v.x1) & (b[:, 2] >= v.x0) & (b[:, 1] <= v.y1) & (b[:, 3] >= v.y0))[0]

    # -- painting --------------------------------------------------------------------------
    def paint(self, painter: QPainter, l0_visible_box: Box, view: ViewTransform) -> None:
        doc = self.document
        if doc is None or not self.visible or len(doc) == 0:
            return
        self._last_scale = view.scale
        margin = HANDLE_PX / view.scale
        indices = self._visible_indices(l0_visible_box.expand(margin))
        if len(indices) == 0:
            return
        moving = self._moving()
        tolerance = pick_tolerance(view.scale, MOVING_SCREEN_TOLERANCE if moving else SCREEN_TOLERANCE)
        to_screen = QTransform(view.scale, 0, 0, view.scale, -view.l0_x0 * view.scale, -view.l0_y0 * view.scale)
        selected = set(doc.selection)
        fill_opacity = 0.0 if moving else self.fill_opacity
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, not moving)
        for index in indices.tolist():
            a = doc[index]
            colour = QColor(*doc.color_of(a))
            pen = QPen(colour, 3.0 if index in selected else 1.6)
            pen.setCosmetic(True)
            entry = self._paths.get(id(a))
            if a.geometry.geom_type in ("Point", "MultiPoint"):
                self._paint_points(painter, a, view, pen)
                continue
            painter.setTransform(to_screen)
            if entry is None:  # still being simplified
                pen.setStyle(Qt.PenStyle.DashLine)
                painter.setPen(pen)
                painter.setBrush(Qt.BrushStyle.NoBrush)
                b = a.l0_box
                painter.drawRect(QRectF(b.x0, b.y0, b.width, b.height))
            else:
                paths = entry[1]
                path = paths.get(max(t for t in paths if t <= tolerance))
                painter.setPen(pen)
                fill = QColor(colour)
                fill.setAlphaF(fill_opacity)
                closed = a.has_area and fill_opacity > 0
                painter.setBrush(QBrush(fill) if closed else Qt.BrushStyle.NoBrush)
                painter.drawPath(path)
            painter.resetTransform()
            if index in selected and len(selected) == 1:
                self._paint_handles(painter, a, view)
        if self.hover_index is not None and self.hover_index < len(doc):
            self._paint_label(painter, doc[self.hover_index], view, doc)
        painter.restore()

    def _paint_points(self, painter: QPainter, a: Annotation, view: ViewTransform, pen: QPen) -> None:
        painter.resetTransform()
        painter.setPen(pen)
        painter.setBrush(QBrush(pen.color()))
        for x, y in np.asarray([(p.x, p.y) for p in _points(a)]):
            sx, sy = view.to_screen(x, y)
            painter.drawEllipse(QPointF(sx, sy), POINT_PX, POINT_PX)

    def _paint_handles(self, painter: QPainter, a: Annotation, view: ViewTransform) -> None:
        rings = polygon_rings(a)
        if rings is None or sum(len(r) for r in rings) > 2000:
            return  # handles on thousands of vertices would hide the outline; zoom in to edit
        painter.setPen(QPen(QColor(0, 0, 0), 1))
        painter.setBrush(QBrush(QColor(255, 255, 255)))
        half = HANDLE_PX / 2
        for ring in rings:
            last = None
            for x, y in ring:
                sx, sy = view.to_screen(x, y)
                # Handles closer than two widths on screen would merge into a hatched band that
                # hides the outline, and could not be grabbed one by one: show the spaced ones.
                if last is not None and abs(sx - last[0]) + abs(sy - last[1]) < 2 * HANDLE_PX:
                    continue
                painter.drawRect(QRectF(sx - half, sy - half, HANDLE_PX, HANDLE_PX))
                last = (sx, sy)

    def _paint_label(self, painter: QPainter, a: Annotation, view: ViewTransform, doc: AnnotationDocument) -> None:
        text = " · ".join(dict.fromkeys(t for t in (a.name, a.class_name) if t)) or a.kind
        b = a.l0_box
        sx, sy = view.to_screen(b.x0, b.y0)
        font = QFont(painter.font())
        font.setPointSizeF(10)
        painter.setFont(font)
        rect = painter.fontMetrics().boundingRect(text).adjusted(-4, -2, 4, 2)
        rect.moveTo(int(sx), int(sy) - rect.height() - 2)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRect(rect)
        painter.setPen(QColor(*doc.color_of(a)).lighter(150))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)


def _vertex_count(a: Annotation) -> int:
    return int(shapely.get_num_coordinates(a.geometry))


def _points(a: Annotation):
    return shapely.get_parts(a.geometry)
