"""engine.annotations files: QuPath GeoJSON (every version's shape) and ASAP XML, round trips,
repairs and refusals of malformed or unsafe files."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import shapely

from engine.annotations import Annotation, AnnotationError, AnnotationSet, load_annotations, save_annotations
from engine.annotations.geojson import KIND_PROPERTY
from engine.errors import ResultsError
from engine.geometry import Box

DATA = Path(__file__).parent / "data" / "annotations"


@pytest.fixture
def every_kind() -> AnnotationSet:
    """One annotation of every kind, with holes, colours, names, locks and measurements."""
    s = AnnotationSet(classes={"Tumor": (200, 0, 0), "Stroma": (0, 128, 0)})
    s.append(Annotation.polygon([(100.5, 100.25), (300, 100), (320.125, 260), (90, 250)],
                                holes=[[(150, 150), (200, 150), (200, 200)], [(250, 150), (280, 150), (260, 190)]],
                                class_name="Tumor", name="with holes", measurements={"b": 1.5, "a": -2.0}))
    s.append(Annotation.from_geometry(shapely.MultiPolygon([
        shapely.Polygon([(500, 500), (600, 500), (550, 580)]),
        shapely.Polygon([(700, 700), (800, 700), (800, 760), (700, 760)], [[(720, 720), (740, 720), (730, 740)]])]),
        class_name="Stroma", locked=True))
    s.append(Annotation.rectangle(Box(10, 20, 40, 60), color=(1, 2, 3), name="box"))
    s.append(Annotation.ellipse(Box(1000.1, 500.3, 1200.7, 600.9), class_name="Necrosis", locked=True))
    s.append(Annotation.line([(0, 0), (50.5, 60), (90, 20)], name="path"))
    s.append(Annotation.line([(5, 5), (300, 400)], name="ruler"))
    s.append(Annotation.point(400.5, 300.25, class_name="Tumor"))
    s.append(Annotation.points([(1, 2), (3, 4), (5, 6)], color=(0, 0, 255)))
    s.append(Annotation.rectangle(Box(20, 20, 24, 24), object_type="detection", measurements={"score": 0.93}))
    return s


@pytest.fixture
def asap_representable() -> AnnotationSet:
    """What ASAP XML holds exactly: polygons without holes, rectangles, dots, point sets, rulers."""
    s = AnnotationSet(classes={"_0": (255, 0, 0), "_2": (255, 255, 0)})
    s.append(Annotation.polygon([(1000.5, 1000.25), (3000, 1000), (3000, 3000.75), (1000, 3000)],
                                class_name="_0", name="Annotation 0", color=(244, 250, 88)))
    s.append(Annotation.rectangle(Box(7000, 100, 7400, 300), class_name="Tumor", name="Annotation 1"))
    s.append(Annotation.point(123.5, 456.5, color=(255, 0, 0)))
    s.append(Annotation.points([(10, 11), (20, 21), (30, 31)], class_name="_2"))
    s.append(Annotation.line([(0, 0), (300, 400)], name="ruler & <more>"))
    return s


@pytest.mark.parametrize("name", ["a.geojson", "a.json", "a.geojson.gz"])
def test_geojson_round_trip_is_lossless(tmp_path, every_kind, name):
    assert save_annotations(every_kind, tmp_path / name) == ()
    loaded = load_annotations(tmp_path / name)
    assert loaded.warnings == () and loaded.format == "geojson"
    assert loaded.annotations == every_kind
    assert [a.kind for a in loaded.annotations] == [a.kind for a in every_kind]
    assert list(loaded.annotations[0].measurements) == ["b", "a"]


def test_geojson_export_is_the_current_qupath_shape(tmp_path, every_kind):
    save_annotations(every_kind, tmp_path / "a.geojson")
    doc = json.loads((tmp_path / "a.geojson").read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(every_kind)
    first, multi, box, ellipse = doc["features"][:4]
    assert first["type"] == "Feature" and first["geometry"]["type"] == "Polygon"
    assert len(first["geometry"]["coordinates"]) == 3  # exterior and two holes
    props = first["properties"]
    assert props["objectType"] == "annotation" and props["name"] == "with holes"
    assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert props["measurements"] == {"b": 1.5, "a": -2.0}
    assert "isLocked" not in props and multi["properties"]["isLocked"] is True  # written only when true
    assert box["properties"]["color"] == [1, 2, 3] and box["properties"][KIND_PROPERTY] == "rectangle"
    assert ellipse["geometry"]["isEllipse"] is True
    # QuPath cannot read a classification object without a colour: undeclared classes get one.
    assert ellipse["properties"]["classification"]["color"] == list(every_kind.class_color("Necrosis"))
    assert doc["features"][-1]["properties"]["objectType"] == "detection"


def test_asap_round_trip_is_lossless_for_what_asap_holds(tmp_path, asap_representable):
    assert save_annotations(asap_representable, tmp_path / "a.xml") == ()
    loaded = load_annotations(tmp_path / "a.xml")
    assert loaded.warnings == () and loaded.format == "asap"
    assert loaded.annotations == asap_representable
    text = (tmp_path / "a.xml").read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0"?>\n<ASAP_Annotations>')
    assert '<Group Name="_0" PartOfGroup="None" Color="#FF0000">' in text
    assert 'Name="ruler &amp; &lt;more&gt;" Type="Measurement" PartOfGroup="None"' in text


def test_asap_refuses_losing_shapes_unless_allowed_and_lists_every_loss(tmp_path, every_kind):
    with pytest.raises(AnnotationError, match=r"annotation 0 \('with holes'\).*no holes"):
        save_annotations(every_kind, tmp_path / "a.xml")
    assert not (tmp_path / "a.xml").exists()
    lost = save_annotations(every_kind, tmp_path / "a.xml", allow_loss=True)
    text = " | ".join(lost)
    for what in ("without their holes", "ellipse(s) written as polygons", "split into one ASAP polygon per part",
                 "line(s) written as point sets", "no measurements", "no locks", "no detection types"):
        assert what in text
    back = load_annotations(tmp_path / "a.xml").annotations
    assert len(back) == len(every_kind) + 1  # the multipolygon became two polygons
    assert back[0].geometry.equals(shapely.Polygon(every_kind[0].geometry.exterior))
    assert [a.kind for a in back][-4:] == ["line", "point", "points", "rectangle"]


def test_qupath_v02_array_with_packed_colours_and_measurement_lists():
    loaded = load_annotations(DATA / "qupath_v02_array.json")
    s = loaded.annotations
    assert loaded.warnings == () and len(s) == 3
    assert s.classes == {"Tumor": (200, 0, 0), "Stroma": (0, 128, 0)}  # colorRGB -3670016, -16744448
    region, multi, cell = s
    assert region.kind == "polygon" and len(region.geometry.interiors) == 1 and region.area_l0 == 200 * 150 - 2500
    assert region.name == "Region A" and dict(region.measurements) == {"Num Detections": 12.0, "Area µm^2": 6250.5}
    assert multi.kind == "multipolygon" and multi.locked and multi.class_name == "Stroma"
    assert cell.object_type == "detection" and cell.is_detection and cell.measurements["Nucleus: Area"] == 17.5


def test_qupath_v03_array_with_object_type_and_derived_classes():
    s = load_annotations(DATA / "qupath_v03_array.geojson").annotations
    line, mitosis, points, stroma, cell = s
    assert line.kind == "line" and len(line.geometry.coords) == 3
    assert mitosis.kind == "point" and mitosis.class_name == "Tumor: Positive" and mitosis.name == "Mitosis"
    assert s.classes["Tumor: Positive"] == (200, 50, 50)
    assert points.kind == "points" and points.color == (0, 0, 255) and points.measurements["Count"] == 3
    assert stroma.kind == "rectangle" and stroma.locked  # QuPath reads an axis-aligned box as a rectangle
    assert cell.object_type == "cell" and cell.is_detection


def test_qupath_v04_collection_with_ellipse_colours_and_measurement_objects():
    loaded = load_annotations(DATA / "qupath_v04_collection.geojson")
    ellipse, rect, multi, detection = loaded.annotations
    assert ellipse.kind == "ellipse" and ellipse.l0_box == Box(1000, 500, 1200, 600)  # from the bounds, as QuPath
    assert ellipse.color == (255, 255, 0) and ellipse.class_name == "Tumor" and ellipse.locked
    assert ellipse.measurements["Area µm^2"] == 3927.0 and math.isnan(ellipse.measurements["Max score"])
    assert rect.kind == "rectangle" and rect.l0_box == Box(0, 0, 40, 30)
    assert multi.kind == "multipolygon" and multi.class_name == "Tumor: Positive"
    assert multi.area_l0 == 400 * 400 - 100 * 100 + 100 * 90 / 2
    assert list(multi.measurements) == ["Mean score", "Area px^2"]
    assert detection.object_type == "detection" and detection.measurements == {"score": 0.93}
    assert loaded.annotations.classes == {"Tumor": (200, 0, 0), "Stroma": (0, 128, 0), "Tumor: Positive": (200, 50, 50)}


def test_single_feature_and_string_classification():
    (a,) = load_annotations(DATA / "qupath_single_feature.geojson").annotations
    assert a.name == "Only one" and a.class_name == "Necrosis" and a.kind == "polygon"


def test_asap_fixture_with_every_element_type():
    loaded = load_annotations(DATA / "asap_all_types.xml")
    s = loaded.annotations
    assert [a.kind for a in s] == ["polygon", "polygon", "rectangle", "point", "points", "line", "polygon"]
    assert [a.class_name for a in s] == ["_0", "Tumor", "_1", None, "Exclusion", None, "_2"]
    assert s.classes == {"_0": (255, 0, 0), "_1": (255, 0, 0), "_2": (255, 255, 0), "Tumor": (255, 0, 0),
                         "Exclusion": (100, 254, 46)}
    assert s[0].color == (0xF4, 0xFA, 0x58) and s[0].name == "Annotation 0" and s[0].area_l0 == 2000 * 2000
    assert list(s[4].geometry.geoms[0].coords) == [(10, 11)]  # placed by Order, not file order
    assert s[5].geometry.length == 500
    assert len(loaded.warnings) == 1 and "line 12: annotation 'Annotation 1': splines" in loaded.warnings[0]


def test_self_intersecting_polygons_are_repaired_and_reported(tmp_path):
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [bowtie]},
               "properties": {"name": "bow", "classification": {"name": "Tumor", "color": [1, 2, 3]}}}
    sliver = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [9, 9], [0, 0]]]}}
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps([feature, sliver]))
    loaded = load_annotations(path)
    (a,) = loaded.annotations
    assert a.kind == "multipolygon" and a.area_l0 == 50 and a.name == "bow" and a.class_name == "Tumor"
    assert len(loaded.warnings) == 2
    assert "bad.geojson: feature 0 ('bow'): invalid polygon (Self-intersection" in loaded.warnings[0]
    assert "now a MultiPolygon" in loaded.warnings[0]
    assert "feature 1: polygon has no area" in loaded.warnings[1] and "dropped" in loaded.warnings[1]

    xml = tmp_path / "bad.xml"
    xml.write_text('<ASAP_Annotations><Annotations>\n<Annotation Name="x" Type="Polygon" PartOfGroup="None">'
                   '<Coordinates>' + "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>'
                                             for i, (x, y) in enumerate(bowtie[:-1]))
                   + "</Coordinates></Annotation></Annotations></ASAP_Annotations>")
    loaded = load_annotations(xml)
    assert loaded.annotations[0].kind == "multipolygon" and loaded.annotations[0].area_l0 == 50
    assert "bad.xml: line 2: annotation 'x': invalid polygon" in loaded.warnings[0]


def _write(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


_POLY = '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}'


@pytest.mark.parametrize("text, message", [
    ('{"type": "FeatureCollection", "features": [', r"m\.geojson: not valid JSON: .*line 1, column"),
    ('{"type": "Topology"}', "expected a FeatureCollection"),
    ('{"type": "FeatureCollection"}', "without a 'features' array"),
    ('[{"type": "Feature", "properties": {}}]', "feature 0: has no geometry"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon"}}]', "feature 0: Polygon geometry has no 'coordinates'"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", "b"], [1, 2], [3, 4]]]}}]',
     "feature 0 ring 0: coordinates are not a list of"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 1]]]}}]',
     "feature 0 ring 0: coordinates are not a list"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [1, 1]]]}}]',
     r"feature 0 ring 0: coordinate \(nan, 0.0\) is not finite"),
    ('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1e20, 0]}}]', "is beyond"),
    ('[{"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": []}}]',
     "feature 0: unsupported geometry type 'GeometryCollection'"),
    ('[{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [0, 0]}}]', "unsupported geometry type"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"name": "n", "isLocked": "yes"}}]',
     r"feature 0 \('n'\): 'isLocked' must be true or false"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"measurements": [{"value": 1}]}}]',
     "feature 0: measurement 0 must be"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"measurements": {"a": "x"}}}]',
     "measurement 'a' is not a number"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"classification": {"name": 3}}}]',
     "classification 'name' must be a string"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"color": [300, 0, 0]}}]', "not a colour"),
    ('[{"type": "Feature", "geometry": ' + _POLY + ', "properties": {"objectType": 5}}]', "'objectType' must be"),
    ('[{"type": "Feature", "geometry": ' + _POLY + '}, "not a feature"]', "feature 1: not a Feature"),
    ('[{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0]]}}]',
     "needs at least 2 point"),
])
def test_malformed_geojson_names_the_file_and_feature(tmp_path, text, message):
    with pytest.raises(AnnotationError, match=message) as info:
        load_annotations(_write(tmp_path, "m.geojson", text))
    assert str(tmp_path / "m.geojson") in str(info.value)


_ANNOTATION = '<Annotation Name="A1" Type="{type}" PartOfGroup="None"><Coordinates>{coords}</Coordinates></Annotation>'


def _asap(body: str) -> str:
    return f'<?xml version="1.0"?>\n<ASAP_Annotations>\n<Annotations>\n{body}\n</Annotations>\n</ASAP_Annotations>\n'


@pytest.mark.parametrize("text, message", [
    ('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n<ASAP_Annotations/>',
     "line 2: XML DOCTYPE declarations are refused"),
    ('<?xml version="1.0"?>\n<!DOCTYPE x SYSTEM "file:///etc/passwd">\n<ASAP_Annotations/>', "DOCTYPE"),
    ('<ASAP_Annotations>\n<!ENTITY x "y">\n</ASAP_Annotations>', "line 2: XML ENTITY declarations are refused"),
    (_asap(_ANNOTATION.format(type="Polygon", coords='<Coordinate Order="0" X="1" Y="2">')),
     r"line \d+, column \d+: not well-formed XML"),
    (_asap(_ANNOTATION.format(type="Circle", coords='<Coordinate Order="0" X="1" Y="2"/>')),
     "line 4: annotation 'A1': unknown annotation Type 'Circle'"),
    (_asap(_ANNOTATION.format(type="Polygon", coords="")), "line 4: annotation 'A1': Polygon has no coordinates"),
    (_asap(_ANNOTATION.format(type="Polygon", coords='<Coordinate Order="0" Y="2"/>')),
     "line 4: annotation 'A1': <Coordinate> without X or Y"),
    (_asap(_ANNOTATION.format(type="Dot", coords='<Coordinate Order="0" X="abc" Y="2"/>')),
     "annotation 'A1': X='abc' is not a number"),
    (_asap(_ANNOTATION.format(type="Dot", coords='<Coordinate Order="zero" X="1" Y="2"/>')), "Order='zero'"),
    (_asap(_ANNOTATION.format(type="Dot", coords='<Coordinate Order="0" X="nan" Y="2"/>')),
     r"annotation 'A1': coordinate \(nan, 2.0\) is not finite"),
    (_asap(_ANNOTATION.format(type="Measurement", coords='<Coordinate Order="0" X="1" Y="2"/>')),
     "a Measurement needs 2 coordinates"),
    (_asap('<Coordinate Order="0" X="1" Y="2"/>'), "line 4: <Coordinate> outside an <Annotation>"),
    ('<?xml version="1.0"?>\n<svg><Annotations/></svg>', "line 2: root element <svg> is not ASAP's"),
    (_asap("").replace("</ASAP_Annotations>", "<AnnotationGroups><Group Color='#FF0000'/></AnnotationGroups>"
                       "</ASAP_Annotations>"), "line 6: <Group> without a Name"),
])
def test_malformed_or_unsafe_asap_xml_names_the_file_and_element(tmp_path, text, message):
    with pytest.raises(AnnotationError, match=message) as info:
        load_annotations(_write(tmp_path, "m.xml", text))
    assert str(tmp_path / "m.xml") in str(info.value)


def test_asap_oddities_are_read_and_reported(tmp_path):
    body = (_ANNOTATION.format(type="Dot", coords='<Coordinate Order="0" X="1,5" Y="2,25"/>').replace("None", "Mets")
            + '<Annotation Type="Rectangle" PartOfGroup="None" Color="red"><Coordinates>'
            + "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate([(0, 0), (4, 1), (3, 5), (-1, 4)]))
            + "</Coordinates></Annotation>")
    loaded = load_annotations(_write(tmp_path, "odd.xml", _asap(body)))
    dot, tilted = loaded.annotations
    assert (dot.geometry.x, dot.geometry.y) == (1.5, 2.25) and dot.class_name == "Mets"
    assert tilted.kind == "polygon" and tilted.color is None and tilted.name is None
    text = " | ".join(loaded.warnings)
    for what in ("decimal comma", "group 'Mets' is not declared", "not 4 axis-aligned corners", "'red' is not #rrggbb"):
        assert what in text


def test_size_cap_and_unreadable_files(tmp_path, every_kind):
    path = tmp_path / "a.geojson"
    save_annotations(every_kind, path)
    with pytest.raises(AnnotationError, match="MB is over the 0 MB limit"):
        load_annotations(path, max_bytes=100)
    bomb = tmp_path / "bomb.geojson.gz"
    bomb.write_bytes(gzip.compress(b"[" + b" " * 1_000_000 + b"]"))
    with pytest.raises(AnnotationError, match="unpacks to over"):
        load_annotations(bomb, max_bytes=100_000)
    (tmp_path / "broken.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(AnnotationError, match="broken.json.gz: not a gzip file"):
        load_annotations(tmp_path / "broken.json.gz")
    with pytest.raises(AnnotationError, match="missing.geojson: cannot read"):
        load_annotations(tmp_path / "missing.geojson")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        load_annotations(tmp_path / "notes.txt")


def test_format_is_sniffed_when_the_extension_does_not_say(tmp_path, asap_representable):
    save_annotations(asap_representable, tmp_path / "a.xml")
    (tmp_path / "a.annotations").write_bytes((tmp_path / "a.xml").read_bytes())
    assert load_annotations(tmp_path / "a.annotations").format == "asap"
    save_annotations(asap_representable, tmp_path / "b.dat", format="geojson")
    assert load_annotations(tmp_path / "b.dat").annotations == asap_representable


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, every_kind, asap_representable):
    path = tmp_path / "a.xml"
    save_annotations(asap_representable, path)
    before = path.read_bytes()
    with pytest.raises(AnnotationError):
        save_annotations(every_kind, path)  # refused (holes): nothing written
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.xml"]
    with pytest.raises(ResultsError, match="could not write .*its folder does not exist"):
        save_annotations(every_kind, tmp_path / "no" / "such" / "dir.geojson")


def test_what_qupath_files_carry_beyond_the_model_is_reported(tmp_path):
    square = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}
    features = [{"type": "Feature", "geometry": square, "nucleusGeometry": square, "properties": {"objectType": "cell"}},
                {"type": "Feature", "geometry": dict(square, plane={"c": -1, "z": 3, "t": 0}),
                 "properties": {"objectType": "tmaCore", "metadata": {"k": "v"}}}]
    loaded = load_annotations(_write(tmp_path, "q.geojson", json.dumps(features)))
    assert [a.object_type for a in loaded.annotations] == ["cell", "annotation"]
    text = " | ".join(loaded.warnings)
    for what in ("QuPath object type 'tmaCore' read as an annotation", "1 feature(s) carry cell nucleus outlines",
                 "1 feature(s) carry QuPath object metadata", "1 feature(s) carry z-slice"):
        assert what in text


@pytest.mark.parametrize("encoding, declaration", [("utf-8-sig", ""), ("utf-16", ""),
                                                   ("iso-8859-1", ' encoding="ISO-8859-1"')])
def test_asap_xml_in_other_encodings(tmp_path, encoding, declaration):
    body = _ANNOTATION.format(type="Dot", coords='<Coordinate Order="0" X="1" Y="2"/>').replace('"A1"', '"Lésion"')
    path = tmp_path / "e.xml"
    path.write_bytes(_asap(body).replace('version="1.0"', f'version="1.0"{declaration}').encode(encoding))
    (dot,) = load_annotations(path).annotations
    assert dot.name == "Lésion" and dot.kind == "point"
