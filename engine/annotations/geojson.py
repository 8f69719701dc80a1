"""QuPath's GeoJSON: read every shape QuPath has written (v0.2 to now), write the current one.

What QuPath writes and reads (qupath-core ``qupath/lib/io/PathObjectTypeAdapters.java``,
``GsonTools.java``, ``ROITypeAdapters.java``, ``roi/GeometryTools.java``):

* v0.2 put the object type in the feature's ``id`` ("PathAnnotationObject", "PathDetectionObject").
* v0.3 wrote ``properties.object_type``, ``isLocked`` always, ``measurements`` as a list of
  ``{"name", "value"}`` and ``classification`` as Gson's PathClass fields: ``name``, ``colorRGB``
  (a packed signed ARGB int) and a nested ``parentClass`` for derived classes.
* v0.4 on writes ``properties.objectType``, ``isLocked`` only when true, ``measurements`` as an
  object, ``classification`` ``{"name" | "names", "color": [r, g, b]}`` (it cannot read a
  classification object without ``color``), ``properties.color`` for the object's own colour, and
  ``geometry.isEllipse: true`` on ellipses, which it reads back from the polygon's bounds.
* It reads a top-level FeatureCollection, an array of Features or a single Feature, and turns
  an axis-aligned 4-corner polygon into a rectangle; unknown object types become annotations.

StreamSlide writes the v0.4 shape plus ``properties.streamslideKind`` (QuPath ignores it), so
its own kinds come back exactly.
"""

from __future__ import annotations

import json

import shapely

from engine.annotations.errors import AnnotationError
from engine.annotations.model import (
    ELLIPSE,
    KINDS,
    MULTIPOLYGON,
    OBJECT_TYPES,
    POINT,
    POINTS,
    POLYGON,
    RECTANGLE,
    RGB,
    Annotation,
    AnnotationSet,
    check_rgb,
)
from engine.annotations.shapes import coords_array, ellipse_polygon, is_rectangle, polygon_from_rings, polygonal_or_none
from engine.geometry import Box

KIND_PROPERTY = "streamslideKind"
GEOMETRY_TYPES = ("Polygon", "MultiPolygon", "LineString", "MultiLineString", "Point", "MultiPoint")
_LEGACY_IDS = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
               "PathTileObject": "tile", "PathCellObject": "cell"}
_KIND_OF_TYPE = {"Polygon": POLYGON, "MultiPolygon": MULTIPOLYGON, "LineString": "line",
                 "MultiLineString": "line", "Point": POINT, "MultiPoint": POINTS}


# Reading ------------------------------------------------------------------------------------
def read_geojson(data: str | bytes, source: str) -> tuple[AnnotationSet, list[str]]:
    """Annotations from GeoJSON text; repairs and anything read differently are in the warnings."""
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise AnnotationError(f"{source}: JSON nested too deeply") from None
    annotations, warnings = AnnotationSet(), []
    features = _features(doc, source)
    for i, feature in enumerate(features):
        annotation = _read_feature(feature, f"{source}: feature {i}", annotations, warnings)
        if annotation is not None:
            annotations.append(annotation)
    for member, what in (("nucleusGeometry", "cell nucleus outlines"), ("metadata", "QuPath object metadata"),
                         ("plane", "z-slice / time-point planes (all read onto one plane)")):
        n = sum(1 for f in features if member in f or member in (f.get("geometry") or {})
                or member in (f.get("properties") or {}))
        if n:
            warnings.append(f"{source}: {n} feature(s) carry {what}, which are not kept")
    return annotations, warnings


def _features(doc, source: str) -> list:
    if isinstance(doc, list):
        return doc
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{source}: FeatureCollection without a 'features' array")
        return features
    if kind == "Feature":
        return [doc]
    if kind in GEOMETRY_TYPES:  # a bare geometry, as QuPath's own test data has
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    raise AnnotationError(f"{source}: expected a FeatureCollection, a Feature or an array of Features, "
                          f"got {type(doc).__name__ if kind is None else repr(kind)}")


