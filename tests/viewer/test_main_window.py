"""The main window driven through its widgets: open, switch, inspect, export, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage
from PySide6.QtWidgets import QApplication

from engine.io.svs import write_svs_array
from tests.conftest import BLOCK, block_colour
from viewer.workers.images import qimage_to_rgb


@pytest.fixture
def window(open_window):
    return open_window(cache_mb=128)


def _open(qtbot, window, path):
    with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
        window.slides.show_or_open(str(path))
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)


@pytest.fixture
def second_slide(tmp_path):
    rgb = np.full((1500, 2000, 3), (30, 160, 160), np.uint8)
    return write_svs_array(tmp_path / "second.svs", rgb, downsamples=(1, 4), mpp=0.5, app_mag=20)


def _centre_colour(window):
    image = window.view.render_image()
    return image.pixelColor(image.width() // 2, image.height() // 2).getRgb()[:3]


def _colour_at(window, l0_x, l0_y):
    image = window.view.render_image()
    x, y = window.view.viewport.transform().to_screen(l0_x, l0_y)
    return image.pixelColor(int(x), int(y)).getRgb()[:3]


def test_open_shows_slide_properties_overview_and_associated_images(qtbot, window, synthetic_slide_path):
    _open(qtbot, window, synthetic_slide_path)
    assert window.workspace.current_key == str(synthetic_slide_path.resolve())
    keys = window.properties.visible_keys()
    assert {"Vendor", "Dimensions", "Level 2", "MPP (µm/px)", "Objective power", "aperio.AppMag"} <= set(keys)
    window.properties.search.setText("appmag")
    visible = window.properties.visible_keys()
    assert "aperio.AppMag" in visible and "File" not in visible and "Vendor" not in visible
    qtbot.waitUntil(lambda: window.associated.shown_name == "label", timeout=10_000)
    window.associated.choice.setCurrentText("macro")
    qtbot.waitUntil(lambda: window.associated.shown_name == "macro", timeout=10_000)
    qtbot.waitUntil(lambda: window.overview.has_thumbnail, timeout=10_000)
    # Every preset up to the 40x scan is offered.
    assert all(a.isEnabled() for a in window.mag_actions.values())
    assert "40×" in window.zoom_label.text() or "×" in window.zoom_label.text()


def test_magnification_key_and_overview_click_move_the_view(qtbot, window, synthetic_slide_path):
    _open(qtbot, window, synthetic_slide_path)
    window.view.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_4)  # 10x on a 40x slide: a quarter of level-0 pixels
    assert window.view.viewport.scale == pytest.approx(0.25)
    rect = window.overview.image_rect()
    target = QPoint(int(rect.left() + rect.width() * 0.1), int(rect.top() + rect.height() * 0.9))
    qtbot.mouseClick(window.overview, Qt.MouseButton.LeftButton, pos=target)
    vp = window.view.viewport
    assert vp.l0_cx == pytest.approx(4096 * 0.1, abs=30) and vp.l0_cy == pytest.approx(3072 * 0.9, abs=30)
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    assert max(abs(a - b) for a, b in zip(_centre_colour(window), block_colour(vp.l0_cx, vp.l0_cy), strict=True)) < 16


def test_status_bar_reads_out_level0_pixels_and_microns(qtbot, window, synthetic_slide_path):
    _open(qtbot, window, synthetic_slide_path)
    view = window.view
    point = QPoint(view.width() // 2 - 40, view.height() // 2 - 30)  # on the slide whatever the docks take
    l0_x, l0_y = view.viewport.transform().to_l0(point.x(), point.y())
    qtbot.mouseMove(view, point)
    qtbot.waitUntil(lambda: "px" in window.position_label.text())
    text = window.position_label.text()
    assert f"x {int(l0_x)}" in text and f"y {int(l0_y)}" in text
    assert "µm" in text or "mm" in text


def test_switching_slides_keeps_each_viewport(qtbot, window, synthetic_slide_path, second_slide):
    _open(qtbot, window, synthetic_slide_path)
    window.view.set_magnification(10)
    window.view.center_on(BLOCK * 2.5, BLOCK * 0.5)
    first_scale = window.view.viewport.scale
    _open(qtbot, window, second_slide)
    assert window.slide_combo.count() == 2
    assert max(abs(a - b) for a, b in zip(_centre_colour(window), (30, 160, 160), strict=True)) < 16
    # Switch back through the toolbar's slide list, as a user would.
    index = window.slide_combo.findData(str(synthetic_slide_path.resolve()))
    window.slide_combo.activated.emit(index)
    assert window.workspace.current_key == str(synthetic_slide_path.resolve())
    assert window.view.viewport.scale == first_scale
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    assert max(abs(a - b) for a, b in zip(_centre_colour(window), block_colour(BLOCK * 2.5, BLOCK * 0.5), strict=True)) < 16


def test_browser_lists_folder_with_sizes_and_opens_on_click(qtbot, window, synthetic_slide_path, second_slide, bad_files):
    folder = second_slide.parent  # holds second.svs and the bad files
    window.browser.set_folder(folder)
    item = window.browser.item_for(str(second_slide))
    assert item is not None
    qtbot.waitUntil(lambda: item.text(1) == "2000x1500", timeout=10_000)
    assert item.text(2) == "0.5" and not item.icon(0).isNull()
    bad = window.browser.item_for(str(bad_files["truncated"]))
    qtbot.waitUntil(lambda: bad.text(1) == "unreadable", timeout=10_000)
    assert "truncated.svs" in bad.toolTip(0)
    with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
        rect = window.browser.tree.visualItemRect(item)
        qtbot.mouseClick(window.browser.tree.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.workspace.current_key == str(second_slide.resolve())


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "directory", "missing"])
def test_bad_file_reports_which_and_why_and_the_window_keeps_working(qtbot, window, synthetic_slide_path, bad_files, kind):
    _open(qtbot, window, synthetic_slide_path)
    path = bad_files[kind]
    with qtbot.waitSignal(window.error_reported, timeout=10_000) as blocker:
        window.slides.show_or_open(str(path))
    assert str(path.resolve()) in blocker.args[0]
    assert window.workspace.current_key == str(synthetic_slide_path.resolve())  # still showing the good slide
    window.view.zoom_by(2.0)
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    vp = window.view.viewport
    # A quarter of the way into the view, off the block edges the centre may sit on.
    l0_x, l0_y = vp.l0_cx - vp.screen_w / 4 / vp.scale, vp.l0_cy - vp.screen_h / 4 / vp.scale
    assert max(abs(a - b) for a, b in zip(_colour_at(window, l0_x, l0_y), block_colour(l0_x, l0_y), strict=True)) < 16


def test_corrupt_tile_is_reported_once_and_the_view_still_paints(qtbot, window, corrupt_tile_slide):
    # The slide is 1024 px wide, so the fitted view already needs level 0, tile (1, 1) included.
    with qtbot.waitSignal(window.error_reported, timeout=10_000) as blocker:
        window.slides.show_or_open(str(corrupt_tile_slide))
    assert "corrupt" in blocker.args[0] and "corrupt.svs" in blocker.args[0]
    assert window.view.target_level() == 0
    window.view.zoom_by(1.1)  # moving on must not ask the failed slide again or report again
    qtbot.waitUntil(lambda: window.loader.pending == 0)
    image = window.view.render_image()
    sx, sy = window.view.viewport.transform().to_screen(256 + 128, 256 + 128)  # inside the broken tile
    colour = image.pixelColor(int(sx), int(sy)).getRgb()[:3]
    assert max(abs(a - b) for a, b in zip(colour, block_colour(384, 384), strict=True)) < 16  # painted from level 1
    assert len([e for e in window.errors if "corrupt.svs" in e]) == 1


def test_drop_opens_files_and_recent_menu_remembers_them(qtbot, window, synthetic_slide_path, second_slide):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(second_slide))])
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
        QApplication.sendEvent(window, drop)
    _open(qtbot, window, synthetic_slide_path)
    window.recent_menu.aboutToShow.emit()  # what opening the menu does
    texts = [a.text() for a in window.recent_menu.actions()]
    assert texts[:2] == [str(synthetic_slide_path.resolve()), str(second_slide.resolve())]
    assert window.settings.value("recent_files")[0] == str(synthetic_slide_path.resolve())
    window.close_action.trigger()  # shows the other open slide
    assert window.workspace.current_key == str(second_slide.resolve()) and window.slide_combo.count() == 1
    with qtbot.waitSignal(window.slides.slide_shown, timeout=10_000):
        next(a for a in window.recent_menu.actions() if a.text() == str(synthetic_slide_path.resolve())).trigger()


@pytest.mark.parametrize("factor", [1, 2])
def test_export_writes_the_view_as_png(qtbot, window, synthetic_slide_path, tmp_path, factor):
    _open(qtbot, window, synthetic_slide_path)
    window.view.set_magnification(5)
    window.view.center_on(BLOCK * 1.5, BLOCK * 2.5)
    qtbot.waitUntil(lambda: not window.view.missing_visible_tiles(), timeout=10_000)
    out = tmp_path / f"view{factor}.png"
    with qtbot.waitSignal(window.slides.export_done, timeout=20_000):
        window.export_view(str(out), factor)
    image = QImage(str(out))
    assert (image.width(), image.height()) == (window.view.width() * factor, window.view.height() * factor)
    rgb = qimage_to_rgb(image)
    centre = rgb[rgb.shape[0] // 2, rgb.shape[1] // 2]
    assert np.abs(centre.astype(int) - block_colour(BLOCK * 1.5, BLOCK * 2.5)).max() < 16


def test_real_slide_opens_in_the_window(qtbot, window, real_slide_path):
    _open(qtbot, window, real_slide_path)
    assert window.properties.visible_keys()[:2] == ["File", "Vendor"]
    rgb = qimage_to_rgb(window.view.render_image())
    assert rgb.std() > 10


def test_closing_the_last_slide_clears_the_panels(qtbot, window, synthetic_slide_path):
    _open(qtbot, window, synthetic_slide_path)
    assert window.windowTitle().startswith("synthetic.svs") and window.close_action.isEnabled()
    window.close_action.trigger()
    assert window.workspace.current is None and not window.workspace.slides and window.view.shared is None
    assert window.windowTitle() == "StreamSlide" and not window.properties.visible_keys()
    assert not window.close_action.isEnabled() and not any(a.isEnabled() for a in window.mag_actions.values())
    assert window.slide_combo.count() == 0


def test_app_main_parses_arguments():
    from viewer.app import parse_args

    args = parse_args(["a.svs", "b.ndpi", "--cache-mb", "512"])
    assert args.slides == ["a.svs", "b.ndpi"] and args.cache_mb == 512
