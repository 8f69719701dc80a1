"""Evaluation's kept maps (``EvaluationSpec.keep_maps``), its cancel inside a slide's streamed
pass, the folder read back for display, and the labels-CSV column listing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import save_green_detector, write_test_slide

from engine import api
from engine.errors import LabelsError
from engine.evaluate.run import evaluate
from engine.events import CancelToken
from engine.geometry import Box
from engine.specs import EvaluationSpec


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    model = save_green_detector(root / "model", tile_size=64).parent
    rows = ["slide,label,patient"]
    for i, boxes in enumerate([((16, 16, 64, 64),), (), ((100, 40, 140, 80),)]):
        write_test_slide(root / f"s{i}.svs", boxes=boxes, size=(192, 160))
        rows.append(f"s{i}.svs,{'green' if boxes else 'other'},p{i}")
    (root / "broken.svs").write_bytes(b"not a slide at all")
    rows.append("broken.svs,other,p9")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return root, model


def test_kept_maps_are_the_cells_of_the_scored_pass_at_their_place_on_the_slide(cohort, tmp_path):
    root, model = cohort
    out = tmp_path / "ev"
    result = evaluate(EvaluationSpec(model=str(model), labels=str(root / "test.csv"), out_dir=str(out), device="cpu",
                                     bootstrap=0, keep_maps=True, tissue_crop=False), lambda e: None)
    saved = json.loads((out / "metrics.json").read_text())
    slides = {Path(s).name: rel for s, rel in saved["maps"].items()}
    assert set(slides) == {"s0.svs", "s1.svs", "s2.svs"} and slides["s0.svs"] == "maps/s0/maps.npz"
    assert len(result.failed) == 1  # the broken slide: no maps, the rest kept
    layers, meta = api.read_maps(out / slides["s0.svs"])
    pred = layers["prediction"]
    assert pred.values.shape[0] == 2 and meta["made_by"] == "engine.evaluate"
    # Without the tissue crop the input is the whole 192 x 160 slide at level 0: the map spans it.
    box = Box.of(pred.l0_box)
    assert (box.x0, box.y0) == (0, 0) and box.x1 >= 192 and box.y1 >= 160
    cell_w = box.width / pred.values.shape[2]
    green = pred.values[1]
    # The cell over the green square's centre (40, 40) is green; one far from it (170, 140) is not.
    assert green[int(40 // cell_w), int(40 // cell_w)] > 0.9
    assert green[int(140 // cell_w), int(170 // cell_w)] < 0.2
    # The slide's p(green) comes from the same pass: max-pooled features, so it is the top cell's.
    assert float(green.max()) == pytest.approx(json.loads((out / "maps/s0/prediction.json").read_text())
                                               ["probabilities"][1], abs=1e-6)
    files = api.read_evaluation(out)
    rows = {Path(r.slide).name: r for r in files.rows}
    assert rows["s0.svs"].maps == str(out / "maps/s0/maps.npz") and rows["s1.svs"].prediction == "other"
    assert rows["s0.svs"].error == pytest.approx(1 - float(green.max()), abs=1e-6)


def test_kept_maps_follow_the_tissue_crop_and_padding(cohort, tmp_path):
    from engine.evaluate.maps import input_region
    from engine.slides import open_slide
    from engine.slides.region import level_region, tissue_box
    from engine.train.data import InputSpec

    root, _ = cohort
    with open_slide(root / "s0.svs") as slide:
        tissue = level_region(slide, 0, tissue_box(slide))
    assert input_region(root / "s0.svs", InputSpec(level=0)) == tissue
    padded = input_region(root / "s0.svs", InputSpec(level=0, size=tissue.lv_w + 20))
    assert padded.lv_x0 == tissue.lv_x0 - 10 and padded.lv_w == tissue.lv_w + 20
    cropped = input_region(root / "s0.svs", InputSpec(level=0, size=8))
    assert cropped.lv_x0 == tissue.lv_x0 + (tissue.lv_w - 8) // 2 and cropped.lv_h == 8


class _StopsAtCheck(CancelToken):
    """Reports cancelled from its ``n``-th check on: the first checks are the loop's, before the
    first slide; a later one can only be the streamed pass's between tiles."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    @property
    def cancelled(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_a_cancel_stops_the_streamed_pass_between_tiles(cohort, tmp_path):
    root, model = cohort
    token = _StopsAtCheck(3)
    result = evaluate(EvaluationSpec(model=str(model), labels=str(root / "test.csv"), out_dir=str(tmp_path / "ev"),
                                     device="cpu", bootstrap=0, tile_size=64, tissue_crop=False), lambda e: None, token)
    # The loop checked once before slide 1, then its pass checked at its tiles and stopped there.
    assert result.cancelled and result.metrics["evaluated"] == 0 and token.checks == 3


def test_label_columns_lists_the_targets_of_a_csv(tmp_path):
    (tmp_path / "l.csv").write_text("slide, Density ,split,patient,grade\na.svs,1,,p,2\n")
    assert api.label_columns(tmp_path / "l.csv") == ("density", "grade")
    (tmp_path / "bad.csv").write_text("name,label\n")
    with pytest.raises(LabelsError, match="bad.csv:1: header"):
        api.label_columns(tmp_path / "bad.csv")


def test_read_evaluation_of_a_regression_gives_points_and_signed_errors(tmp_path):
    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model

    torch.manual_seed(3)
    net = create_model("smallnet", width=4, num_classes=1, split="stage4", pool="avg").eval()
    card = ModelCard(architecture="smallnet", classes=("ki67",), split="stage4", pool="avg", model_kwargs={"width": 4},
                     tile_size=128, task="regression", targets=("ki67",), target_mean=(10.0,), target_std=(2.0,))
    model = save_checkpoint(tmp_path / "m", net, card).parent
    for i in range(3):
        write_test_slide(tmp_path / f"r{i}.svs", boxes=((8, 8, 8 + 30 * i, 40),) if i else (), size=(128, 128))
    (tmp_path / "r.csv").write_text("slide,ki67\nr0.svs,9\nr1.svs,10.5\nr2.svs,12\n")
    evaluate(EvaluationSpec(model=str(model), labels=str(tmp_path / "r.csv"), out_dir=str(tmp_path / "ev"),
                            device="cpu", bootstrap=0, keep_maps=True), lambda e: None)
    files = api.read_evaluation(tmp_path / "ev")
    assert files.kind == "scatter" and len(files.curves) == 1
    np.testing.assert_array_equal(files.curves[0].x, [9, 10.5, 12])
    for row, y in zip(files.rows, files.curves[0].y, strict=True):
        assert row.prediction == y and row.error == pytest.approx(y - row.target)
    layers, _ = api.read_maps(files.rows[0].maps)
    assert np.isfinite(layers["prediction"].values).all()  # targets in their units: near the mean 10


def test_kept_maps_of_a_head_with_stages_are_the_masked_models_cells(tmp_path):
    """smallnet split at stage3 (stride 8): the head's stage4 (conv, then a 2x2 max-pool) runs on
    the stitched map, whose skipped (glass) blocks hold NaN. The kept map is the masked model's
    per cell, as inference draws it: finite on the head cells holding tissue, NaN elsewhere, each
    cell 2 trunk cells (16 px)."""
    from tissue_fixtures import SIZE, region_input, write_half_tissue_slide

    from engine.geometry import MapGeometry
    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model
    from engine.slides import open_slide
    from engine.slides.tissue import detect_tissue

    write_half_tissue_slide(tmp_path / "half.svs")
    torch.manual_seed(5)
    net = create_model("smallnet", width=4, num_classes=2, split="stage3").eval()
    card = ModelCard(architecture="smallnet", classes=("other", "green"), split="stage3", model_kwargs={"width": 4},
                     input_mpp=0.5, tile_size=128, tissue_mask="auto", normalization_mean=(0.5, 0.5, 0.5),
                     normalization_std=(0.5, 0.5, 0.5))
    model = save_checkpoint(tmp_path / "m", net, card).parent
    (tmp_path / "l.csv").write_text("slide,label\nhalf.svs,green\n")
    evaluate(EvaluationSpec(model=str(model), labels=str(tmp_path / "l.csv"), out_dir=str(tmp_path / "ev"),
                            device="cpu", bootstrap=0, keep_maps=True, tissue_crop=False), lambda e: None)
    layers, _ = api.read_maps(tmp_path / "ev" / "maps" / "half" / "maps.npz")
    kept = layers["prediction"]
    assert kept.values.shape == (2, SIZE[1] // 16, SIZE[0] // 16) and Box.of(kept.l0_box) == Box(0, 0, *SIZE)
    with torch.no_grad():  # the masked model conventionally, in float64
        net = net.double()
        fmap = net.trunk()(region_input(tmp_path / "half.svs"))
        h, w = fmap.shape[2:]
        with open_slide(tmp_path / "half.svs") as slide:
            keep = detect_tissue(slide).on_grid(MapGeometry(Box(0, 0, w * 8, h * 8), (h, w)))
        mask = torch.from_numpy(keep)[None, None]
        head = net.head()
        cells = torch.softmax(head.forward_cells(torch.where(mask, fmap, torch.zeros((), dtype=fmap.dtype))), dim=1)
        _, on_head_grid = head.masked_features(fmap, mask)
    on_head_grid = on_head_grid[0, 0].numpy()
    assert 0 < on_head_grid.mean() < 1
    np.testing.assert_array_equal(np.isfinite(kept.values).all(axis=0), on_head_grid)
    np.testing.assert_allclose(kept.values[:, on_head_grid], cells[0].numpy()[:, on_head_grid], rtol=0, atol=1e-5)