def _read_feature(feature, where: str, annotations: AnnotationSet, warnings: list[str]) -> Annotation | None:
    if not isinstance(feature, dict) or feature.get("type", "Feature") != "Feature":
        got = feature.get("type") if isinstance(feature, dict) else type(feature).__name__
        raise AnnotationError(f"{where}: not a Feature (got {got!r})")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise AnnotationError(f"{where}: 'properties' must be an object")
    name = props.get("name")
    if name is not None:
        if not isinstance(name, (str, int, float)) or isinstance(name, bool):
            raise AnnotationError(f"{where}: 'name' must be a string, got {name!r}")
        name = str(name)
        where = f"{where} ({name!r})"
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict):
        raise AnnotationError(f"{where}: has no geometry object")
    object_type = _object_type(feature, props, where, warnings)
    class_name, class_rgb = _classification(props.get("classification"), where)
    if class_name is not None and class_rgb is not None:
        known = annotations.classes.get(class_name)
        if known is None:
            annotations.set_class(class_name, class_rgb)
        elif known != class_rgb:
            warnings.append(f"{where}: class {class_name!r} coloured {class_rgb}, earlier {known}; kept {known}")
    color = props.get("color")
    color = None if color is None else _rgb(color, f"{where}: 'color'")
    locked = props.get("isLocked", False)
    if not isinstance(locked, bool):
        raise AnnotationError(f"{where}: 'isLocked' must be true or false, got {locked!r}")
    measurements = _measurements(props.get("measurements"), where)
    shape = _geometry(geometry, props.get(KIND_PROPERTY), where, warnings)
    if shape is None:
        return None
    try:
        return Annotation._from_checked(shape[0], shape[1], class_name=class_name, color=color, name=name,
                                        locked=locked, measurements=measurements, object_type=object_type)
    except AnnotationError as exc:
        raise AnnotationError(f"{where}: {exc}") from None


def _object_type(feature: dict, props: dict, where: str, warnings: list[str]) -> str:
    kind = props.get("objectType", props.get("object_type", props.get("type")))
    if kind is None:
        return _LEGACY_IDS.get(feature.get("id"), "annotation") if isinstance(feature.get("id"), str) else "annotation"
    if not isinstance(kind, str):
        raise AnnotationError(f"{where}: 'objectType' must be a string, got {kind!r}")
    kind = _LEGACY_IDS.get(kind, kind)
    if kind not in OBJECT_TYPES:
        warnings.append(f"{where}: QuPath object type {kind!r} read as an annotation")
        return "annotation"
    return kind


