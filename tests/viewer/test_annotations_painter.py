"""The annotation painter's simplified outlines: the pick per zoom and what each level keeps."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from viewer.render.annotation_painter import SCREEN_TOLERANCE, pick_tolerance
from viewer.workers.annotation_jobs import L0_TOLERANCES, outline_paths, painter_path


@pytest.mark.parametrize("scale", [8.0, 1.0, 0.3, 0.026, 0.001])
def test_pick_is_the_coarsest_tolerance_within_a_screen_pixel(scale):
    t = pick_tolerance(scale)
    assert t * scale <= SCREEN_TOLERANCE
    coarser = [x for x in L0_TOLERANCES if x > t]
    assert not coarser or coarser[0] * scale > SCREEN_TOLERANCE


def test_a_10000_vertex_outline_is_a_few_hundred_segments_zoomed_out_and_stays_on_its_outline():
    t = np.linspace(0, 2 * np.pi, 10_000, endpoint=False)
    rng = np.random.default_rng(0)
    r = 6000 * (1 + 0.15 * np.sin(5 * t) + rng.normal(0, 0.001, len(t)))
    polygon = shapely.Polygon(np.column_stack([r * np.cos(t), r * np.sin(t)]))
    paths = outline_paths(polygon)
    assert set(paths) == set(L0_TOLERANCES)
    assert paths[0.0].elementCount() == 10_001
    fit = pick_tolerance(1000 / 40_000)  # a 40k slide fitted to 1000 px
    assert paths[fit].elementCount() < 600
    simple = shapely.simplify(polygon, fit, preserve_topology=False)
    assert polygon.hausdorff_distance(simple) <= fit + 1e-6  # within a screen pixel of the true outline


def test_an_outline_smaller_than_a_tolerance_keeps_its_finer_path():
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    circle = shapely.Polygon(np.column_stack([30 * np.cos(t), 30 * np.sin(t)]))
    paths = outline_paths(circle)
    collapsed = [x for x in L0_TOLERANCES if shapely.simplify(circle, x, preserve_topology=False).is_empty]
    assert collapsed  # a 60-px circle vanishes at the coarse tolerances...
    finest_kept = max(x for x in L0_TOLERANCES if x < collapsed[0])
    assert all(paths[x] is paths[finest_kept] for x in collapsed)  # ...and is drawn as it was last
    assert not paths[finest_kept].isEmpty()


def test_small_outlines_keep_only_the_exact_path_and_holes_are_subpaths():
    square = shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4)]])
    assert set(outline_paths(square)) == {0.0}
    path = painter_path(square)
    assert path.elementCount() == 5 + 4
    assert not path.contains(path.pointAtPercent(0).__class__(3.5, 2.5))  # inside the hole: odd-even


def test_frames_while_the_view_moves_take_the_two_pixel_paths_and_still_frames_the_one_pixel_ones(qapp, monkeypatch):
    from PySide6.QtGui import QImage, QPainter

    from engine.annotations import Annotation
    from viewer.model.annotations import AnnotationDocument
    from viewer.model.viewport import Viewport
    from viewer.render import annotation_painter
    from viewer.render.annotation_painter import MOVING_SCREEN_TOLERANCE, AnnotationPainter

    t = np.linspace(0, 2 * np.pi, 10_000, endpoint=False)
    r = 6000 * (1 + 0.15 * np.sin(5 * t) + np.random.default_rng(0).normal(0, 0.001, len(t)))
    doc = AnnotationDocument()
    doc.add([Annotation.polygon(np.column_stack([20_000 + r * np.cos(t), 20_000 + r * np.sin(t)]))])
    moving = [True]
    painter = AnnotationPainter(lambda box: None, lambda fn, *args, on_done: on_done(fn(*args)), lambda: moving[0])
    painter.set_document(doc)
    viewport = Viewport(40_000, 40_000, 1920, 1080)
    viewport.set_scale(5 / 40)
    viewport.center_on(20_000, 20_000)
    drawn = []
    monkeypatch.setattr(annotation_painter.QPainter, "drawPath", lambda self, path: drawn.append(path.elementCount()))
    image = QImage(1920, 1080, QImage.Format.Format_ARGB32_Premultiplied)
    for moving[0] in (True, False):
        qp = QPainter(image)
        painter.paint(qp, viewport.l0_visible_box(), viewport.transform())
        qp.end()
    paths = painter._paths[id(doc[0])][1]
    at_rest, in_motion = pick_tolerance(viewport.scale), pick_tolerance(viewport.scale, MOVING_SCREEN_TOLERANCE)
    assert in_motion > at_rest and in_motion * viewport.scale <= MOVING_SCREEN_TOLERANCE
    assert drawn == [paths[in_motion].elementCount(), paths[at_rest].elementCount()]
    assert drawn[0] < drawn[1] / 2  # the hand jitter kept at one pixel, dropped at two


@pytest.mark.parametrize("scale, all_shown", [(4.0, True), (0.05, False)])
def test_vertex_handles_are_drawn_where_they_are_spaced_on_screen(qapp, monkeypatch, scale, all_shown):
    """A selected outline shows a handle per vertex when zoomed in; zoomed out, handles closer
    than two handle widths are left out instead of merging into a band over the outline."""
    from PySide6.QtGui import QImage, QPainter

    from engine.annotations import Annotation
    from viewer.model.annotations import AnnotationDocument
    from viewer.model.viewport import Viewport
    from viewer.render import annotation_painter
    from viewer.render.annotation_painter import HANDLE_PX, AnnotationPainter

    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    ring = np.column_stack([5000 + 1000 * np.cos(t), 5000 + 1000 * np.sin(t)])  # vertices 15.7 l0 px apart
    doc = AnnotationDocument()
    doc.add([Annotation.polygon(ring)])
    doc.select([0])
    painter = AnnotationPainter(lambda box: None, lambda fn, *args, on_done: on_done(fn(*args)), lambda: False)
    painter.set_document(doc)
    viewport = Viewport(10_000, 10_000, 1920, 1080)
    viewport.set_scale(scale)
    viewport.center_on(5000, 5000)
    handles = []
    monkeypatch.setattr(annotation_painter.QPainter, "drawRect",
                        lambda self, rect: handles.append((rect.center().x(), rect.center().y())))
    image = QImage(1920, 1080, QImage.Format.Format_ARGB32_Premultiplied)
    qp = QPainter(image)
    painter.paint(qp, viewport.l0_visible_box(), viewport.transform())
    qp.end()
    if all_shown:
        assert len(handles) >= 400  # every vertex (the closing one may repeat the first)
    else:
        assert 0 < len(handles) < 100
        gaps = np.abs(np.diff(np.array(handles), axis=0)).sum(axis=1)
        assert gaps.min() >= 2 * HANDLE_PX
