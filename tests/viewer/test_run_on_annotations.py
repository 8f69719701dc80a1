"""Runs on the selected annotations, and classes marked exclude taken out of every run: the
specs the viewer builds (viewer.model.inference, Qt-free) and, in the window with the real
engine on a known-colour slide, a map computed only inside the selected polygon."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from model_fixtures import GREEN_BOXES, save_green_detector, write_test_slide
from PySide6.QtCore import Qt

from engine.annotations import Annotation, AnnotationSet, rasterize
from engine.geometry import Box
from viewer.model.inference import RUN_AREA_CLASS, AnnotationScope, InferenceSettings, scoped_spec
from viewer.model.layers import LayerKey
from viewer.model.viewport import Viewport

# Over the first green square's top-left corner (green, purple and their edges), and a pen mark
# inside it that is excluded.
POLYGON = shapely.Polygon([(160, 64), (416, 64), (416, 304), (304, 304), (160, 160)])
PEN = shapely.box(320, 208, 384, 256)
ELSEWHERE = shapely.box(640, 512, 768, 640)  # the second green square: not selected


def _items():
    return [Annotation.from_geometry(POLYGON, class_name="Tumor"), Annotation.from_geometry(PEN, class_name="Pen"),
            Annotation.from_geometry(ELSEWHERE, class_name="Tumor"), Annotation.point(500, 500, class_name="Pen")]


def _spec(scope, annotations, l0_region=None):
    viewport = Viewport(1024, 768, 800, 600)
    return scoped_spec(scope, "s.svs", "m.json", InferenceSettings(), viewport, l0_region, annotations)


def test_the_selection_is_the_runs_regions_and_only_it():
    items = _items()
    scope = AnnotationScope.of(items, (0, 3), ())  # the point has no area: not a region
    assert scope.selected == (items[0],) and scope.excluded == ()
    spec = _spec("selection", scope)
    assert isinstance(spec.regions, AnnotationSet) and list(spec.regions) == [items[0]]
    assert spec.include_classes == () and spec.exclude_classes == () and spec.l0_region is None
    assert spec.priority_l0_box is not None  # the map still starts where the user looks
    with pytest.raises(ValueError, match="selected annotations"):
        _spec("selection", AnnotationScope.of(items, (3,), ()))


def test_excluded_classes_go_into_every_scope():
    items = _items()
    scope = AnnotationScope.of(items, (0,), ("Pen",))
    assert scope.excluded == (items[1],) and scope.exclude_classes == ("Pen",)
    spec = _spec("selection", scope)
    # The selected polygon becomes the one included class: the other Tumor outline is not run on.
    assert spec.include_classes == (RUN_AREA_CLASS,) and spec.exclude_classes == ("Pen",)
    assert [a.class_name for a in spec.regions] == [RUN_AREA_CLASS, "Pen"]
    assert spec.regions[0].geometry.equals(POLYGON)
    # Any other scope: the regions hold only the exclusions; the engine covers the scope's usual
    # region (the view, the drawn box, the whole slide's tissue box) less them.
    for scope_name, box in (("view", None), ("region", Box(0, 0, 512, 400)), ("slide", None)):
        plain = _spec(scope_name, AnnotationScope.of(items, (), ()), box)
        spec = _spec(scope_name, scope, box)
        assert spec.exclude_classes == ("Pen",) and spec.include_classes == ()
        assert list(spec.regions) == [items[1]] and spec.l0_region == plain.l0_region
    # No class marked exclude, or none of its annotations has an area: the plain spec.
    assert _spec("view", AnnotationScope.of(items, (), ())).regions is None
    assert AnnotationScope.of([items[3]], (), ("Pen",)).exclude_classes == ()


@pytest.fixture
def window(open_window):
    return open_window(cache_mb=64)


def test_a_run_on_the_selected_polygon_computes_only_inside_it_less_the_excluded_class(qtbot, window, tmp_path):
    slide = write_test_slide(tmp_path / "green.svs")
    model = save_green_detector(tmp_path / "model")
    with qtbot.waitSignal(window.annotations.document_shown, timeout=10_000):
        window.slides.show_or_open(str(slide))
    qtbot.waitUntil(lambda: window.annotation_runner.pending == 0, timeout=10_000)
    with qtbot.waitSignal(window.live.card_loaded, timeout=10_000):
        window.live.load_model(str(model))
    window.inference.set(device="cpu", saliency=False)
    doc = window.annotations.document
    doc.add(_items())  # they come selected, as drawn ones do
    doc.select([])
    button = window.model_panel.selection_button
    assert not button.isEnabled() and "Select annotations" in button.toolTip()  # nothing selected yet

    # The pen mark's class is ticked "exclude" in the class list.
    classes = window.annotation_classes.list
    pen_item = next(classes.item(i) for i in range(classes.count()) if classes.item(i).data(Qt.ItemDataRole.UserRole) == "Pen")
    pen_item.setCheckState(Qt.CheckState.Checked)
    assert doc.excluded_classes == {"Pen"}
    doc.select([0])
    assert button.isEnabled() and "1 selected annotation" in button.toolTip()

    with qtbot.waitSignal(window.live.job_finished, timeout=120_000) as done:
        button.click()
    job, finished = done.args
    assert not finished.cancelled and not window.errors
    assert job.spec.exclude_classes == ("Pen",) and job.spec.regions[0].geometry.equals(POLYGON)
    green = window.live.stack.layers[LayerKey("prediction", "green")]
    computed = np.isfinite(green.values)
    inside = rasterize(shapely.difference(POLYGON, PEN), green.geometry)
    assert inside.any() and np.array_equal(computed, inside)  # NaN everywhere else, the pen mark too
    (x0, y0, x1, y1) = GREEN_BOXES[0]
    assert green.value_at(x0 + 40, y0 + 40) > 0.9  # inside the polygon, on green: computed, and green
    assert green.value_at(700, 570) is None or np.isnan(green.value_at(700, 570))  # the unselected Tumor outline