def _classification(value, where: str) -> tuple[str | None, RGB | None]:
    if value is None:
        return None, None
    if isinstance(value, str):
        return value or None, None
    if not isinstance(value, dict):
        raise AnnotationError(f"{where}: 'classification' must be an object or a string, got {value!r}")
    names = value.get("names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise AnnotationError(f"{where}: classification 'names' must be a list of strings, got {names!r}")
        name = ": ".join(names) or None
    else:
        name = value.get("name")
        if name is not None and not isinstance(name, str):
            raise AnnotationError(f"{where}: classification 'name' must be a string, got {name!r}")
        parent = value.get("parentClass")
        if parent is not None and name:  # v0.3 derived class: "Parent: Child" as QuPath prints it
            parent_name = _classification(parent, where)[0]
            name = f"{parent_name}: {name}" if parent_name else name
        name = name or None
    if "color" in value and value["color"] is not None:
        rgb = _rgb(value["color"], f"{where}: classification 'color'")
    elif "colorRGB" in value and value["colorRGB"] is not None:
        rgb = _rgb(value["colorRGB"], f"{where}: classification 'colorRGB'")
    else:
        rgb = None
    return name, (rgb if name else None)


def _rgb(value, where: str) -> RGB:
    """A colour as QuPath writes one: [r, g, b], [r, g, b, a] or a packed (signed) ARGB int."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**32:
            raise AnnotationError(f"{where}: {value} is not a packed 32-bit colour")
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    if isinstance(value, list) and len(value) in (3, 4) and not any(isinstance(c, bool) for c in value):
        try:
            return check_rgb(value[:3])
        except AnnotationError:
            pass
    raise AnnotationError(f"{where}: not a colour ([r, g, b] 0-255 or a packed int), got {value!r}")


def _measurements(value, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = value.items()
    elif isinstance(value, list):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise AnnotationError(f"{where}: measurement {i} must be {{\"name\": ..., \"value\": ...}}, "
                                      f"got {item!r}"[:300])
            pairs.append((item["name"], item.get("value")))
    else:
        raise AnnotationError(f"{where}: 'measurements' must be an object or a list, got {type(value).__name__}")
    out = {}
    for name, number in pairs:
        if number is None:  # other writers' stand-in for QuPath's NaN
            number = float("nan")
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            raise AnnotationError(f"{where}: measurement {name!r} is not a number: {number!r}")
        out[name] = float(number)
    return out


def _geometry(geometry: dict, kind_hint, where: str, warnings: list[str]):
    """(shapely geometry, kind), or None when a polygon had no area and was dropped."""
    gtype, coords = geometry.get("type"), geometry.get("coordinates")
    if gtype not in GEOMETRY_TYPES:
        raise AnnotationError(f"{where}: unsupported geometry type {gtype!r} (supported: {', '.join(GEOMETRY_TYPES)})")
    if coords is None:
        raise AnnotationError(f"{where}: {gtype} geometry has no 'coordinates'")
    if gtype in ("Polygon", "MultiPolygon"):
        polygons = [coords] if gtype == "Polygon" else _list(coords, where, "MultiPolygon coordinates")
        parts = []
        for p, rings in enumerate(polygons):
            label = where if gtype == "Polygon" else f"{where} polygon {p}"
            rings = _list(rings, label, "a polygon's rings")
            if not rings:
                raise AnnotationError(f"{label}: polygon has no rings")
            arrays = [coords_array(ring, f"{label} ring {r}") for r, ring in enumerate(rings)]
            polygon = polygon_from_rings(arrays, label, warnings)
            if polygon is not None:
                parts.append(polygon)
        if not parts:
            return None
        if gtype == "Polygon":
            shape = parts[0]  # already checked (and repaired, which may have made it a MultiPolygon)
        else:
            shape = shapely.MultiPolygon([p for part in parts for p in shapely.get_parts(part)])
            shape = polygonal_or_none(shape, where, warnings)  # parts of a MultiPolygon may overlap
            if shape is None:
                return None
    elif gtype == "LineString":
        shape = shapely.LineString(coords_array(coords, where, min_points=2))
    elif gtype == "MultiLineString":
        lines = _list(coords, where, "MultiLineString coordinates")
        if not lines:
            raise AnnotationError(f"{where}: MultiLineString has no lines")
        shape = shapely.MultiLineString([coords_array(c, f"{where} line {i}", min_points=2)
                                         for i, c in enumerate(lines)])
    elif gtype == "Point":
        shape = shapely.Point(coords_array([coords], where)[0])
    else:
        shape = shapely.MultiPoint(coords_array(coords, where))
    kind = _kind(shape, kind_hint, geometry.get("isEllipse") is True, where, warnings)
    return _ellipse_fix(kind, shape), kind


def _list(value, where: str, what: str) -> list:
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: {what} must be a list, got {type(value).__name__}")
    return value


def _kind(shape, hint, is_ellipse: bool, where: str, warnings: list[str]) -> str:
    if hint is not None and hint not in KINDS:
        warnings.append(f"{where}: unknown {KIND_PROPERTY} {hint!r} ignored")
        hint = None
    if (is_ellipse or hint == ELLIPSE) and shape.geom_type == "Polygon":
        return ELLIPSE
    if hint == RECTANGLE and not is_rectangle(shape):
        warnings.append(f"{where}: marked a rectangle but is not an axis-aligned rectangle; read as a polygon")
        hint = None
    if hint is not None and hint != ELLIPSE and hint in _kinds_for(shape):
        return hint
    if is_rectangle(shape):
        return RECTANGLE
    return _KIND_OF_TYPE[shape.geom_type]


def _kinds_for(shape) -> tuple[str, ...]:
    base = _KIND_OF_TYPE[shape.geom_type]
    return (POLYGON, RECTANGLE) if base == POLYGON else (base,)


def _ellipse_fix(kind: str, shape):
    """An ellipse's geometry is rebuilt from its bounds, as QuPath does."""
    if kind != ELLIPSE:
        return shape
    x0, y0, x1, y1 = shape.bounds
    return ellipse_polygon(Box(x0, y0, x1, y1))


# Writing ------------------------------------------------------------------------------------
def geojson_document(annotations: AnnotationSet) -> dict:
    """A FeatureCollection in the shape QuPath v0.4+ writes (see the module notes)."""
    return {"type": "FeatureCollection", "features": [_feature(a, annotations) for a in annotations]}


def geojson_bytes(annotations: AnnotationSet) -> bytes:
    # NaN measurements are written as NaN, as QuPath's lenient Gson writes and reads them.
    return json.dumps(geojson_document(annotations), ensure_ascii=False).encode("utf-8")


def _feature(a: Annotation, annotations: AnnotationSet) -> dict:
    geometry = dict(a.geometry.__geo_interface__)
    if a.kind == ELLIPSE:
        geometry["isEllipse"] = True
    props: dict = {"objectType": a.object_type}
    if a.name is not None:
        props["name"] = a.name
    if a.color is not None:
        props["color"] = list(a.color)
    if a.class_name is not None:
        props["classification"] = {"name": a.class_name, "color": list(annotations.class_color(a.class_name))}
    if a.locked:
        props["isLocked"] = True
    if a.measurements:
        props["measurements"] = dict(a.measurements)
    props[KIND_PROPERTY] = a.kind
    return {"type": "Feature", "geometry": geometry, "properties": props}
