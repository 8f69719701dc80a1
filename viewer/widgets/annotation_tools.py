"""Drawing and editing annotations on the slide view, with QuPath's keys: the tool delegate the
view forwards its mouse and key events to, and the toolbar that picks the tool.

Tools: polygon by clicks (P; double-click, Enter or a click on the first vertex closes it,
Backspace drops the last vertex, Esc cancels), brush (B; a stroke as wide as the brush) and
lasso (L; a freehand outline) by dragging, rectangle (R) and ellipse (E) by dragging, point (.),
and select (S): click to select, drag a selected annotation to move it, drag a handle of a
selected polygon to move that vertex; dragging empty space pans, as with the pan tool (M).
Screen positions become level-0 points through the view's :class:`ViewTransform`; edits go to
the :class:`~viewer.model.annotations.AnnotationDocument` as commands (one per gesture).
"""

from __future__ import annotations

import math
from typing import Callable

import shapely
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QColor, QKeyEvent, QKeySequence, QMouseEvent, QPainter, QPen, QPolygonF
from PySide6.QtWidgets import QToolBar, QWidget

from engine.annotations import Annotation, AnnotationError
from engine.geometry import Box
from viewer.model.annotations import AnnotationDocument, polygon_rings
from viewer.model.viewport import ViewTransform
from viewer.render.annotation_painter import HANDLE_PX, AnnotationPainter

PAN, SELECT, POLYGON, BRUSH, LASSO, RECTANGLE, ELLIPSE, POINT = "pan", "select", "polygon", "brush", "lasso", "rectangle", "ellipse", "point"
#: (tool, button text, key) in toolbar order.
TOOLS = ((PAN, "Pan", "M"), (SELECT, "Select", "S"), (POLYGON, "Polygon", "P"), (BRUSH, "Brush", "B"),
         (LASSO, "Lasso", "L"), (RECTANGLE, "Rectangle", "R"), (ELLIPSE, "Ellipse", "E"), (POINT, "Point", "."))
BRUSH_RADIUS_PX = 12
#: A click this close (screen px) to the first vertex closes a polygon.
CLOSE_PX = 8
#: Hits on lines and points count within this many screen px.
HIT_PX = 4
PREVIEW = QColor(255, 200, 0)


