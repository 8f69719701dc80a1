"""Annotations in level-0 pixel coordinates: a frozen :class:`Annotation` and a list-like
:class:`AnnotationSet` that also holds the classes and their colours.

An annotation's kind says how it was drawn (polygon, rectangle, ellipse, ...) and is kept
through file round trips and for later editing; its ``geometry`` is always a valid shapely
geometry (an ellipse's is a polygon of ``ELLIPSE_VERTICES`` vertices whose bounds are its box).
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Iterable, Mapping, MutableSequence
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from types import MappingProxyType

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from engine.annotations.errors import AnnotationError
from engine.annotations.shapes import bounds_box, check_finite, ellipse_polygon, is_rectangle, rectangle_polygon
from engine.geometry import Box

RGB = tuple[int, int, int]

POLYGON, MULTIPOLYGON, RECTANGLE, ELLIPSE = "polygon", "multipolygon", "rectangle", "ellipse"
LINE, POINT, POINTS = "line", "point", "points"
KINDS = (POLYGON, MULTIPOLYGON, RECTANGLE, ELLIPSE, LINE, POINT, POINTS)
AREA_KINDS = frozenset({POLYGON, MULTIPOLYGON, RECTANGLE, ELLIPSE})
_GEOMETRY_TYPES = {POLYGON: ("Polygon",), MULTIPOLYGON: ("MultiPolygon",), RECTANGLE: ("Polygon",),
                   ELLIPSE: ("Polygon",), LINE: ("LineString", "MultiLineString"), POINT: ("Point",),
                   POINTS: ("MultiPoint",)}
_KIND_OF_TYPE = {"Polygon": POLYGON, "MultiPolygon": MULTIPOLYGON, "LineString": LINE, "MultiLineString": LINE,
                 "Point": POINT, "MultiPoint": POINTS}

# QuPath's object types (detections, tiles and cells are all detections to QuPath).
OBJECT_TYPES = ("annotation", "detection", "tile", "cell")

# QuPath's own measurement names, so areas read the same in both programs.
AREA_PX = "Area px^2"
AREA_UM = "Area µm^2"

# Colours for classes a file names but gives no colour; picked by name, so stable across runs.
_PALETTE: tuple[RGB, ...] = ((200, 0, 0), (0, 150, 0), (0, 90, 200), (230, 160, 0), (150, 0, 160), (0, 170, 170),
                             (220, 90, 150), (120, 80, 40), (90, 90, 90), (160, 200, 0), (255, 110, 60),
                             (70, 40, 150))


def mpp_xy(mpp: float | tuple[float, float] | None) -> tuple[float, float] | None:
    """Microns per level-0 pixel as (x, y), from one number or a pair; None stays None."""
    if mpp is None:
        return None
    try:
        x, y = (mpp, mpp) if isinstance(mpp, numbers.Real) else mpp
    except (TypeError, ValueError):
        raise AnnotationError(f"microns per pixel must be a number or an (x, y) pair, got {mpp!r}") from None
    if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
        raise AnnotationError(f"microns per pixel must be positive and finite, got {mpp!r}")
    return float(x), float(y)


def check_rgb(value, what: str = "colour") -> RGB:
    try:
        r, g, b = (int(c) for c in value)
        ok = all(0 <= c <= 255 and c == v for c, v in zip((r, g, b), value, strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AnnotationError(f"{what} must be three integers 0-255, got {value!r}")
    return r, g, b


def default_class_color(name: str) -> RGB:
    return _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)]


@dataclass(frozen=True)
class Annotation:
    """One annotation: level-0 geometry, how it was drawn, its class and what was measured on it.

    ``color`` is the annotation's own colour (None: draw it in its class's colour).
    ``measurements`` keep their order (a read-only mapping; pass any mapping or (name, value) pairs).
    Build one with the constructors (:meth:`polygon`, :meth:`rectangle`, ...) or from a shapely
    geometry with :meth:`from_geometry`; invalid values raise :class:`AnnotationError`.
    """

    geometry: BaseGeometry
    kind: str
    class_name: str | None = None
    color: RGB | None = None
    name: str | None = None
    locked: bool = False
    measurements: Mapping[str, float] = field(default_factory=dict, hash=False)
    object_type: str = "annotation"

    def __post_init__(self) -> None:
        self._check_geometry()
        self._check_fields()

    def _check_geometry(self) -> None:
        if self.kind not in KINDS:
            raise AnnotationError(f"unknown annotation kind {self.kind!r} (one of {', '.join(KINDS)})")
        if not isinstance(self.geometry, BaseGeometry) or self.geometry.is_empty:
            raise AnnotationError(f"a {self.kind} annotation needs a non-empty shapely geometry, got {self.geometry!r}")
        if self.geometry.geom_type not in _GEOMETRY_TYPES[self.kind]:
            raise AnnotationError(f"a {self.kind} annotation cannot have a {self.geometry.geom_type} geometry")
        check_finite(shapely.get_coordinates(self.geometry), f"{self.kind} annotation {self.name or ''}".strip())
        if self.kind == RECTANGLE and not is_rectangle(self.geometry):
            raise AnnotationError("a rectangle annotation needs an axis-aligned 4-corner polygon")
        if self.kind in (POLYGON, MULTIPOLYGON) and not shapely.is_valid(self.geometry):
            raise AnnotationError(f"invalid {self.kind}: {shapely.is_valid_reason(self.geometry)}")

    def _check_fields(self) -> None:
        if self.class_name is not None and (not isinstance(self.class_name, str) or not self.class_name):
            raise AnnotationError(f"a class name must be a non-empty string or None, got {self.class_name!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise AnnotationError(f"an annotation name must be a string or None, got {self.name!r}")
        if self.color is not None:
            object.__setattr__(self, "color", check_rgb(self.color))
        if not isinstance(self.locked, bool):
            raise AnnotationError(f"locked must be True or False, got {self.locked!r}")
        if self.object_type not in OBJECT_TYPES:
            raise AnnotationError(f"unknown object type {self.object_type!r} (one of {', '.join(OBJECT_TYPES)})")
        object.__setattr__(self, "measurements", MappingProxyType(_measurements(self.measurements)))

    @classmethod
    def _from_checked(cls, geometry: BaseGeometry, kind: str, **fields) -> "Annotation":
        """For this package's readers, whose geometry already passed the same checks (finite and
        in range, repaired if invalid, of the kind's type): checks only the other fields."""
        a = object.__new__(cls)
        values = {f.name: f.default for f in dataclass_fields(cls) if f.name not in ("geometry", "kind")}
        values.update(fields, measurements=fields.get("measurements", {}), geometry=geometry, kind=kind)
        a.__dict__.update(values)  # frozen fields live in __dict__
        a._check_fields()
        return a

    def __reduce__(self):
        # The read-only mapping does not pickle; rebuild from a plain dict.
        return (Annotation, (self.geometry, self.kind, self.class_name, self.color, self.name, self.locked,
                             dict(self.measurements), self.object_type))

    # Constructors -------------------------------------------------------------------------
    @classmethod
    def polygon(cls, exterior, holes=(), **meta) -> "Annotation":
        """A polygon from an exterior ring and optional holes ((n, 2) level-0 coordinates)."""
        return cls(shapely.Polygon(exterior, list(holes)), POLYGON, **meta)

    @classmethod
    def rectangle(cls, l0_box: Box, **meta) -> "Annotation":
        return cls(rectangle_polygon(Box.of(l0_box)), RECTANGLE, **meta)

    @classmethod
    def rectangles(cls, l0_boxes, *, measurements=None, **meta) -> list["Annotation"]:
        """Many rectangles at once from (n, 4) rows of level-0 (x0, y0, x1, y1), checked together
        (a map's worth of detections would take seconds one by one). ``measurements``: one
        mapping per rectangle, or None; ``meta`` is shared."""
        boxes = np.asarray(l0_boxes, dtype=np.float64).reshape(-1, 4)
        check_finite(boxes.reshape(-1, 2), "rectangles")
        if not ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all():
            raise AnnotationError("every rectangle needs a positive width and height")
        if measurements is not None and len(measurements) != len(boxes):
            raise AnnotationError(f"{len(measurements)} measurement mappings for {len(boxes)} rectangles")
        template = cls.rectangle(Box(0, 0, 1, 1), **meta)  # checks the shared fields once
        x0, y0, x1, y1 = boxes.T
        corners = np.stack([np.column_stack(c) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], axis=1)
        out = []
        for i, polygon in enumerate(shapely.polygons(corners)):
            a = object.__new__(cls)
            # Frozen fields live in __dict__; filling it directly skips re-checking what was checked above.
            a.__dict__.update(template.__dict__, geometry=polygon)
            if measurements is not None:
                a.__dict__["measurements"] = MappingProxyType(_measurements(measurements[i]))
            out.append(a)
        return out

    @classmethod
    def ellipse(cls, l0_box: Box, **meta) -> "Annotation":
        """The ellipse inscribed in ``l0_box`` (axis-aligned, as QuPath draws them)."""
        return cls(ellipse_polygon(Box.of(l0_box)), ELLIPSE, **meta)

    @classmethod
    def line(cls, points, **meta) -> "Annotation":
        return cls(shapely.LineString(points), LINE, **meta)

    @classmethod
    def point(cls, x: float, y: float, **meta) -> "Annotation":
        return cls(shapely.Point(x, y), POINT, **meta)

    @classmethod
    def points(cls, points, **meta) -> "Annotation":
        return cls(shapely.MultiPoint(np.asarray(points, dtype=np.float64).reshape(-1, 2)), POINTS, **meta)

    @classmethod
    def from_geometry(cls, geometry: BaseGeometry, **meta) -> "Annotation":
        """An annotation of the kind that matches ``geometry``'s type (a polygon is never a rectangle here)."""
        kind = _KIND_OF_TYPE.get(geometry.geom_type)
        if kind is None:
            raise AnnotationError(f"no annotation kind for a {geometry.geom_type} geometry")
        return cls(geometry, kind, **meta)

    def simplified(self, tolerance_l0: float) -> "Annotation":
        """Polygons and lines with vertices within ``tolerance_l0`` px of a straighter outline
        dropped (Douglas-Peucker, topology kept); rectangles, ellipses and points as they are."""
        if self.kind not in (POLYGON, MULTIPOLYGON, LINE) or tolerance_l0 <= 0:
            return self
        return replace(self, geometry=shapely.simplify(self.geometry, tolerance_l0, preserve_topology=True))

    def replace(self, **changes) -> "Annotation":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    # Derived values ----------------------------------------------------------------------
    @property
    def has_area(self) -> bool:
        return self.kind in AREA_KINDS

    @property
    def is_detection(self) -> bool:
        return self.object_type != "annotation"

    @property
    def l0_box(self) -> Box:
        """The level-0 bounding box (a rectangle's or an ellipse's own box)."""
        return bounds_box(self.geometry)

    @property
    def area_l0(self) -> float:
        """Area in level-0 px² (an ellipse's exact area, not its polygon's); 0 for lines and points."""
        if self.kind == ELLIPSE:
            box = self.l0_box
            return math.pi * box.width * box.height / 4
        return float(self.geometry.area) if self.has_area else 0.0

    def area_um2(self, mpp: float | tuple[float, float]) -> float:
        mx, my = mpp_xy(mpp)
        return self.area_l0 * mx * my

    def with_area_measurements(self, mpp: float | tuple[float, float] | None = None) -> "Annotation":
        """A copy whose measurements also hold its area in level-0 px² and, with an MPP, in µm²."""
        measured = dict(self.measurements)
        measured[AREA_PX] = self.area_l0
        if mpp is not None:
            measured[AREA_UM] = self.area_um2(mpp)
        return replace(self, measurements=measured)


