"""ASAP's XML annotations, the CAMELYON16/17 format: read and write.

The shape ASAP writes and reads (ASAP ``annotation/XmlRepository.cpp``, ``Annotation.cpp``)::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="..." Y="..." /> ...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups>
        <Group Name="Tumor" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>
      </AnnotationGroups>
    </ASAP_Annotations>

Types are Dot, Polygon, Spline, PointSet, Measurement (a two-point ruler) and Rectangle;
``PartOfGroup="None"`` means no group; coordinates are placed by ``Order``; an empty Color keeps
ASAP's default. Groups become classes with their colours. Everything is in attributes, so the
reader is a streaming expat parser that only looks at element starts, with line numbers for errors.
XML with a DOCTYPE or ENTITY declaration is refused before parsing (no external entities, no
entity expansion), and expat is also told to stop at one.
"""

from __future__ import annotations

import re
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np
import shapely

from engine.annotations.errors import AnnotationError
from engine.annotations.model import (
    ELLIPSE,
    LINE,
    MULTIPOLYGON,
    POINT,
    POINTS,
    POLYGON,
    RECTANGLE,
    RGB,
    Annotation,
    AnnotationSet,
)
from engine.annotations.shapes import check_finite, is_rectangle, polygon_from_rings

# CAMELYON16's groups (as NCRF's camelyon16xml2json reads them): metastases, and normal tissue
# cut out of them. For mask_from_annotations(include=..., exclude=...).
CAMELYON16_TUMOR_CLASSES = ("Tumor", "_0", "_1")
CAMELYON16_EXCLUDED_CLASSES = ("_2",)

ASAP_TYPES = ("Dot", "Polygon", "Spline", "PointSet", "Measurement", "Rectangle")
_DECLARATION = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)")
_COMMA_DECIMAL = re.compile(r"\s*-?\d+,\d+\s*")
_CONTAINERS = {"ASAP_Annotations", "Annotations", "AnnotationGroups", "Coordinates", "Attributes", "Attribute"}


def hex_color(text: str | None) -> RGB | None:
    """``#rrggbb`` (either case) as RGB; None for anything else."""
    if text and len(text) == 7 and text[0] == "#":
        try:
            v = int(text[1:], 16)
        except ValueError:
            return None
        return (v >> 16) & 255, (v >> 8) & 255, v & 255
    return None


def color_hex(rgb: RGB) -> str:
    return "#%02X%02X%02X" % rgb


# Reading ------------------------------------------------------------------------------------
def read_asap_xml(data: bytes, source: str) -> tuple[AnnotationSet, list[str]]:
    text = _decode(data, source)
    found = _DECLARATION.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        raise AnnotationError(f"{source}: line {line}: XML {found.group(1).upper()} declarations are refused "
                              "(they can read other files or expand without bound); ASAP never writes them")
    parser = expat.ParserCreate(encoding="UTF-8")
    reader = _Reader(source, parser)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = reader.refuse
    parser.EntityDeclHandler = reader.refuse
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    try:
        parser.Parse(text.encode("utf-8"), True)
    except expat.ExpatError as exc:
        raise AnnotationError(f"{source}: line {exc.lineno}, column {exc.offset + 1}: not well-formed XML "
                              f"({expat.ErrorString(exc.code)})") from None
    return reader.finish()


