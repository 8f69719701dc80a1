"""The annotation document without Qt: commands, undo/redo, selection, classes, notifications."""

from __future__ import annotations

import pytest

from engine.annotations import Annotation, AnnotationError, AnnotationSet
from engine.geometry import Box
from viewer.model.annotations import UNDO_LIMIT, AnnotationDocument, polygon_rings

SQUARE = [(0, 0), (100, 0), (100, 100), (0, 100)]


def _doc() -> tuple[AnnotationDocument, list]:
    doc = AnnotationDocument()
    events = []
    doc.changed.connect(lambda box: events.append(("changed", box)))
    doc.selection_changed.connect(lambda: events.append(("selection", doc.selection)))
    doc.classes_changed.connect(lambda: events.append(("classes", dict(doc.classes))))
    return doc, events


def test_add_selects_notifies_with_the_box_and_undo_redo_restore():
    doc, events = _doc()
    doc.add([Annotation.polygon(SQUARE, class_name="Tumor")])
    assert len(doc) == 1 and doc.selection == (0,) and doc.dirty
    assert ("changed", None) in events  # a new class: everything repaints
    assert "Tumor" in doc.classes
    doc.add([Annotation.rectangle(Box(200, 200, 300, 260))])
    assert events[-2] == ("changed", Box(200, 200, 300, 260))
    assert doc.undo_label == "add"
    doc.undo()
    assert len(doc) == 1 and doc.selection == () and doc.can_redo
    doc.redo()
    assert len(doc) == 2 and doc.selection == (1,)
    doc.undo()
    doc.undo()
    assert len(doc) == 0 and "Tumor" not in doc.classes and not doc.can_undo
    doc.redo()
    doc.add([Annotation.point(5, 5)])  # a new edit drops the redo branch
    assert not doc.can_redo and len(doc) == 2


def test_move_delete_rename_change_class_are_each_one_undoable_command():
    doc, _ = _doc()
    doc.add([Annotation.polygon(SQUARE, name="a"), Annotation.point(500, 500, name="b")])
    doc.move([0], 10, -5)
    assert doc[0].l0_box == Box(10, -5, 110, 95)
    doc.rename(1, "renamed")
    doc.set_class([0, 1], "Stroma")
    assert [a.class_name for a in doc.annotations] == ["Stroma", "Stroma"] and "Stroma" in doc.classes
    doc.delete([0])
    assert [a.name for a in doc.annotations] == ["renamed"]
    labels = []
    while doc.can_undo:
        labels.append(doc.undo_label)
        doc.undo()
    assert labels == ["delete", "change class", "rename", "move", "add"]
    while doc.can_redo:
        doc.redo()
    assert [a.name for a in doc.annotations] == ["renamed"] and doc[0].class_name == "Stroma"


def test_edit_vertex_moves_one_vertex_and_refuses_an_invalid_polygon():
    doc, _ = _doc()
    doc.add([Annotation.rectangle(Box(0, 0, 100, 100))])
    doc.edit_vertex(0, 0, 2, 150, 120)
    assert doc[0].kind == "polygon"  # a rectangle with a dragged corner is no rectangle
    assert (150, 120) in polygon_rings(doc[0])[0]
    doc.undo()
    assert doc[0].kind == "rectangle"
    doc.add([Annotation.polygon(SQUARE)])
    before = doc.annotations
    with pytest.raises(AnnotationError):  # (0, 0) dragged past the right edge: the outline crosses itself
        doc.edit_vertex(1, 0, 0, 150, 50)
    assert doc.annotations == before and doc.undo_label == "add"


def test_classes_add_rename_recolour_and_undo():
    doc, events = _doc()
    doc.add([Annotation.polygon(SQUARE, class_name="Tumor")])
    doc.add_class("Necrosis", (10, 20, 30))
    with pytest.raises(AnnotationError):
        doc.add_class("Necrosis")
    doc.rename_class("Tumor", "Metastasis")
    assert doc[0].class_name == "Metastasis" and "Tumor" not in doc.classes
    with pytest.raises(AnnotationError):
        doc.rename_class("Metastasis", "Necrosis")
    doc.recolor_class("Metastasis", (1, 2, 3))
    assert doc.color_of(doc[0]) == (1, 2, 3)
    assert events[-1][0] in ("classes", "selection")
    doc.undo()
    doc.undo()
    assert doc[0].class_name == "Tumor" and doc.class_color("Necrosis") == (10, 20, 30)


def test_hit_finds_the_topmost_and_respects_tolerance():
    doc, _ = _doc()
    doc.add([Annotation.polygon(SQUARE), Annotation.rectangle(Box(50, 50, 80, 80)), Annotation.point(300, 300)])
    assert doc.hit(60, 60) == 1
    assert doc.hit(10, 10) == 0
    assert doc.hit(303, 300) is None and doc.hit(303, 300, tolerance_l0=4) == 2


def test_replace_all_loads_without_history_and_saving_clears_dirty_only_for_that_version():
    s = AnnotationSet([Annotation.polygon(SQUARE, class_name="Tumor")], classes={"Tumor": (200, 0, 0)})
    doc = AnnotationDocument(s)
    assert not doc.dirty and not doc.can_undo and doc.class_color("Tumor") == (200, 0, 0)
    doc.move([0], 1, 1)
    saved_version = doc.version
    doc.move([0], 1, 1)
    doc.mark_saved(saved_version)
    assert doc.dirty  # edited after that save began
    doc.mark_saved(doc.version)
    assert not doc.dirty
    assert doc.to_set() == AnnotationSet(doc.annotations, {"Tumor": (200, 0, 0)})


def test_undo_history_is_bounded():
    doc, _ = _doc()
    for i in range(UNDO_LIMIT + 20):
        doc.add([Annotation.point(i, i)])
    n = 0
    while doc.can_undo:
        doc.undo()
        n += 1
    assert n == UNDO_LIMIT and len(doc) == 20
