"""The annotation commands through ``python -m engine``'s ``main(argv)``: convert, stats, from-map,
score-maps and export-heatmaps; and the MapGeometry conversions they share."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from engine.annotations import Annotation, AnnotationSet, load_annotations, save_annotations
from engine.cli import main
from engine.geometry import Box, MapGeometry
from engine.io.maps import MapLayer, write_maps
from engine.io.svs import write_svs_array

DATA = Path(__file__).parent / "data" / "annotations"


def test_map_geometry_converts_level0_points_to_cells_and_back():
    grid = MapGeometry(Box(100, 200, 160, 230), (3, 6))  # 10 x 10 px cells
    l0 = np.array([[100.0, 200.0], [155.0, 225.0], [160.0, 230.0]])
    cells = grid.l0_to_map_xy(l0)
    assert cells.tolist() == [[0.0, 0.0], [5.5, 2.5], [6.0, 3.0]]
    assert np.array_equal(grid.map_to_l0_xy(cells), l0)
    assert grid.cell_at(155.0, 225.0) == tuple(int(v) for v in cells[1][::-1])


@pytest.fixture
def job(tmp_path):
    """A 64 x 128 px slide (MPP 0.5, tissue on its left half) and a maps.npz of it: 8 x 16 cells
    of 8 px, two hot blocks."""
    rgb = np.full((64, 128, 3), 235, np.uint8)
    rgb[:, :64] = (150, 90, 170)  # purple "tissue" on the left half: the map's columns 0..7
    slide = write_svs_array(tmp_path / "s.svs", rgb, mpp=0.5, downsamples=(1,))
    sal = np.zeros((8, 16), np.float32)
    sal[1:3, 1:4] = 1.0   # 3 x 2 cells
    sal[4:7, 8:12] = 0.5  # 4 x 3 cells, with a hole
    sal[5, 9] = 0.0
    write_maps(tmp_path / "run", {"saliency": MapLayer(sal, (0.0, 0.0, 128.0, 64.0))}, slide_path=str(slide),
               classes=("a", "b"), prediction=None)
    return tmp_path, slide, sal


def test_convert_and_stats_through_the_engine_cli(tmp_path, capsys):
    assert main(["annotations", "convert", str(DATA / "asap_all_types.xml"), str(tmp_path / "a.geojson")]) == 0
    assert load_annotations(tmp_path / "a.geojson").annotations == load_annotations(DATA / "asap_all_types.xml").annotations
    capsys.readouterr()
    assert main(["annotations", "stats", str(tmp_path / "a.geojson"), "--mpp", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["count"] == 7
    assert main(["annotations", "stats", str(tmp_path / "missing.geojson")]) == 2


def test_from_map_writes_regions_and_detections(job, capsys):
    tmp, _, sal = job
    out = tmp / "hot.geojson"
    assert main(["annotations", "from-map", "--maps", str(tmp / "run" / "maps.npz"), "--threshold", "0.4",
                 "--class", "Hot", "--simplify", "0", "--out", str(out)]) == 0
    found = load_annotations(out).annotations
    assert len(found) == 2 and {a.class_name for a in found} == {"Hot"}
    areas = sorted(a.geometry.area for a in found)
    assert areas == [6 * 64.0, 11 * 64.0]  # 3 x 2 cells; 4 x 3 cells less the hole, 64 px² each
    assert sum(len(a.geometry.interiors) for a in found if a.geometry.geom_type == "Polygon") == 1
    det = tmp / "cells.geojson"
    assert main(["annotations", "from-map", "--maps", str(tmp / "run"), "--threshold", "0.4", "--detections",
                 "--out", str(det)]) == 0
    cells = load_annotations(det).annotations
    assert len(cells) == int((sal > 0.4).sum()) and all(a.object_type == "detection" for a in cells)
    assert sorted(a.measurements["saliency"] for a in cells)[-1] == 1.0
    assert main(["annotations", "from-map", "--maps", str(tmp / "run"), "--layer", "nope", "--threshold", "1",
                 "--out", str(det)]) == 2
    assert main(["annotations", "from-map", "--maps", str(tmp / "s.svs"), "--threshold", "1", "--out", str(det)]) == 2


def test_score_maps_through_the_engine_cli(job, capsys):
    tmp, slide, sal = job
    outline = AnnotationSet([Annotation.rectangles(np.array([[8.0, 8.0, 32.0, 24.0]]), class_name="Tumor")[0]])
    save_annotations(outline, tmp / "t.geojson")
    capsys.readouterr()
    assert main(["score-maps", "--maps", str(tmp / "run"), "--annotations", str(tmp / "t.geojson"),
                 "--class", "Tumor", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mass_inside"] == pytest.approx(6.0 / (6 + 11 * 0.5))
    assert result["even_share"] == pytest.approx(6 / 128) and result["pixel_auc"] == pytest.approx(1.0)
    (tmp / "cohort.csv").write_text(f"slide,maps,annotations\n{slide.name},run/maps.npz,t.geojson\n")
    assert main(["score-maps", "--cohort", str(tmp / "cohort.csv"), "--class", "Tumor"]) == 0
    table = capsys.readouterr().out
    assert "s.svs" in table and "mean of 1" in table and "0.5217" in table  # 6 / 11.5
    # --tissue: only the left half's 64 cells count; the outline's 6 hot cells are all on tissue,
    # the 11 cells of 0.5 are not.
    assert main(["score-maps", "--maps", str(tmp / "run"), "--annotations", str(tmp / "t.geojson"), "--tissue",
                 "--json"]) == 0
    on_tissue = json.loads(capsys.readouterr().out)
    assert on_tissue["over"] == "tissue" and on_tissue["cells"] == 64 and on_tissue["cells_inside"] == 6
    assert on_tissue["mass_inside"] == pytest.approx(1.0) and on_tissue["even_share"] == pytest.approx(6 / 64)
    assert main(["score-maps", "--maps", str(tmp / "run")]) == 2


def test_export_heatmaps_registers_to_the_slide(job, capsys):
    tmp, slide, sal = job
    assert main(["export-heatmaps", "--maps", str(tmp / "run"), "--out", str(tmp / "tif")]) == 0
    assert "saliency_heatmap_tiff" in capsys.readouterr().out
    with tifffile.TiffFile(tmp / "tif" / "saliency.values.tif") as tif:
        assert np.array_equal(tif.pages[0].asarray(), sal)  # the map covers the whole slide here
        num, den = tif.pages[0].tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / (0.5 * 8))
    assert main(["export-heatmaps", "--maps", str(tmp / "run"), "--slide", str(tmp / "gone.svs"),
                 "--out", str(tmp / "tif")]) == 3
    assert main(["export-heatmaps", "--maps", str(tmp / "run"), "--layer", "attention", "--out", str(tmp / "t")]) == 2
