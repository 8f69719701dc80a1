"""viewer.render.slide_view: rendered pixels against known slide content, navigation, overlays."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QWheelEvent
from PySide6.QtWidgets import QApplication

from engine.geometry import Box
from engine.slides import open_slide
from tests.conftest import BLOCK, STRIPE, STRIPE_BLOCK, block_colour
from viewer.workers.sources import SharedSource


def _show(qtbot, view, path):
    shared = SharedSource(open_slide(path))
    view.set_slide(shared)
    qtbot.waitUntil(lambda: not view.missing_visible_tiles(), timeout=10_000)
    return shared


def _pixel(image, screen_x, screen_y):
    return image.pixelColor(int(screen_x), int(screen_y)).getRgb()[:3]


def _close(a, b, tol=16):
    return max(abs(int(x) - int(y)) for x, y in zip(a, b, strict=True)) <= tol


def _check_blocks(view, l0_points):
    image = view.render_image()
    t = view.viewport.transform()
    for l0_x, l0_y in l0_points:
        sx, sy = t.to_screen(l0_x, l0_y)
        assert 0 <= sx < view.width() and 0 <= sy < view.height(), (l0_x, l0_y)
        got = _pixel(image, sx, sy)
        assert _close(got, block_colour(l0_x, l0_y)), f"l0 ({l0_x}, {l0_y}) shows {got}, expected {block_colour(l0_x, l0_y)}"


def test_fit_view_shows_every_block_in_its_colour(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    assert slide_view.target_level() == 1  # 4096 px in 800 px: downsample ~5 -> the 4x level (index 1)
    centres = [(c * BLOCK + BLOCK // 2, r * BLOCK + BLOCK // 2) for r in range(3) for c in range(4) if (r, c) != STRIPE_BLOCK]
    _check_blocks(slide_view, centres)
    # Outside the slide is the neutral surround, not slide colour.
    image = slide_view.render_image()
    t = slide_view.viewport.transform()
    sx, _ = t.to_screen(4096 + 50, 0)
    if sx < slide_view.width():
        assert _pixel(image, sx, 5) == (48, 48, 52)


@pytest.mark.parametrize("scale, l0_centre", [(0.3, (1100, 900)), (1.0, (2050, 2048)), (2.5, (3071, 1030))])
def test_zoomed_views_show_known_colours_at_their_positions(qtbot, slide_view, synthetic_slide_path, scale, l0_centre):
    _show(qtbot, slide_view, synthetic_slide_path)
    slide_view.viewport.set_scale(scale)
    slide_view.center_on(*l0_centre)
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=10_000)
    box = slide_view.viewport.l0_visible_box().intersect(Box(0, 0, 4096, 3072))
    points = []
    for fx in (0.1, 0.5, 0.9):
        for fy in (0.1, 0.5, 0.9):
            x, y = box.x0 + fx * box.width, box.y0 + fy * box.height
            near_edge = min(x % BLOCK, BLOCK - x % BLOCK, y % BLOCK, BLOCK - y % BLOCK) < 24
            if not near_edge and (int(y) // BLOCK, int(x) // BLOCK) != STRIPE_BLOCK:
                points.append((x, y))
    assert points
    _check_blocks(slide_view, points)


def test_missing_fine_tiles_are_painted_from_coarser_levels_then_sharpen(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    stripe_l0 = (STRIPE_BLOCK[1] * BLOCK + 300 + 1, STRIPE_BLOCK[0] * BLOCK + 300)  # middle of a black stripe
    slide_view.viewport.set_scale(1.0)
    slide_view.center_on(*stripe_l0)
    # No event processing yet: no level-0 tile can have arrived, so a coarser level paints
    # (level 1 is cached from the fitted view; it averages the 2-px stripes to grey).
    assert slide_view.target_level() == 0 and slide_view.missing_visible_tiles()
    image = slide_view.render_image()
    sx, sy = slide_view.viewport.transform().to_screen(*stripe_l0)
    assert all(90 < v < 165 for v in _pixel(image, sx, sy)), "coarse fallback should show the averaged grey"
    assert _close(_pixel(image, sx - 400 + 10, sy), block_colour(stripe_l0[0] - 400 + 10, stripe_l0[1]))  # next block
    qtbot.waitUntil(lambda: not slide_view.missing_visible_tiles(), timeout=10_000)
    image = slide_view.render_image()
    assert max(_pixel(image, sx, sy)) < 70, "level-0 stripes should be black here once loaded"
    assert min(_pixel(image, sx + STRIPE, sy)) > 185


def test_wheel_zooms_about_the_cursor(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    vp = slide_view.viewport
    cursor = QPointF(200, 150)
    before = vp.transform().to_l0(cursor.x(), cursor.y())
    scale0 = vp.scale
    event = QWheelEvent(cursor, slide_view.mapToGlobal(cursor), QPoint(), QPoint(0, 240), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(slide_view, event)
    assert vp.scale == pytest.approx(scale0 * 2)
    assert vp.transform().to_l0(cursor.x(), cursor.y()) == pytest.approx(before)


def test_drag_pans_and_keys_zoom_pan_and_fit(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    vp = slide_view.viewport
    vp.set_scale(0.5)
    slide_view.center_on(2048, 1536)
    qtbot.mousePress(slide_view, Qt.MouseButton.LeftButton, pos=QPoint(400, 300))
    qtbot.mouseMove(slide_view, QPoint(300, 250))
    qtbot.mouseRelease(slide_view, Qt.MouseButton.LeftButton, pos=QPoint(300, 250))
    assert (vp.l0_cx, vp.l0_cy) == pytest.approx((2048 + 100 / 0.5, 1536 + 50 / 0.5))
    qtbot.keyClick(slide_view, Qt.Key.Key_Plus)
    assert vp.scale == pytest.approx(0.75)
    qtbot.keyClick(slide_view, Qt.Key.Key_Minus)
    assert vp.scale == pytest.approx(0.5)
    cx = vp.l0_cx
    qtbot.keyClick(slide_view, Qt.Key.Key_Right)
    assert vp.l0_cx == pytest.approx(cx + 0.2 * 800 / 0.5)
    qtbot.keyClick(slide_view, Qt.Key.Key_0)
    assert vp.scale == pytest.approx(vp.fit_scale()) and (vp.l0_cx, vp.l0_cy) == (2048, 1536)


def test_cursor_readout_reports_level0_coordinates(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    seen = []
    slide_view.cursor_moved.connect(seen.append)
    qtbot.mouseMove(slide_view, QPoint(400, 300))
    qtbot.waitUntil(lambda: bool(seen))
    assert seen[-1] == pytest.approx(slide_view.viewport.transform().to_l0(400, 300))


def test_magnification_preset_sets_screen_pixels_per_level0_pixel(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)  # scanned at 40x
    slide_view.set_magnification(10)
    assert slide_view.viewport.scale == pytest.approx(0.25)
    assert slide_view.target_level() == 1


class BoxOverlay:
    def __init__(self, l0_box):
        self.l0_box = l0_box
        self.calls = []

    def paint(self, painter, l0_visible_box, view):
        self.calls.append(l0_visible_box)
        r = view.box_to_screen(self.l0_box)
        painter.fillRect(int(r.x0), int(r.y0), int(r.width), int(r.height), QColor(255, 0, 255))


def test_overlay_layers_paint_in_the_level0_plane(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    overlay = BoxOverlay(Box(1000, 1000, 1400, 1400))
    slide_view.add_overlay(overlay)
    image = slide_view.render_image()
    sx, sy = slide_view.viewport.transform().to_screen(1200, 1200)
    assert _pixel(image, sx, sy) == (255, 0, 255)
    sx, sy = slide_view.viewport.transform().to_screen(1600, 1200)
    assert _pixel(image, sx, sy) != (255, 0, 255)
    assert overlay.calls[-1] == Box(0, 0, 4096, 3072).intersect(slide_view.viewport.l0_visible_box())
    slide_view.remove_overlay(overlay)
    sx, sy = slide_view.viewport.transform().to_screen(1200, 1200)
    assert _pixel(slide_view.render_image(), sx, sy) != (255, 0, 255)


def test_real_slide_renders_tissue(qtbot, slide_view, real_slide_path):
    _show(qtbot, slide_view, real_slide_path)
    pixels = np.array([[_pixel(slide_view.render_image(), x, y) for x in range(100, 700, 25)] for y in range(100, 500, 25)])
    assert pixels.std() > 10  # tissue texture, not a flat fill
    assert (pixels.mean(axis=2) < 220).mean() > 0.2  # a good share of stained (non-white) pixels


def test_overlay_repaints_blit_the_slide_layer_instead_of_drawing_tiles(qtbot, slide_view, synthetic_slide_path):
    _show(qtbot, slide_view, synthetic_slide_path)
    slide_view.repaint()  # renders the slide layer for this view
    overlay = BoxOverlay(Box(1000, 1000, 1400, 1400))
    slide_view.add_overlay(overlay)
    slide_view.update_l0_box(Box(1000, 1000, 1400, 1400))  # what a live map patch does
    slide_view.repaint()
    assert slide_view.paint_log[-1][2] == 0, "no tile is drawn again when only an overlay changed"
    image = slide_view.grab().toImage()
    t = slide_view.viewport.transform()
    assert _pixel(image, *t.to_screen(1200, 1200)) == (255, 0, 255)
    assert _close(_pixel(image, *t.to_screen(1600, 1200)), block_colour(1600, 1200))
    assert _close(_pixel(image, *t.to_screen(2500, 2500)), block_colour(2500, 2500))
