"""viewer.model.viewport: viewport maths, presets, scale-bar lengths, status readouts (no Qt)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from viewer.model.viewport import (
    MAX_SCALE,
    Viewport,
    available_presets,
    describe_position,
    describe_zoom,
    format_length_um,
    native_magnification,
    nice_scale_bar_um,
)


def test_the_model_package_imports_no_qt():
    """viewer.model is plain Python: importing all of it loads neither Qt nor torch."""
    code = ("import pkgutil, importlib, sys, viewer.model\n"
            "for m in pkgutil.iter_modules(viewer.model.__path__): importlib.import_module('viewer.model.' + m.name)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'torch')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_fit_centres_the_slide_and_shows_all_of_it():
    vp = Viewport(4000, 2000, 800, 600)
    assert vp.scale == pytest.approx(0.2)
    box = vp.l0_visible_box()
    assert box.x0 == pytest.approx(0) and box.x1 == pytest.approx(4000)
    assert box.y0 <= 0 and box.y1 >= 2000


def test_zoom_about_keeps_the_point_under_the_cursor_and_respects_limits():
    vp = Viewport(4000, 2000, 800, 600)
    before = vp.transform().to_l0(100, 500)
    vp.zoom_about(100, 500, 3.0)
    assert vp.transform().to_l0(100, 500) == pytest.approx(before)
    vp.zoom_about(100, 500, 1e6)
    assert vp.scale == MAX_SCALE
    vp.zoom_about(100, 500, 1e-6)
    assert vp.scale == pytest.approx(vp.min_scale)


def test_pan_moves_content_with_the_drag_and_stays_on_the_slide():
    vp = Viewport(4000, 2000, 800, 600)
    vp.set_scale(1.0)
    vp.pan_screen(100, -50)
    assert (vp.l0_cx, vp.l0_cy) == pytest.approx((1900, 1050))
    vp.pan_screen(1e6, 1e6)
    assert (vp.l0_cx, vp.l0_cy) == (0, 0)


def test_transform_round_trip():
    t = Viewport(4000, 2000, 800, 600).transform()
    assert t.to_l0(*t.to_screen(1234.5, 987.25)) == pytest.approx((1234.5, 987.25))


def test_magnification_from_objective_or_mpp_and_presets_up_to_it():
    assert native_magnification(20, (0.5, 0.5)) == 20
    assert native_magnification(None, (0.25, 0.25)) == pytest.approx(40)
    assert native_magnification(None, None) is None
    assert available_presets(20) == [1.25, 2.5, 5.0, 10.0, 20.0]
    assert available_presets(None) == []


@pytest.mark.parametrize("um_per_px, max_px, expected", [(0.5, 160, 50), (2.0, 160, 200), (30, 160, 2000), (0.01, 160, 1)])
def test_scale_bar_picks_the_longest_1_2_5_length_that_fits(um_per_px, max_px, expected):
    assert nice_scale_bar_um(um_per_px, max_px) == pytest.approx(expected)


def test_lengths_are_written_in_um_or_mm():
    assert format_length_um(200) == "200 µm"
    assert format_length_um(2000) == "2 mm"


def test_status_readouts_say_where_and_how_far_in():
    assert describe_position(1234.7, 99.2, None) == "x 1234  y 99 px"
    assert describe_position(4000, 2000, (0.25, 0.25)) == "x 4000  y 2000 px  ·  1 mm, 500 µm"
    assert describe_zoom(10.0, 1, 4.0, False, 0.25) == "10×  ·  level 1 (4×↓)  zoom 25%"
    assert describe_zoom(None, 3, 8.0, True, 0.1) == "level 3 (8×↓, virtual)  zoom 10%"