def _decode(data: bytes, source: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        declared = _XML_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf").lstrip())
        encoding = declared.group(1).decode("ascii") if declared else "utf-8"
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{source}: cannot read the file as {encoding} text ({exc})") from None


class _Record:
    __slots__ = ("name", "type", "group", "color", "line", "orders", "xs", "ys")

    def __init__(self, attrs: dict, line: int):
        self.name = attrs.get("Name") or None
        self.type, self.group, self.color = attrs.get("Type"), attrs.get("PartOfGroup"), attrs.get("Color")
        self.line = line
        self.orders: list[int | None] = []
        self.xs: list[float] = []
        self.ys: list[float] = []


class _Reader:
    def __init__(self, source: str, parser):
        self.source, self.parser = source, parser
        self.stack: list[str] = []
        self.records: list[_Record] = []
        self.groups: list[tuple[dict, int]] = []
        self.current: _Record | None = None
        self.warnings: list[str] = []
        self.noted: set[str] = set()

    def where(self, record: _Record | None = None) -> str:
        line = record.line if record else self.parser.CurrentLineNumber
        label = f": annotation {record.name!r}" if record and record.name else ""
        return f"{self.source}: line {line}{label}"

    def note_once(self, key: str, message: str) -> None:
        if key not in self.noted:
            self.noted.add(key)
            self.warnings.append(message)

    def refuse(self, *args) -> None:
        raise AnnotationError(f"{self.where()}: XML DOCTYPE/ENTITY declarations are refused")

    def start(self, name: str, attrs: dict) -> None:
        parent = self.stack[-1] if self.stack else None
        if parent is None and name not in ("ASAP_Annotations", "Annotations"):  # ASAP reads either
            raise AnnotationError(f"{self.where()}: root element <{name}> is not ASAP's <ASAP_Annotations>; "
                                  "not an ASAP annotation file")
        self.stack.append(name)
        if name == "Coordinate":
            if self.current is None or parent != "Coordinates":
                raise AnnotationError(f"{self.where()}: <Coordinate> outside an <Annotation>'s <Coordinates>")
            self.coordinate(attrs)
        elif name == "Annotation" and parent == "Annotations":
            self.current = _Record(attrs, self.parser.CurrentLineNumber)
            self.records.append(self.current)
        elif name == "Group" and parent == "AnnotationGroups":
            self.groups.append((attrs, self.parser.CurrentLineNumber))
        elif name == "Attribute":
            self.note_once("attributes", f"{self.where()}: ASAP group attributes are not kept")
        elif name not in _CONTAINERS:
            self.note_once(f"element {name}", f"{self.where()}: unknown element <{name}> ignored")

    def end(self, name: str) -> None:
        self.stack.pop()
        if name == "Annotation":
            self.current = None

    def coordinate(self, attrs: dict) -> None:
        record = self.current
        x, y, order = attrs.get("X"), attrs.get("Y"), attrs.get("Order")
        if x is None or y is None:
            raise AnnotationError(f"{self.where()}: annotation {record.name!r}: <Coordinate> without X or Y")
        record.xs.append(self.number(x, "X", record))
        record.ys.append(self.number(y, "Y", record))
        if order is None:
            record.orders.append(None)
        else:
            try:
                record.orders.append(int(order))
            except ValueError:
                raise AnnotationError(f"{self.where()}: annotation {record.name!r}: Order={order!r} "
                                      "is not an integer") from None

    def number(self, text: str, axis: str, record: _Record) -> float:
        try:
            return float(text)
        except ValueError:
            if _COMMA_DECIMAL.fullmatch(text):  # written by a tool in a comma-decimal locale
                self.note_once("comma", f"{self.where()}: coordinates with a decimal comma read as decimals")
                return float(text.replace(",", "."))
            raise AnnotationError(f"{self.where()}: annotation {record.name!r}: {axis}={text!r} "
                                  "is not a number") from None

    def finish(self) -> tuple[AnnotationSet, list[str]]:
        out = AnnotationSet()
        for attrs, line in self.groups:
            name = attrs.get("Name")
            if not name:
                raise AnnotationError(f"{self.source}: line {line}: <Group> without a Name")
            color = hex_color(attrs.get("Color"))
            if color is None:
                self.warnings.append(f"{self.source}: line {line}: group {name!r} colour "
                                     f"{attrs.get('Color')!r} is not #rrggbb; a default colour is used")
            out.set_class(name, color or out.class_color(name))
            if attrs.get("PartOfGroup") not in (None, "", "None"):
                self.note_once("nested", f"{self.source}: line {line}: nested groups are read as flat classes")
        for record in self.records:
            annotation = self.annotation(record, out)
            if annotation is not None:
                out.append(annotation)
        return out, self.warnings

    def annotation(self, record: _Record, out: AnnotationSet) -> Annotation | None:
        where = self.where(record)
        if record.type not in ASAP_TYPES:
            raise AnnotationError(f"{where}: unknown annotation Type {record.type!r} (ASAP types: "
                                  f"{', '.join(ASAP_TYPES)})")
        if not record.xs:
            raise AnnotationError(f"{where}: {record.type} has no coordinates")
        xy = np.column_stack([record.xs, record.ys])
        if None not in record.orders:
            if len(set(record.orders)) != len(record.orders):
                self.warnings.append(f"{where}: repeated Order values; coordinates kept in file order among equals")
            xy = xy[np.argsort(record.orders, kind="stable")]
        check_finite(xy, where)
        shape = self.shape(record.type, xy, where)
        if shape is None:
            return None
        group = None if record.group in (None, "", "None") else record.group
        if group is not None and group not in out.classes:
            self.warnings.append(f"{where}: group {group!r} is not declared in AnnotationGroups; "
                                 "added with a default colour")
            out.set_class(group, out.class_color(group))
        color = hex_color(record.color)
        if record.color and color is None:
            self.warnings.append(f"{where}: colour {record.color!r} is not #rrggbb; the class colour is used")
        try:
            return Annotation._from_checked(shape[0], shape[1], class_name=group, color=color, name=record.name)
        except AnnotationError as exc:
            raise AnnotationError(f"{where}: {exc}") from None

    def shape(self, kind: str, xy: np.ndarray, where: str):
        if kind in ("Polygon", "Spline", "Rectangle"):
            if kind == "Spline":
                self.note_once("spline", f"{where}: splines are read as polygons through their points")
            corners = xy[:4] if len(xy) == 5 and (xy[0] == xy[4]).all() else xy
            if kind == "Rectangle" and len(corners) == 4 and is_rectangle(shapely.Polygon(corners)):
                return shapely.Polygon(corners), RECTANGLE
            if kind == "Rectangle":
                self.warnings.append(f"{where}: Rectangle is not 4 axis-aligned corners; read as a polygon")
            polygon = polygon_from_rings([xy], where, self.warnings)
            if polygon is None:
                return None
            return polygon, (MULTIPOLYGON if polygon.geom_type == "MultiPolygon" else POLYGON)
        if kind == "Measurement":
            if len(xy) < 2:
                raise AnnotationError(f"{where}: a Measurement needs 2 coordinates, has {len(xy)}")
            return shapely.LineString(xy), LINE
        if kind == "Dot" and len(xy) == 1:
            return shapely.Point(xy[0]), POINT
        if kind == "Dot":
            self.warnings.append(f"{where}: a Dot with {len(xy)} coordinates is read as a point set")
        return shapely.MultiPoint(xy), POINTS


# Writing ------------------------------------------------------------------------------------
def asap_xml_bytes(annotations: AnnotationSet, *, allow_loss: bool = False) -> tuple[bytes, list[str]]:
    """The XML ASAP reads, and what it could not hold.

    Holes and polylines of more than two points would change what is covered or drawn: they
    raise :class:`AnnotationError` unless ``allow_loss`` (then holes are left out and polylines
    become point sets). Ellipses become polygons, multipolygons one polygon per part;
    measurements, locks and detection types are not kept. All of it is listed in the warnings.
    """
    lost: dict[str, int] = {}
    out = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    for i, a in enumerate(annotations):
        where = f"annotation {i}" + (f" ({a.name!r})" if a.name else "")
        for lossy, flag in ((bool(a.measurements), "measurements"), (a.locked, "locks"),
                            (a.is_detection, "detection types")):
            if lossy:
                lost[flag] = lost.get(flag, 0) + 1
        head = ([f"Name={quoteattr(a.name)}"] if a.name is not None else [])
        group = quoteattr(a.class_name if a.class_name is not None else "None")
        color = f" Color={quoteattr(color_hex(a.color))}" if a.color is not None else ""
        for asap_type, xy in _asap_shapes(a, where, allow_loss, lost):
            attrs = " ".join(head + [f'Type="{asap_type}"', f"PartOfGroup={group}"])
            out.append(f"\t\t<Annotation {attrs}{color}>")
            out.append("\t\t\t<Coordinates>")
            out.extend(f'\t\t\t\t<Coordinate Order="{k}" X="{x!r}" Y="{y!r}" />'
                       for k, (x, y) in enumerate(xy.tolist()))
            out.append("\t\t\t</Coordinates>")
            out.append("\t\t</Annotation>")
    out.append("\t</Annotations>")
    out.append("\t<AnnotationGroups>")
    for name in annotations.class_names:
        out.append(f'\t\t<Group Name={quoteattr(name)} PartOfGroup="None" '
                   f'Color="{color_hex(annotations.class_color(name))}">')
        out.append("\t\t\t<Attributes />")
        out.append("\t\t</Group>")
    out.append("\t</AnnotationGroups>")
    out.append("</ASAP_Annotations>")
    warnings = [f"ASAP XML keeps no {what}: {n} annotation(s) lose them" if what in
                ("measurements", "locks", "detection types") else f"{n} {what}" for what, n in lost.items()]
    return ("\n".join(out) + "\n").encode("utf-8"), warnings


def _asap_shapes(a: Annotation, where: str, allow_loss: bool, lost: dict[str, int]):
    def ring(polygon) -> np.ndarray:
        if len(polygon.interiors):
            if not allow_loss:
                raise AnnotationError(f"{where}: ASAP polygons have no holes; writing it would drop "
                                      f"{len(polygon.interiors)} hole(s) (allow loss to do so)")
            _count(lost, "polygon(s) written without their holes")
        return shapely.get_coordinates(polygon.exterior)[:-1]

    if a.kind == RECTANGLE:
        return [("Rectangle", shapely.get_coordinates(a.geometry.exterior)[:-1])]
    if a.kind in (POLYGON, ELLIPSE):
        if a.kind == ELLIPSE:
            _count(lost, "ellipse(s) written as polygons")
        return [("Polygon", ring(a.geometry))]
    if a.kind == MULTIPOLYGON:
        _count(lost, "multipolygon(s) split into one ASAP polygon per part")
        return [("Polygon", ring(p)) for p in a.geometry.geoms]
    if a.kind == POINT:
        return [("Dot", shapely.get_coordinates(a.geometry))]
    if a.kind == POINTS:
        return [("PointSet", shapely.get_coordinates(a.geometry))]
    lines = shapely.get_parts(a.geometry)
    if len(lines) == 1 and len(shapely.get_coordinates(lines[0])) == 2:
        return [("Measurement", shapely.get_coordinates(lines[0]))]
    if not allow_loss:
        raise AnnotationError(f"{where}: ASAP has only two-point lines (Measurement); this line has "
                              f"{len(shapely.get_coordinates(a.geometry))} points (allow loss to write its points)")
    _count(lost, "line(s) written as point sets")
    return [("PointSet", shapely.get_coordinates(a.geometry))]


def _count(lost: dict[str, int], what: str) -> None:
    lost[what] = lost.get(what, 0) + 1