def _measurements(value) -> dict[str, float]:
    items = value.items() if isinstance(value, Mapping) else value
    out: dict[str, float] = {}
    try:
        for name, number in items:
            if not isinstance(name, str) or isinstance(number, (str, bytes)):
                raise TypeError
            out[name] = float(number)
    except (TypeError, ValueError):
        raise AnnotationError(f"measurements must map names to numbers, got {value!r}"[:200]) from None
    return out


class AnnotationSet(MutableSequence):
    """Annotations in order, and the classes they use with their colours (``classes``, ordered).

    A class used by an annotation but not declared gets a stable default colour
    (:meth:`class_color`); :attr:`class_names` lists declared classes then used ones. Two sets
    are equal when their annotations are, in order, and every class is drawn in the same colour.
    """

    def __init__(self, annotations: Iterable[Annotation] = (), classes: Mapping[str, RGB] | None = None):
        self._items: list[Annotation] = []
        self.classes: dict[str, RGB] = {}
        for name, rgb in (classes or {}).items():
            self.set_class(name, rgb)
        self.extend(annotations)

    @staticmethod
    def _check(value) -> Annotation:
        if not isinstance(value, Annotation):
            raise TypeError(f"an AnnotationSet holds Annotation objects, not {type(value).__name__}")
        return value

    def __getitem__(self, index):
        if isinstance(index, slice):
            return AnnotationSet(self._items[index], self.classes)
        return self._items[index]

    def __setitem__(self, index, value) -> None:
        if isinstance(index, slice):
            self._items[index] = [self._check(v) for v in value]
        else:
            self._items[index] = self._check(value)

    def __delitem__(self, index) -> None:
        del self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def insert(self, index: int, value: Annotation) -> None:
        self._items.insert(index, self._check(value))

    def __eq__(self, other) -> bool:
        if not isinstance(other, AnnotationSet):
            return NotImplemented
        return self._items == other._items and self.class_colors() == other.class_colors()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"AnnotationSet({len(self)} annotations, classes={list(self.class_names)})"

    def copy(self) -> "AnnotationSet":
        return AnnotationSet(self._items, self.classes)

    def set_class(self, name: str, rgb: RGB) -> None:
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"a class name must be a non-empty string, got {name!r}")
        self.classes[name] = check_rgb(rgb, f"colour of class {name!r}")

    def class_color(self, name: str) -> RGB:
        return self.classes.get(name) or default_class_color(name)

    def class_colors(self) -> dict[str, RGB]:
        """Every class in :attr:`class_names` with the colour it is drawn in."""
        return {name: self.class_color(name) for name in self.class_names}

    @property
    def class_names(self) -> list[str]:
        names = dict.fromkeys(self.classes)
        names.update(dict.fromkeys(a.class_name for a in self._items if a.class_name is not None))
        return list(names)

    def of_class(self, *names: str | None) -> "AnnotationSet":
        """The annotations of these classes (``None`` picks unclassified ones)."""
        wanted = set(names)
        return AnnotationSet((a for a in self._items if a.class_name in wanted), self.classes)

    def area_geometry(self, classes: Iterable[str | None] | None = None) -> BaseGeometry:
        """The union of the areas (polygons, rectangles, ellipses) of these classes (None: all)."""
        wanted = None if classes is None else set(classes)
        parts = [a.geometry for a in self._items if a.has_area and (wanted is None or a.class_name in wanted)]
        return shapely.union_all(parts) if parts else shapely.Polygon()
