"""engine.annotations.model: the Annotation value, its kinds and checks, and AnnotationSet."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import shapely

from engine.annotations import AREA_PX, AREA_UM, ELLIPSE_VERTICES, Annotation, AnnotationError, AnnotationSet
from engine.annotations.shapes import is_rectangle
from engine.errors import StreamSlideError
from engine.geometry import Box


def test_error_is_an_engine_error_and_a_value_error():
    assert issubclass(AnnotationError, StreamSlideError) and issubclass(AnnotationError, ValueError)


def test_every_kind_has_a_constructor_and_the_matching_geometry():
    made = {
        "polygon": Annotation.polygon([(0, 0), (10, 0), (10, 10), (0, 10)], holes=[[(2, 2), (4, 2), (4, 4)]]),
        "multipolygon": Annotation.from_geometry(shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(3, 3, 4, 4)])),
        "rectangle": Annotation.rectangle(Box(1, 2, 4, 8)),
        "ellipse": Annotation.ellipse(Box(0, 0, 40, 20)),
        "line": Annotation.line([(0, 0), (3, 4), (6, 0)]),
        "point": Annotation.point(2.5, 3.5),
        "points": Annotation.points([(1, 1), (2, 2), (3, 3)]),
    }
    types = {"polygon": "Polygon", "multipolygon": "MultiPolygon", "rectangle": "Polygon", "ellipse": "Polygon",
             "line": "LineString", "point": "Point", "points": "MultiPoint"}
    for kind, a in made.items():
        assert a.kind == kind and a.geometry.geom_type == types[kind]
    assert made["polygon"].area_l0 == 100 - 2
    assert made["rectangle"].area_l0 == 18 and made["rectangle"].l0_box == Box(1, 2, 4, 8)
    assert made["line"].area_l0 == 0 and not made["point"].has_area and made["multipolygon"].area_l0 == 2


def test_ellipse_keeps_its_box_exactly_and_reports_the_true_area():
    box = Box(0.1, 0.7, 10.3, 5.9)  # corners whose centre +- radius does not round back exactly
    e = Annotation.ellipse(box)
    assert e.l0_box == box
    assert len(e.geometry.exterior.coords) == ELLIPSE_VERTICES + 1
    true_area = math.pi * box.width * box.height / 4
    assert e.area_l0 == pytest.approx(true_area, rel=1e-12)
    assert e.geometry.area == pytest.approx(true_area, rel=1e-3) and e.geometry.area < true_area


@pytest.mark.parametrize("build, message", [
    (lambda: Annotation(shapely.Point(0, 0), "polygon"), "cannot have a Point"),
    (lambda: Annotation(shapely.box(0, 0, 1, 1), "blob"), "unknown annotation kind"),
    (lambda: Annotation(shapely.Polygon([(0, 0), (2, 0), (1, 3)]), "rectangle"), "axis-aligned"),
    (lambda: Annotation.polygon([(0, 0), (2, 2), (2, 0), (0, 2)]), "invalid polygon"),
    (lambda: Annotation.point(float("nan"), 1), "not finite"),
    (lambda: Annotation.point(1e12, 1), "beyond"),
    (lambda: Annotation.point(1, 1, color=(256, 0, 0)), "0-255"),
    (lambda: Annotation.point(1, 1, color=(1, 2)), "0-255"),
    (lambda: Annotation.point(1, 1, class_name=""), "class name"),
    (lambda: Annotation.point(1, 1, locked="yes"), "locked"),
    (lambda: Annotation.point(1, 1, measurements={"a": "x"}), "measurements"),
    (lambda: Annotation.point(1, 1, object_type="root"), "object type"),
    (lambda: Annotation.rectangle(Box(0, 0, 0, 5)), "positive width"),
    (lambda: Annotation(shapely.Polygon(), "polygon"), "non-empty"),
])
def test_impossible_values_are_refused(build, message):
    with pytest.raises(AnnotationError, match=message):
        build()


def test_measurements_keep_order_are_read_only_and_pickle():
    a = Annotation.point(1, 2, measurements=[("b", 1), ("a", 2.5)], name="p", class_name="Tumor", color=(1, 2, 3))
    assert list(a.measurements) == ["b", "a"] and a.measurements["b"] == 1.0
    with pytest.raises(TypeError):
        a.measurements["c"] = 3  # type: ignore[index]
    assert pickle.loads(pickle.dumps(a)) == a
    assert hash(a) == hash(a.replace())
    b = a.replace(locked=True)
    assert b.locked and not a.locked and b != a


def test_area_measurements_in_level0_pixels_and_microns():
    r = Annotation.rectangle(Box(0, 0, 100, 50), measurements={"score": 0.5})
    measured = r.with_area_measurements(mpp=(0.25, 0.5))
    assert dict(measured.measurements) == {"score": 0.5, AREA_PX: 5000.0, AREA_UM: 5000 * 0.125}
    assert dict(r.with_area_measurements().measurements) == {"score": 0.5, AREA_PX: 5000.0}
    assert r.area_um2(0.5) == 1250
    for bad in (0, -1, float("nan"), (0.5, 0), "x"):
        with pytest.raises(AnnotationError, match="microns per pixel"):
            r.area_um2(bad)


def test_bulk_rectangles_match_one_by_one():
    boxes = np.array([[0, 0, 2, 3], [10, 10, 11, 12]], dtype=float)
    many = Annotation.rectangles(boxes, class_name="Tumor", object_type="detection",
                                 measurements=[{"score": 0.1}, {"score": 0.9}])
    one = [Annotation.rectangle(Box(*b), class_name="Tumor", object_type="detection", measurements={"score": s})
           for b, s in zip(boxes, (0.1, 0.9), strict=True)]
    assert many == one and all(is_rectangle(a.geometry) for a in many)
    with pytest.raises(AnnotationError, match="positive width"):
        Annotation.rectangles([[0, 0, 0, 1]])
    with pytest.raises(AnnotationError, match="not finite"):
        Annotation.rectangles([[0, 0, np.inf, 1]])


def test_annotation_set_is_list_like_and_holds_class_colours():
    s = AnnotationSet(classes={"Tumor": (200, 0, 0)})
    s.append(Annotation.rectangle(Box(0, 0, 10, 10), class_name="Tumor"))
    s.append(Annotation.rectangle(Box(5, 0, 15, 10), class_name="Stroma"))
    s.insert(0, Annotation.point(1, 1))
    assert len(s) == 3 and s[0].kind == "point" and isinstance(s[1:], AnnotationSet)
    assert s.class_names == ["Tumor", "Stroma"]
    assert s.class_color("Tumor") == (200, 0, 0)
    assert s.class_color("Stroma") == AnnotationSet().class_color("Stroma")  # stable default
    assert [a.class_name for a in s.of_class("Stroma", None)] == [None, "Stroma"]
    assert s.area_geometry().area == 150 and s.area_geometry(["Tumor"]).area == 100
    with pytest.raises(TypeError):
        s.append("not an annotation")
    with pytest.raises(AnnotationError):
        s.set_class("Tumor", (1, 2, 300))
    copy = s.copy()
    assert copy == s
    del copy[0]
    assert copy != s and len(s) == 3
    declared = AnnotationSet(list(s), classes={"Tumor": (200, 0, 0), "Stroma": s.class_color("Stroma")})
    assert declared == s  # equal when every class is drawn in the same colour
    assert AnnotationSet(list(s), classes={"Tumor": (0, 0, 0)}) != s


def test_simplified_straightens_polygons_and_leaves_drawn_shapes():
    wobbly = Annotation.polygon([(0, 0), (50, 0.2), (100, 0), (100, 100), (0, 100)], name="w")
    assert len(wobbly.simplified(0.5).geometry.exterior.coords) == 5 and wobbly.simplified(0.5).name == "w"
    assert wobbly.simplified(0.1) == wobbly  # the 0.2 px bump is kept
    box = Annotation.rectangle(Box(0, 0, 10, 10))
    assert box.simplified(100) is box and wobbly.simplified(0) is wobbly
