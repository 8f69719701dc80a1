"""One slide's annotation document: the annotations (level-0 px), the classes and their colours,
the selection, and an undo/redo stack of named commands.

Annotations are frozen, so a command keeps the list and the class colours as they were before
and after it (tuples of references, not copies): undo and redo swap them back. Every change
notifies ``changed(l0_box)`` with the level-0 box to repaint (None: everything) and marks the
document ``dirty`` until :meth:`mark_saved`; selection and class changes notify on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import shapely

from engine.annotations import Annotation, AnnotationError, AnnotationSet
from engine.annotations.model import RGB, default_class_color
from engine.geometry import Box
from viewer.model.notify import Notifier

#: Kept so a long session's edits stay undoable without the stack growing for ever.
UNDO_LIMIT = 200


@dataclass(frozen=True)
class Command:
    """What one edit did: its name (``Undo <label>``) and the document before and after."""

    label: str
    before: tuple[Annotation, ...]
    after: tuple[Annotation, ...]
    classes_before: tuple[tuple[str, RGB], ...]
    classes_after: tuple[tuple[str, RGB], ...]
    selection_after: tuple[int, ...] = ()


def union_box(annotations: Iterable[Annotation]) -> Box | None:
    boxes = [a.l0_box for a in annotations]
    if not boxes:
        return None
    return Box(min(b.x0 for b in boxes), min(b.y0 for b in boxes), max(b.x1 for b in boxes), max(b.y1 for b in boxes))


class AnnotationDocument:
    """The annotations of one slide, editable through commands (UI thread only)."""

    def __init__(self, annotations: AnnotationSet | None = None) -> None:
        self.changed = Notifier()  # (l0_box | None)
        self.selection_changed = Notifier()  # ()
        self.classes_changed = Notifier()  # ()
        self.saved = Notifier()  # ()
        self._items: list[Annotation] = []
        self._classes: dict[str, RGB] = {}
        self._undo: list[Command] = []
        self._redo: list[Command] = []
        self.selection: tuple[int, ...] = ()
        #: Classes marked exclude in the class list: their areas are taken out of every model run
        #: (a run setting, not an edit: neither undone nor saved in the file).
        self.excluded_classes: frozenset[str] = frozenset()
        self.dirty = False
        self.version = 0  # bumped on every change: painters key their caches on it
        self._bounds, self._bounds_version = np.zeros((0, 4)), 0  # (x0, y0, x1, y1) per annotation, for hit()
        if annotations is not None:
            self.replace_all(annotations, mark_dirty=False)

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Annotation:
        return self._items[index]

    @property
    def annotations(self) -> tuple[Annotation, ...]:
        return tuple(self._items)

    @property
    def classes(self) -> dict[str, RGB]:
        return dict(self._classes)

    def class_color(self, name: str | None) -> RGB:
        if name is None:
            return (255, 255, 0)
        return self._classes.get(name) or default_class_color(name)

    def color_of(self, a: Annotation) -> RGB:
        return a.color or self.class_color(a.class_name)

    def to_set(self) -> AnnotationSet:
        """An engine set of everything (for saving and exporting)."""
        return AnnotationSet(self._items, self._classes)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_label(self) -> str | None:
        return self._undo[-1].label if self._undo else None

    @property
    def redo_label(self) -> str | None:
        return self._redo[-1].label if self._redo else None

    def hit(self, l0_x: float, l0_y: float, tolerance_l0: float = 0.0) -> int | None:
        """The topmost annotation under a level-0 point (within ``tolerance_l0`` of lines and points).

        Called on every mouse move (the UI thread): the bounding boxes are one array, made once
        per document version, so only the annotations whose box holds the point are measured."""
        if self._bounds_version != self.version:
            self._bounds = np.array([a.l0_box.as_tuple() for a in self._items], np.float64).reshape(-1, 4)
            self._bounds_version = self.version
        b, t = self._bounds, tolerance_l0
        near = (b[:, 0] - t <= l0_x) & (l0_x <= b[:, 2] + t) & (b[:, 1] - t <= l0_y) & (l0_y <= b[:, 3] + t)
        point = shapely.Point(l0_x, l0_y)
        for index in np.flatnonzero(near)[::-1]:
            if self._items[index].geometry.distance(point) <= tolerance_l0:
                return int(index)
        return None

    # -- commands --------------------------------------------------------------------------
    def _apply(self, label: str, items: list[Annotation], classes: dict[str, RGB] | None = None,
               selection: tuple[int, ...] = ()) -> None:
        classes = self._classes if classes is None else classes
        command = Command(label, tuple(self._items), tuple(items), tuple(self._classes.items()),
                          tuple(classes.items()), selection)
        self._undo.append(command)
        del self._undo[:-UNDO_LIMIT]
        self._redo.clear()
        self._install(command.after, command.classes_after, selection, command.before)

    def _install(self, items: tuple[Annotation, ...], classes: tuple[tuple[str, RGB], ...],
                 selection: tuple[int, ...], previous: tuple[Annotation, ...]) -> None:
        classes_moved = dict(classes) != self._classes
        self._items, self._classes = list(items), dict(classes)
        self.dirty = True
        self.version += 1
        old, new = {id(a) for a in previous}, {id(a) for a in items}
        touched = [a for a in previous if id(a) not in new] + [a for a in items if id(a) not in old]
        self.changed.emit(None if classes_moved else union_box(touched))
        if classes_moved:
            self.classes_changed.emit()
        self.select(selection)

    def undo(self) -> None:
        if self._undo:
            c = self._undo.pop()
            self._redo.append(c)
            self._install(c.before, c.classes_before, (), c.after)

    def redo(self) -> None:
        if self._redo:
            c = self._redo.pop()
            self._undo.append(c)
            self._install(c.after, c.classes_after, c.selection_after, c.before)

    def add(self, annotations: Iterable[Annotation], label: str = "add", classes: dict[str, RGB] | None = None) -> None:
        """Append annotations (selected afterwards); ``classes``: colours for classes this
        document does not have yet (an imported file's), else each gets its default colour."""
        new = list(annotations)
        if not new:
            return
        given, classes = classes or {}, dict(self._classes)
        for name, rgb in given.items():
            classes.setdefault(name, rgb)
        for a in new:
            if a.class_name is not None and a.class_name not in classes:
                classes[a.class_name] = default_class_color(a.class_name)
        start = len(self._items)
        self._apply(label, self._items + new, classes, tuple(range(start, start + len(new))))

    def delete(self, indices: Iterable[int]) -> None:
        gone = set(indices)
        if gone:
            self._apply("delete", [a for i, a in enumerate(self._items) if i not in gone])

    def delete_selected(self) -> None:
        self.delete(self.selection)

    def move(self, indices: Iterable[int], l0_dx: float, l0_dy: float) -> None:
        indices = tuple(indices)
        if not indices or (l0_dx == 0 and l0_dy == 0):
            return
        items = list(self._items)
        for i in indices:
            a = items[i]
            items[i] = a.replace(geometry=shapely.transform(a.geometry, lambda xy: xy + (l0_dx, l0_dy)))
        self._apply("move", items, selection=indices)

    def edit_vertex(self, index: int, ring: int, vertex: int, l0_x: float, l0_y: float) -> None:
        """Move one vertex of a polygon (ring 0 the exterior, 1.. its holes); an edit that would
        make the polygon invalid raises :class:`AnnotationError` and changes nothing."""
        a = self._items[index]
        rings = polygon_rings(a)
        if rings is None:
            raise AnnotationError(f"a {a.kind} has no vertices to edit")
        coords = [list(r) for r in rings]
        n = len(coords[ring])
        coords[ring][vertex % n] = (l0_x, l0_y)
        geometry = shapely.Polygon(coords[0], coords[1:])
        kind = "polygon" if a.kind in ("rectangle", "ellipse") else a.kind  # a dragged corner is a polygon now
        items = list(self._items)
        items[index] = a.replace(geometry=geometry, kind=kind)
        self._apply("edit vertex", items, selection=(index,))

    def set_class(self, indices: Iterable[int], class_name: str | None) -> None:
        indices = tuple(indices)
        if not indices:
            return
        classes = dict(self._classes)
        if class_name is not None and class_name not in classes:
            classes[class_name] = default_class_color(class_name)
        items = list(self._items)
        for i in indices:
            items[i] = items[i].replace(class_name=class_name)
        self._apply("change class", items, classes, indices)

    def rename(self, index: int, name: str | None) -> None:
        items = list(self._items)
        items[index] = items[index].replace(name=name or None)
        self._apply("rename", items, selection=(index,))

    def add_class(self, name: str, rgb: RGB | None = None) -> None:
        if not name or name in self._classes:
            raise AnnotationError(f"class {name!r} exists already" if name else "a class needs a name")
        classes = dict(self._classes)
        classes[name] = rgb or default_class_color(name)
        self._apply("add class", list(self._items), classes, self.selection)

    def rename_class(self, old: str, new: str) -> None:
        if not new or new == old:
            return
        if new in self._classes:
            raise AnnotationError(f"class {new!r} exists already")
        classes = {(new if k == old else k): v for k, v in self._classes.items()}
        items = [a.replace(class_name=new) if a.class_name == old else a for a in self._items]
        if old in self.excluded_classes:  # the mark follows the class (and stays on the old name for an undo)
            self.excluded_classes |= {new}
        self._apply("rename class", items, classes, self.selection)

    def recolor_class(self, name: str, rgb: RGB) -> None:
        classes = dict(self._classes)
        classes[name] = tuple(int(c) for c in rgb)
        self._apply("recolour class", list(self._items), classes, self.selection)

    def replace_all(self, annotations: AnnotationSet, *, mark_dirty: bool = True) -> None:
        """Install a loaded file as the whole document; the undo history starts again."""
        classes = {name: annotations.class_color(name) for name in annotations.class_names}
        previous = tuple(self._items)
        self._undo.clear()
        self._redo.clear()
        self._install(tuple(annotations), tuple(classes.items()), (), previous)
        self.dirty = mark_dirty

    def set_excluded(self, name: str, excluded: bool) -> None:
        """Mark (or unmark) class ``name`` exclude; notifies ``classes_changed``."""
        marked = self.excluded_classes | {name} if excluded else self.excluded_classes - {name}
        if marked != self.excluded_classes:
            self.excluded_classes = frozenset(marked)
            self.classes_changed.emit()

    # -- selection and saving --------------------------------------------------------------------
    def select(self, indices: Iterable[int]) -> None:
        selection = tuple(i for i in indices if 0 <= i < len(self._items))
        if selection != self.selection:
            self.selection = selection
            self.selection_changed.emit()

    def mark_saved(self, version: int) -> None:
        """The document as of ``version`` is on disk (later edits keep it dirty)."""
        if version == self.version:
            self.dirty = False
        self.saved.emit()


def polygon_rings(a: Annotation) -> list[list[tuple[float, float]]] | None:
    """A single polygon's rings without the closing vertex (exterior first), or None."""
    if a.geometry.geom_type != "Polygon":
        return None
    rings = [a.geometry.exterior, *a.geometry.interiors]
    return [list(r.coords)[:-1] for r in rings]
