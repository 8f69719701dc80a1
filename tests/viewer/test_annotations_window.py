"""Annotations in the main window, driven by mouse, keys and menus: drawing, editing, undo,
classes, import/export, drag and drop, autosave, and maps turned into annotations."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from engine.annotations import Annotation, AnnotationSet, load_annotations, save_annotations
from engine.geometry import Box, MapGeometry
from viewer.model.layers import LayerKey
from viewer.workers.annotation_jobs import SIDECAR_SUFFIX


@pytest.fixture
def slide(tmp_path, synthetic_slide_path):
    """A private copy of the synthetic slide, so its sidecar file belongs to this test."""
    return shutil.copy(synthetic_slide_path, tmp_path / "slide.svs")


@pytest.fixture
def window(open_window):
    return open_window(cache_mb=128)


def _open(qtbot, window, path):
    with qtbot.waitSignal(window.annotations.document_shown, timeout=10_000):
        window.slides.show_or_open(str(path))
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    qtbot.waitUntil(lambda: window.annotation_runner.pending == 0, timeout=10_000)  # the sidecar look-up
    return window.annotations.document


def _l0(window, x, y):
    return window.view.viewport.transform().to_l0(x, y)


def _drag(qtbot, view, a, b, steps=5):
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(*a))
    for i in range(1, steps + 1):
        qtbot.mouseMove(view, QPoint(a[0] + (b[0] - a[0]) * i // steps, a[1] + (b[1] - a[1]) * i // steps))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(*b))


def _tool(window, name):
    window.annotation_toolbar.tool_actions[name].trigger()


def test_polygon_by_clicks_then_undo_redo_and_delete(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    view = window.view
    _tool(window, "polygon")
    clicks = [(300, 200), (500, 220), (480, 400), (320, 380)]
    for x, y in clicks[:-1]:
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(x, y))
    qtbot.mouseDClick(view, Qt.MouseButton.LeftButton, pos=QPoint(*clicks[-1]))
    assert len(doc) == 1 and doc[0].kind == "polygon"
    ring = np.asarray(doc[0].geometry.exterior.coords)[:-1]
    np.testing.assert_allclose(ring, [_l0(window, x, y) for x, y in clicks])
    assert doc.selection == (0,)
    window.annotation_toolbar.delete_action.trigger()
    assert len(doc) == 0
    window.annotation_toolbar.undo_action.trigger()
    assert len(doc) == 1
    window.annotation_toolbar.undo_action.trigger()
    assert len(doc) == 0
    window.annotation_toolbar.redo_action.trigger()
    window.annotation_toolbar.redo_action.trigger()
    assert len(doc) == 0 and doc.can_undo


def test_keys_pick_tools_and_undo(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    window.activateWindow()
    window.view.setFocus()
    qtbot.waitUntil(window.view.hasFocus)
    qtbot.keyClick(window.view, Qt.Key.Key_R)
    assert window.annotation_tools.tool == "rectangle"
    _drag(qtbot, window.view, (200, 200), (260, 240))
    assert len(doc) == 1
    qtbot.keyClick(window.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(doc) == 0
    qtbot.keyClick(window.view, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert len(doc) == 1
    qtbot.keyClick(window.view, Qt.Key.Key_S)
    assert window.annotation_tools.tool == "select"


def test_rectangle_by_drag_then_move_and_vertex_edit(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    view = window.view
    _tool(window, "rectangle")
    _drag(qtbot, view, (300, 200), (500, 350))
    assert len(doc) == 1 and doc[0].kind == "rectangle"
    (ax, ay), (bx, by) = _l0(window, 300, 200), _l0(window, 500, 350)
    np.testing.assert_allclose(doc[0].l0_box.as_tuple(), (ax, ay, bx, by))
    _tool(window, "select")
    doc.select(())
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(400, 270))
    assert doc.selection == (0,)
    _drag(qtbot, view, (400, 270), (450, 300))  # drag the inside: moves it
    scale = view.viewport.scale
    np.testing.assert_allclose(doc[0].l0_box.as_tuple(), (ax + 50 / scale, ay + 30 / scale, bx + 50 / scale, by + 30 / scale))
    assert doc.undo_label == "move"
    # Drag the bottom-right corner's handle out: that vertex moves, the others stay.
    corner = view.viewport.transform().to_screen(bx + 50 / scale, by + 30 / scale)
    _drag(qtbot, view, (round(corner[0]), round(corner[1])), (round(corner[0]) + 40, round(corner[1]) + 20))
    assert doc[0].kind == "polygon" and doc.undo_label == "edit vertex"
    ring = np.asarray(doc[0].geometry.exterior.coords)[:-1]
    moved = _l0(window, round(corner[0]) + 40, round(corner[1]) + 20)
    assert np.isclose(ring, moved).all(axis=1).any()
    assert np.isclose(ring, (ax + 50 / scale, ay + 30 / scale)).all(axis=1).any()


def test_brush_lasso_ellipse_point_tools_make_their_shapes(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    view = window.view
    _tool(window, "brush")
    _drag(qtbot, view, (200, 200), (300, 220))
    _tool(window, "lasso")
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(400, 200))
    for p in ((480, 210), (470, 300), (410, 290)):
        qtbot.mouseMove(view, QPoint(*p))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(400, 260))
    _tool(window, "ellipse")
    _drag(qtbot, view, (600, 200), (700, 260))
    _tool(window, "point")
    qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(650, 400))
    assert [a.kind for a in doc.annotations] == ["polygon", "polygon", "ellipse", "point"]
    scale = view.viewport.scale
    brush = doc[0].l0_box
    assert brush.width * scale == pytest.approx(100 + 24, abs=2)  # the stroke plus the brush on both ends


def test_classes_rename_recolour_and_new_annotations_take_the_current_class(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    classes = window.annotation_classes
    classes.add_class("Tumor", (200, 0, 0))
    _tool(window, "rectangle")
    _drag(qtbot, window.view, (300, 200), (500, 350))
    assert doc[0].class_name == "Tumor"
    classes.rename_current("Metastasis")
    classes.recolor_current((0, 0, 255))
    assert doc[0].class_name == "Metastasis" and doc.class_color("Metastasis") == (0, 0, 255)
    names = [classes.list.item(i).text() for i in range(classes.list.count())]
    assert names == ["(no class)", "Metastasis"]
    assert window.annotation_list.table.item(0, 1).text() == "Metastasis"
    image = window.view.render_image()
    edge = image.pixelColor(300, 275).getRgb()[:3]  # on the rectangle's left edge
    assert edge[2] > 150 and edge[0] < 100
    doc.undo()
    assert doc.class_color("Metastasis") != (0, 0, 255)


def test_annotation_list_shows_area_in_square_microns_and_centres_the_view(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    doc.add([Annotation.rectangle(Box(100, 100, 500, 300), name="small"), Annotation.rectangle(Box(3000, 2000, 3400, 2400))])
    table = window.annotation_list.table
    assert table.rowCount() == 2 and table.item(0, 0).text() == "small"
    assert table.item(0, 2).text() == f"{400 * 200 * 0.25 * 0.25:,.0f}"  # the slide is 0.25 µm/px
    table.selectRow(1)
    assert doc.selection == (1,)
    vp = window.view.viewport
    assert (vp.l0_cx, vp.l0_cy) == pytest.approx((3200, 2200))


@pytest.mark.parametrize("suffix", [".geojson", ".xml"])
def test_export_then_import_round_trips(qtbot, window, slide, tmp_path, suffix):
    doc = _open(qtbot, window, slide)
    doc.add([Annotation.polygon([(10, 10), (400, 30), (300, 500)], class_name="Tumor", name="a"),
             Annotation.rectangle(Box(600, 600, 900, 800), class_name="Stroma", name="b")])
    doc.recolor_class("Tumor", (12, 34, 56))
    out = tmp_path / f"out{suffix}"
    with qtbot.waitSignal(window.annotations.saved, timeout=10_000):
        window.annotations.export_file(str(out))
    exported = doc.to_set()
    doc.delete(range(len(doc)))
    with qtbot.waitSignal(window.annotations.loaded, timeout=10_000):
        window.annotations.import_file(str(out))
    assert [(a.name, a.class_name, a.kind) for a in doc.annotations] == [("a", "Tumor", "polygon"), ("b", "Stroma", "rectangle")]
    for got, want in zip(doc.annotations, exported, strict=True):
        assert got.geometry.equals(want.geometry)
    assert doc.class_color("Tumor") == (12, 34, 56)


def test_malformed_import_reports_and_changes_nothing(qtbot, window, slide, tmp_path):
    doc = _open(qtbot, window, slide)
    doc.add([Annotation.point(5, 5)])
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon"}}]}')
    with qtbot.waitSignal(window.error_reported, timeout=10_000) as blocker:
        window.annotations.import_file(str(bad))
    assert "bad.geojson" in blocker.args[0] and "nothing changed" in blocker.args[0]
    assert len(doc) == 1


def test_dropping_an_annotation_file_imports_it(qtbot, window, slide, tmp_path):
    doc = _open(qtbot, window, slide)
    path = tmp_path / "dropped.xml"
    save_annotations(AnnotationSet([Annotation.polygon([(0, 0), (100, 0), (50, 80)], class_name="_0")]), path)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(300, 300), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.annotations.loaded, timeout=10_000):
        window.dropEvent(event)
    assert len(doc) == 1 and doc[0].class_name == "_0"
    assert window.workspace.current_key == str(slide.resolve())  # not opened as a slide


def test_autosave_beside_the_slide_and_reload_on_open(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    doc.add([Annotation.rectangle(Box(10, 20, 110, 220), class_name="Tumor", name="kept")])
    sidecar = slide.with_name(slide.name + SIDECAR_SUFFIX)
    with qtbot.waitSignal(window.annotations.saved, timeout=10_000):
        pass
    assert not doc.dirty
    assert [a.name for a in load_annotations(sidecar).annotations] == ["kept"]
    window.slides.close_current()
    qtbot.waitUntil(lambda: window.workspace.current is None)
    with qtbot.waitSignal(window.annotations.loaded, timeout=10_000):
        window.slides.show_or_open(str(slide))
    reloaded = window.annotations.document
    assert reloaded is not doc and [a.name for a in reloaded.annotations] == ["kept"] and not reloaded.dirty


def test_read_only_slide_folder_saves_to_the_chosen_folder(qtbot, window, slide, tmp_path, monkeypatch):
    import os

    real_access = os.access
    # chmod does not stop root (these tests may run as root): the folder answers "not writable" instead.
    monkeypatch.setattr("viewer.workers.annotation_jobs.os.access",
                        lambda path, mode: False if str(path) == str(slide.parent) else real_access(path, mode))
    doc = _open(qtbot, window, slide)
    with qtbot.waitSignal(window.annotations.saved, timeout=10_000) as blocker:
        doc.add([Annotation.point(5, 5)])
    assert blocker.args[0] == str(tmp_path / "fallback" / ("slide.svs" + SIDECAR_SUFFIX))
    assert not slide.with_name(slide.name + SIDECAR_SUFFIX).exists()
    assert len(load_annotations(blocker.args[0]).annotations) == 1


def test_overlay_to_annotations_on_a_synthetic_map(qtbot, window, slide, monkeypatch):
    doc = _open(qtbot, window, slide)
    values = np.zeros((30, 40), np.float32)
    values[5:10, 5:15] = 0.9  # 50 cells
    values[20:28, 25:35] = 0.7  # 80 cells, with a low hole
    values[23:25, 29:31] = 0.1
    key = LayerKey("saliency")
    grid = MapGeometry(Box(0, 0, 4000, 3000), (30, 40))  # 100 l0 px cells
    stack = window.live.stack_for(window.workspace.current_key)
    stack.add_layer(key, grid, values, (0.0, 0.9))
    window.overlay_painter.set_stack(stack)
    window.overlay_panel.set_stack(stack)
    stack.set_active(key)
    stack.set_style(key, threshold=0.5, visible=True)
    monkeypatch.setattr("viewer.window_dialogs.QInputDialog.getItem", lambda *a, **k: ("Hot", True))
    with qtbot.waitSignal(window.annotations.loaded, timeout=10_000):
        window.overlay_panel.to_annotations_button.click()
    assert len(doc) == 2 and {a.class_name for a in doc.annotations} == {"Hot"}
    assert sorted(a.name for a in doc.annotations) == ["saliency ≥ 0.5 #1", "saliency ≥ 0.5 #2"]
    areas = sorted(a.area_l0 for a in doc.annotations)
    assert areas == pytest.approx([50 * 100 * 100, 76 * 100 * 100])
    assert sum(len(a.geometry.interiors) for a in doc.annotations) == 1
    doc.move([0], 5, 5)  # editable like any other
    doc.undo()
    doc.undo()
    assert len(doc) == 0


def test_to_annotations_without_a_threshold_says_so(qtbot, window, slide):
    _open(qtbot, window, slide)
    key = LayerKey("saliency")
    stack = window.live.stack_for(window.workspace.current_key)
    stack.add_layer(key, MapGeometry(Box(0, 0, 4000, 3000), (3, 4)), np.ones((3, 4), np.float32), (1.0, 1.0))
    stack.set_active(key)
    with qtbot.waitSignal(window.error_reported, timeout=5_000) as blocker:
        assert not window.annotations.to_annotations(stack, "Hot")
    assert "threshold" in blocker.args[0]


def test_large_outline_is_simplified_on_a_worker_and_painted(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    t = np.linspace(0, 2 * np.pi, 10_000, endpoint=False)
    ring = np.column_stack([2000 + 1000 * np.cos(t), 1500 + 1000 * np.sin(t)])
    painter = window.annotation_painter
    ready = painter.paths_ready
    doc.add([Annotation.polygon(ring, class_name="Tumor")])
    doc.recolor_class("Tumor", (0, 255, 0))
    assert painter.pending == 1
    qtbot.waitUntil(lambda: painter.paths_ready > ready, timeout=10_000)
    image = window.view.render_image()
    x, y = window.view.viewport.transform().to_screen(3000, 1500)  # the circle's right-most point
    colour = image.pixelColor(round(x) - 1, round(y)).getRgb()[:3]
    assert colour[1] > 150 and colour[0] < 120


def test_hovering_an_annotation_labels_it(qtbot, window, slide):
    doc = _open(qtbot, window, slide)
    t = window.view.viewport.transform()
    doc.add([Annotation.rectangle(Box(*t.to_l0(100, 200), *t.to_l0(250, 350)), class_name="Tumor", name="lesion")])
    _tool(window, "select")
    qtbot.mouseMove(window.view, QPoint(175, 270))
    qtbot.waitUntil(lambda: window.annotation_painter.hover_index == 0)
    with_label = window.view.render_image()
    qtbot.mouseMove(window.view, QPoint(400, 600))
    qtbot.waitUntil(lambda: window.annotation_painter.hover_index is None)
    without = window.view.render_image()
    assert window.view.width() > 400  # every position above is on the view
    # The label sits just above the box's top-left corner.
    band = [(x, y) for x in range(100, 160, 3) for y in range(180, 198, 2)]
    assert any(with_label.pixelColor(x, y) != without.pixelColor(x, y) for x, y in band)

