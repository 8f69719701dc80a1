"""engine.annotations.cli: the ``annotations convert`` and ``annotations stats`` commands."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest

from engine.annotations import load_annotations
from engine.annotations.cli import EXIT_BAD_FILE, EXIT_OK, EXIT_SLIDE, EXIT_WRITE, add_parser, main
from engine.io.svs import write_svs_array

DATA = Path(__file__).parent / "data" / "annotations"


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="engine")
    add_parser(root.add_subparsers(dest="command", required=True))
    return root


def _run(parser, *argv: str) -> tuple[int, str, str]:
    args = parser.parse_args(["annotations", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.annotations_main(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_convert_asap_to_geojson_and_back(tmp_path, parser):
    code, out, err = _run(parser, "convert", str(DATA / "asap_all_types.xml"), str(tmp_path / "a.geojson"))
    assert code == EXIT_OK and "wrote 7 annotation(s) in 5 class(es)" in out
    assert "warning:" in err and "splines are read as polygons" in err
    original = load_annotations(DATA / "asap_all_types.xml").annotations
    assert load_annotations(tmp_path / "a.geojson").annotations == original
    code, out, err = _run(parser, "convert", str(tmp_path / "a.geojson"), str(tmp_path / "b.xml"))
    assert code == EXIT_OK and err == ""
    assert load_annotations(tmp_path / "b.xml").annotations == original


def test_convert_refuses_loss_unless_asked_and_reports_bad_files(tmp_path, parser):
    source = str(DATA / "qupath_v04_collection.geojson")
    code, _, err = _run(parser, "convert", source, str(tmp_path / "a.xml"))
    assert code == EXIT_BAD_FILE and "no holes" in err and not (tmp_path / "a.xml").exists()
    code, _, err = _run(parser, "convert", source, str(tmp_path / "a.xml"), "--allow-loss")
    assert code == EXIT_OK and "ellipse(s) written as polygons" in err and (tmp_path / "a.xml").exists()
    (tmp_path / "bad.geojson").write_text("{")
    code, _, err = _run(parser, "convert", str(tmp_path / "bad.geojson"), str(tmp_path / "c.xml"))
    assert code == EXIT_BAD_FILE and "bad.geojson: not valid JSON" in err
    code, _, err = _run(parser, "convert", source, str(tmp_path / "missing" / "d.geojson"))
    assert code == EXIT_WRITE and "could not write" in err and "its folder does not exist" in err
    code, _, _ = _run(parser, "convert", source, str(tmp_path / "e.out"), "--to", "geojson")
    assert code == EXIT_OK and load_annotations(tmp_path / "e.out").format == "geojson"


def test_stats_table_json_and_microns_from_a_slide(tmp_path, parser):
    source = str(DATA / "asap_all_types.xml")
    code, out, err = _run(parser, "stats", source)
    assert code == EXIT_OK and "_0" in out and "4e+06" in out and "µm²" not in out
    code, out, _ = _run(parser, "stats", source, "--mpp", "0.5", "--json")
    result = json.loads(out)
    assert code == EXIT_OK and result["total"]["count"] == 7 and result["classes"]["_0"]["total_area_um2"] == 1e6
    slide = write_svs_array(tmp_path / "s.svs", np.full((64, 64, 3), 220, np.uint8), mpp=0.25, downsamples=(1,))
    code, out, _ = _run(parser, "stats", source, "--slide", str(slide), "--json")
    assert code == EXIT_OK and json.loads(out)["classes"]["_0"]["total_area_um2"] == pytest.approx(250_000)
    code, _, err = _run(parser, "stats", source, "--slide", str(tmp_path / "nope.svs"))
    assert code == EXIT_SLIDE and "nope.svs" in err
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations>")
    code, _, err = _run(parser, "stats", str(tmp_path / "bad.xml"))
    assert code == EXIT_BAD_FILE and "bad.xml" in err


def test_main_dispatches_to_the_subcommand(tmp_path, parser, capsys):
    args = parser.parse_args(["annotations", "stats", str(DATA / "qupath_v02_array.json")])
    assert main(args) == EXIT_OK
    assert "Tumor" in capsys.readouterr().out