class ToolDelegate(QObject):
    """What the view's mouse does while an annotation tool is active (UI thread)."""

    #: A tool was picked (from a key, the toolbar or code).
    tool_changed = Signal(str)
    #: An edit was refused (the message says why).
    edit_failed = Signal(str)

    def __init__(self, painter: AnnotationPainter, repaint: Callable[[], None],
                 class_name: Callable[[], str | None], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.painter, self._repaint, self._class_name = painter, repaint, class_name
        self.tool = PAN
        self._points: list[tuple[float, float]] = []  # level-0 points of the shape being drawn
        self._drag: tuple[str, tuple[float, float]] | None = None  # (what, l0 start)
        self._vertex: tuple[int, int] | None = None  # (ring, vertex) being dragged
        self._l0_now: tuple[float, float] | None = None
        self._view: ViewTransform | None = None

    @property
    def document(self) -> AnnotationDocument | None:
        return self.painter.document

    def set_tool(self, tool: str) -> None:
        self.cancel()
        if tool != self.tool:
            self.tool = tool
            self.tool_changed.emit(tool)

    def cancel(self) -> None:
        self._points, self._drag, self._vertex = [], None, None
        self._repaint()

    @property
    def drawing(self) -> bool:
        return bool(self._points) or self._drag is not None

    # -- events the view forwards (True: handled, the view does nothing more) ----------------
    def mouse_press(self, event: QMouseEvent, view: ViewTransform) -> bool:
        doc = self.document
        if doc is None or self.tool == PAN or event.button() != Qt.MouseButton.LeftButton:
            return False
        self._view = view
        p = view.to_l0(event.position().x(), event.position().y())
        self._l0_now = p
        if self.tool == SELECT:
            return self._press_select(doc, p, view)
        if self.tool == POLYGON:
            if len(self._points) >= 3 and _screen_distance(view, p, self._points[0]) <= CLOSE_PX:
                self._finish_polygon()
            else:
                self._points.append(p)
        elif self.tool == POINT:
            self._add(Annotation.point(*p, class_name=self._class_name()))
        else:
            self._drag, self._points = (self.tool, p), [p]
        self._repaint()
        return True

    def mouse_move(self, event: QMouseEvent, view: ViewTransform) -> bool:
        doc = self.document
        if doc is None:
            return False
        self._view = view
        p = view.to_l0(event.position().x(), event.position().y())
        self._l0_now = p
        if self._drag is None:
            if self.tool in (SELECT, PAN):
                self.painter.set_hover(doc.hit(*p, HIT_PX / view.scale))
            if self._points:
                self._repaint()
            return False  # the view still reports the cursor position
        if self._drag[0] in (BRUSH, LASSO):
            last = self._points[-1]
            if _screen_distance(view, p, last) >= 2:
                self._points.append(p)
        self._repaint()
        return True

    def mouse_release(self, event: QMouseEvent, view: ViewTransform) -> bool:
        if self._drag is None or event.button() != Qt.MouseButton.LeftButton:
            return self.tool not in (PAN, SELECT) and self.document is not None
        p = view.to_l0(event.position().x(), event.position().y())
        what, start = self._drag
        self._drag = None
        try:
            self._finish_drag(what, start, p, view)
        except AnnotationError as exc:
            self.edit_failed.emit(str(exc))
        self._points, self._vertex = [], None
        self._repaint()
        return True

    def mouse_double_click(self, event: QMouseEvent, view: ViewTransform) -> bool:
        if self.tool == POLYGON and self.document is not None:
            # The double-click's own press may or may not have come first (platforms differ).
            p = view.to_l0(event.position().x(), event.position().y())
            if not self._points or _screen_distance(view, p, self._points[-1]) > 1:
                self._points.append(p)
            self._finish_polygon()
            return True
        return False

    def key_press(self, event: QKeyEvent) -> bool:
        key = event.key()
        if key == Qt.Key.Key_Escape and self.drawing:
            self.cancel()
        elif key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.tool == POLYGON and self._points:
            self._finish_polygon()
        elif key == Qt.Key.Key_Backspace and self.tool == POLYGON and self._points:
            self._points.pop()
            self._repaint()
        else:
            return False
        return True

    # -- gestures ----------------------------------------------------------------------------
    def _press_select(self, doc: AnnotationDocument, p: tuple[float, float], view: ViewTransform) -> bool:
        if len(doc.selection) == 1:
            vertex = _handle_at(doc[doc.selection[0]], p, view)
            if vertex is not None:
                self._vertex, self._drag = vertex, ("vertex", p)
                return True
        index = doc.hit(*p, HIT_PX / view.scale)
        if index is None:
            doc.select(())
            return False  # empty space: the view pans
        if index not in doc.selection:
            doc.select((index,))
        self._drag = ("move", p)
        return True

    def _finish_drag(self, what: str, start: tuple[float, float], end: tuple[float, float], view: ViewTransform) -> None:
        doc, cls = self.document, self._class_name()
        if what == "move":
            doc.move(doc.selection, end[0] - start[0], end[1] - start[1])
        elif what == "vertex":
            doc.edit_vertex(doc.selection[0], *self._vertex, *end)
        elif what in (RECTANGLE, ELLIPSE):
            box = Box(min(start[0], end[0]), min(start[1], end[1]), max(start[0], end[0]), max(start[1], end[1]))
            if box.width * view.scale >= 2 and box.height * view.scale >= 2:
                self._add((Annotation.rectangle if what == RECTANGLE else Annotation.ellipse)(box, class_name=cls))
        elif what == LASSO and len(self._points) >= 3:
            self._add_area(shapely.make_valid(shapely.Polygon(self._points)), cls)
        elif what == BRUSH:
            stroke = shapely.LineString(self._points) if len(self._points) > 1 else shapely.Point(self._points[0])
            self._add_area(stroke.buffer(BRUSH_RADIUS_PX / view.scale), cls)

    def _add_area(self, geometry, cls: str | None) -> None:
        parts = [g for g in shapely.get_parts(geometry) if g.geom_type == "Polygon" and not g.is_empty]
        if parts:
            area = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
            self._add(Annotation.from_geometry(area, class_name=cls))

    def _finish_polygon(self) -> None:
        points = [p for i, p in enumerate(self._points) if i == 0 or p != self._points[i - 1]]
        self._points = []
        if len(points) >= 3:
            try:
                polygon = shapely.Polygon(points)
                if not polygon.is_valid:  # a self-crossing outline: repaired, never dropped
                    self._add_area(shapely.make_valid(polygon), self._class_name())
                else:
                    self._add(Annotation.from_geometry(polygon, class_name=self._class_name()))
            except AnnotationError as exc:
                self.edit_failed.emit(str(exc))
        self._repaint()

    def _add(self, annotation: Annotation) -> None:
        self.document.add([annotation], label=f"add {annotation.kind}")

    # -- preview (an overlay layer of its own, above the annotations) ---------------------------
    def paint(self, painter: QPainter, l0_visible_box: Box, view: ViewTransform) -> None:
        if not self._points and self._drag is None:
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pen = QPen(PREVIEW, 1.5, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        now = self._l0_now
        screen = [QPointF(*view.to_screen(*p)) for p in self._points]
        what = self._drag[0] if self._drag else self.tool
        if what in (RECTANGLE, ELLIPSE) and now is not None:
            rect = QRectF(screen[0], QPointF(*view.to_screen(*now))).normalized()
            (painter.drawRect if what == RECTANGLE else painter.drawEllipse)(rect)
        elif what == BRUSH:
            pen = QPen(PREVIEW, 2 * BRUSH_RADIUS_PX, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
            painter.setOpacity(0.4)
            painter.setPen(pen)
            painter.drawPolyline(QPolygonF(screen))
        elif what in (POLYGON, LASSO):
            if now is not None and what == POLYGON:
                screen.append(QPointF(*view.to_screen(*now)))
            painter.drawPolyline(QPolygonF(screen))
        elif what in ("move", "vertex") and now is not None:
            self._paint_edit_preview(painter, view, what, now)
        painter.restore()

    def _paint_edit_preview(self, painter: QPainter, view: ViewTransform, what: str, now) -> None:
        doc = self.document
        start = self._drag[1]
        if what == "move":
            dx, dy = now[0] - start[0], now[1] - start[1]
            for i in doc.selection:
                b = doc[i].l0_box.translate(dx, dy)
                s = view.box_to_screen(b)
                painter.drawRect(QRectF(s.x0, s.y0, s.width, s.height))
            return
        ring_index, vertex = self._vertex
        ring = polygon_rings(doc[doc.selection[0]])[ring_index]
        n = len(ring)
        neighbours = (ring[(vertex - 1) % n], ring[(vertex + 1) % n])
        p = QPointF(*view.to_screen(*now))
        painter.drawPolyline(QPolygonF([QPointF(*view.to_screen(*neighbours[0])), p, QPointF(*view.to_screen(*neighbours[1]))]))


def _screen_distance(view: ViewTransform, a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1]) * view.scale


def _handle_at(a: Annotation, p: tuple[float, float], view: ViewTransform) -> tuple[int, int] | None:
    """The (ring, vertex) of ``a`` whose handle is under level-0 point ``p``, if any."""
    if a.locked:
        return None
    rings = polygon_rings(a)
    if rings is None:
        return None
    best, best_d = None, HANDLE_PX
    for r, ring in enumerate(rings):
        for v, q in enumerate(ring):
            d = _screen_distance(view, p, q)
            if d <= best_d:
                best, best_d = (r, v), d
    return best


class AnnotationToolbar(QToolBar):
    """The tools as checkable buttons with their keys, then undo, redo and delete."""

    def __init__(self, delegate: ToolDelegate, parent: QWidget | None = None) -> None:
        super().__init__("Annotations", parent)
        self.setObjectName("Annotations")
        self.delegate = delegate
        self.tool_actions: dict[str, QAction] = {}
        group = QActionGroup(self)
        for tool, text, key in TOOLS:
            action = QAction(text, self, checkable=True)
            action.setShortcut(QKeySequence(key))
            action.setToolTip(f"{text} tool ({key})")
            action.triggered.connect(lambda _checked=False, tool=tool: delegate.set_tool(tool))
            group.addAction(action)
            self.addAction(action)
            self.tool_actions[tool] = action
        self.tool_actions[PAN].setChecked(True)
        delegate.tool_changed.connect(lambda tool: self.tool_actions[tool].setChecked(True))
        self.addSeparator()
        self.undo_action = self._command("Undo", "Ctrl+Z", lambda doc: doc.undo())
        self.redo_action = self._command("Redo", "Ctrl+Shift+Z", lambda doc: doc.redo())
        self.delete_action = self._command("Delete", QKeySequence.StandardKey.Delete, lambda doc: doc.delete_selected())

    def _command(self, text: str, key, run: Callable[[AnnotationDocument], None]) -> QAction:
        action = QAction(text, self)
        action.setShortcut(QKeySequence(key))
        action.setToolTip(f"{text} ({QKeySequence(key).toString()})")
        action.triggered.connect(lambda: self.delegate.document is not None and run(self.delegate.document))
        self.addAction(action)
        return action
