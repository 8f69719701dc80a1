"""Runs inside annotated regions: only the regions' area is computed (blocks outside are skipped,
cells outside are NaN and out of the pool), and what is computed equals the unrestricted run."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
from model_fixtures import green_detector, save_green_detector, write_test_slide

from engine.annotations import Annotation, AnnotationSet, rasterize, save_annotations
from engine.api import run_inference
from engine.cli import main
from engine.errors import SpecError
from engine.events import MapPatch, Progress
from engine.geometry import Box, MapGeometry
from engine.io.maps import read_maps
from engine.specs import InferenceSpec
from engine.streaming import StreamHooks, StreamingModule

# An L whose bounding box (128, 64)-(512, 448) holds the first green square, which the L itself
# avoids: a bar above it and a bar to its left, plus the square's lower-left corner region.
L_SHAPE = shapely.Polygon([(128, 64), (512, 64), (512, 120), (200, 120), (200, 448), (128, 448)])
# Over the first green square's top-left corner: green, purple and their edges.
ON_GREEN = shapely.Polygon([(160, 64), (416, 64), (416, 304), (304, 304), (160, 160)])
PEN = shapely.box(320, 208, 384, 256)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("roi")
    write_test_slide(d / "green.svs")
    save_green_detector(d / "model")
    return d


def _regions(*shapes_and_classes) -> AnnotationSet:
    return AnnotationSet([Annotation.from_geometry(g, class_name=c) for g, c in shapes_and_classes])


def _run(workdir, **kw):
    events = []
    spec = InferenceSpec(slide_path=str(workdir / "green.svs"), model_path=str(workdir / "model"), **kw)
    return run_inference(spec, events.append), events


def _assemble(events, layer):
    patches = [e for e in events if isinstance(e, MapPatch) and e.layer == layer]
    first = patches[0]
    out = np.full(first.values.shape[:-2] + first.map_shape, np.nan, np.float32)
    for p in patches:
        r, c = p.cell_offset
        out[..., r:r + p.values.shape[-2], c:c + p.values.shape[-1]] = p.values
    return out, Box.of(first.map_l0_box), patches


@pytest.fixture(scope="module")
def whole(workdir):
    """The unrestricted run over the whole slide (level-0 origin, so cells line up)."""
    _, events = _run(workdir, l0_region=(0, 0, 1024, 768))
    return _assemble(events, "prediction")[0], _assemble(events, "saliency")


def test_only_the_area_is_computed_and_it_equals_the_unrestricted_run(workdir, whole, tmp_path):
    result, events = _run(workdir, regions=_regions((L_SHAPE, "Keep")), out_dir=str(tmp_path / "out"))
    prob, box, patches = _assemble(events, "prediction")
    assert box == Box(128, 64, 512, 448)  # the read region is the L's bounding box
    h, w = prob.shape[1:]
    cell = box.width / w
    inside = rasterize(L_SHAPE, MapGeometry(box, (h, w)))
    assert inside.any() and (~inside).any()
    assert np.isnan(prob[:, ~inside]).all() and np.isfinite(prob[:, inside]).all()
    # Every block with a cell inside was run, and only those: the forward progress counts all blocks.
    total = next(e.total for e in events if isinstance(e, Progress) and e.phase == "forward")
    assert 0 < len(patches) < total
    # The green square lies in the read box but outside the L: the pool never saw it.
    assert result.prediction.label == "other"
    assert result.prediction.probabilities[1] == pytest.approx(float(torch.softmax(torch.tensor([1.0, -1.0]), 0)[1]))
    # Cells inside, away from the read box's edges (where the streaming pads), equal the whole-slide run's.
    full_prob = whole[0]
    assert cell == 1024 / full_prob.shape[2]
    r0, c0 = int(box.y0 / cell), int(box.x0 / cell)
    same = full_prob[:, r0:r0 + h, c0:c0 + w]
    margin = 3  # cells: the detector's receptive field (see test_api_inference)
    interior = inside.copy()
    interior[:, w - margin:] = False
    interior[h - margin:, :] = False
    interior[:margin, :] = False
    interior[:, :margin] = False
    assert interior.sum() > 10
    np.testing.assert_allclose(prob[:, interior], same[:, interior], rtol=0, atol=1e-6)
    # Saliency: NaN outside the area; the saliency map is the gradient of the region's own pool.
    sal, sal_box, _ = _assemble(events, "saliency")
    sal_inside = rasterize(L_SHAPE, MapGeometry(sal_box, sal.shape))
    assert np.isnan(sal[~sal_inside]).all() and np.isfinite(sal[sal_inside]).all()
    layers, meta = read_maps(result.outputs["maps_npz"])
    assert np.isnan(layers["prediction"].values[:, ~inside]).all()
    assert meta["regions"] == {"source": "annotations given", "include": [], "exclude": []}


def test_include_and_exclude_classes_and_a_region_on_green(workdir, whole, tmp_path):
    regions = _regions((L_SHAPE, "Keep"), (ON_GREEN, "Tumor"), (PEN, "Pen"))
    save_annotations(regions, tmp_path / "r.geojson")
    result, events = _run(workdir, regions=str(tmp_path / "r.geojson"), include_classes=("Tumor",),
                          exclude_classes="Pen", saliency=False)
    prob, box, _ = _assemble(events, "prediction")
    assert box == Box(160, 64, 416, 304)
    area = shapely.difference(ON_GREEN, PEN)
    inside = rasterize(area, MapGeometry(box, prob.shape[1:]))
    assert np.isnan(prob[:, ~inside]).all() and np.isfinite(prob[:, inside]).all()
    assert result.prediction.label == "green"  # green is inside this area
    # Exact where computed: the values (which vary here, across the square's edges) equal the
    # whole-slide run's, away from the read box's edges.
    full_prob = whole[0]
    cell = 1024 / full_prob.shape[2]
    r0, c0 = int(box.y0 / cell), int(box.x0 / cell)
    h, w = prob.shape[1:]
    interior = inside.copy()
    interior[:3], interior[h - 3:], interior[:, :3], interior[:, w - 3:] = False, False, False, False
    values = prob[1][interior]
    assert values.min() < 0.2 and values.max() > 0.99  # both sides of the edge
    np.testing.assert_allclose(prob[:, interior], full_prob[:, r0:r0 + h, c0:c0 + w][:, interior], rtol=0, atol=1e-6)
    with pytest.raises(SpecError, match="cover nothing"):
        _run(workdir, regions=str(tmp_path / "r.geojson"), include_classes=("Stroma",))
    with pytest.raises(SpecError, match="give regions too"):
        InferenceSpec(slide_path="s", model_path="m", include_classes=("Tumor",))


def test_cli_runs_inside_regions(workdir, tmp_path, capsys):
    save_annotations(_regions((L_SHAPE, "Keep"), (ON_GREEN, "Tumor")), tmp_path / "r.geojson")
    code = main(["infer", str(workdir / "green.svs"), "--model", str(workdir / "model"), "--out", str(tmp_path / "o"),
                 "--regions", str(tmp_path / "r.geojson"), "--include", "Keep", "--exclude", "Tumor"])
    assert code == 0 and "other" in capsys.readouterr().out
    layers, meta = read_maps(tmp_path / "o" / "green" / "maps.npz")
    assert meta["regions"]["include"] == ["Keep"] and meta["regions"]["exclude"] == ["Tumor"]
    assert np.isnan(layers["prediction"].values).any()


def test_stream_hooks_skip_block_leaves_blocks_unread_and_unrun():
    torch.manual_seed(0)
    trunk = green_detector().trunk().double()
    stream = StreamingModule(trunk, 64)
    x = torch.rand(1, 3, 256, 320, dtype=torch.float64)
    full = stream(x)
    seen = []
    skipped = []

    def skip(rows, cols):
        out = cols[0] == 0  # the first column of blocks
        if out:
            skipped.append((rows, cols))
        return out

    hooks = StreamHooks(on_block=lambda rows, cols, v: seen.append((rows, cols)), skip_block=skip)
    part = stream(x, hooks=hooks)
    assert skipped and seen and not set(seen) & set(skipped)
    assert len(seen) + len(skipped) == stream.tile_plan((256, 320)).n_blocks
    c_end = skipped[0][1][1]
    assert torch.isnan(part[..., :c_end]).all()
    assert torch.equal(part[..., c_end:], full[..., c_end:])
