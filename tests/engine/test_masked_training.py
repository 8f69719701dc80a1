"""Masks in training: detected tissue follows the augmentation, an annotations column defines the
mask, masked streamed training equals conventional, and masked training still learns (GeM, attention)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from train_fixtures import GLASS, LESION, TISSUE

from engine.api import run_training
from engine.events import JobWarning, Metrics
from engine.io.checkpoints import load_checkpoint, read_model_card
from engine.io.labels import read_labels
from engine.io.svs import write_svs_array
from engine.specs import TrainingSpec
from engine.train.data import Augmentation, Placement, oriented
from engine.train.masks import SlideMasks

STRIDE = 16


def grid16(in_hw):
    return (-(-in_hw[0] // STRIDE), -(-in_hw[1] // STRIDE)), (STRIDE, STRIDE)


def half_tissue_rgb(rng, positive: bool, size: int = 128) -> np.ndarray:
    """Glass with tissue in the left ~40% only; a positive slide has a lesion inside the tissue."""
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = GLASS
    w = int(size * 0.4)
    noise = rng.integers(-12, 13, (size - 16, w - 8, 1))
    rgb[8:size - 8, 8:w] = np.clip(np.asarray(TISSUE) + noise, 0, 255).astype(np.uint8)
    if positive:
        y, x = rng.integers(16, size - 32), rng.integers(12, w - 16)
        rgb[y:y + 12, x:x + 12] = LESION
    return rgb


@pytest.fixture(scope="module")
def half_tissue_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("half_tissue")
    rng = np.random.default_rng(3)
    rows = ["slide,label,split"]
    for label, positive in (("benign", False), ("tumour", True)):
        for i in range(5):
            name = f"{label}_{i}.svs"
            write_svs_array(folder / name, half_tissue_rgb(rng, positive), mpp=0.5, app_mag=20, tile=128,
                            downsamples=(1,))
            rows.append(f"{name},{label},{'val' if i >= 3 else 'train'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


@pytest.fixture
def spec(half_tissue_set, tmp_path):
    return TrainingSpec(labels=str(half_tissue_set), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=128, tile_size=64, epochs=1, lr=3e-3,
                        tissue_crop=False, normalization_mean=(0.5, 0.5, 0.5),
                        normalization_std=(0.25, 0.25, 0.25), device="cpu")


@pytest.mark.parametrize("rot90", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_the_tissue_mask_follows_flips_and_rotations_exactly(rot90, flip):
    rng = np.random.default_rng(0)
    rgb = half_tissue_rgb(rng, True, size=128)[:, :96]  # not square: a quarter turn swaps the grid
    record = read_labels_record()
    masks = SlideMasks("auto", {}, grid16)
    aug = Augmentation(rot90=rot90, flip=flip)
    turned = masks(record, rgb, None, aug)[0, 0].numpy()
    plain = masks(record, rgb, None, Augmentation())[0, 0].numpy()
    assert 0 < plain.mean() < 0.8  # glass is left out
    np.testing.assert_array_equal(turned, oriented(plain, aug))
    # The same as detecting on the turned image itself.
    np.testing.assert_array_equal(turned, masks(record, np.ascontiguousarray(oriented(rgb, aug)), None,
                                                Augmentation())[0, 0].numpy())


def read_labels_record(path="slide.svs", annotations=None):
    from pathlib import Path

    from engine.io.labels import SlideRecord

    return SlideRecord(Path(path), 0, None, "test", annotations=annotations)


def test_a_blank_input_falls_back_to_the_whole_map_with_a_warning():
    events = []
    masks = SlideMasks("auto", {}, grid16, emit=events.append)
    blank = np.full((64, 64, 3), 235, np.uint8)
    assert masks(read_labels_record(), blank, None, Augmentation()) is None
    assert masks(read_labels_record(), blank, None, Augmentation()) is None
    assert len(events) == 1 and isinstance(events[0], JobWarning) and "whole input" in events[0].message
    assert SlideMasks("none", {}, grid16)(read_labels_record(), blank, None, Augmentation()) is None


def write_geojson(path, boxes):
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
        [x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {"objectType": "annotation", "classification": {"name": name, "color": [255, 0, 0]}}}
        for name, (x0, y0, x1, y1) in boxes]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_an_annotations_column_defines_the_mask_and_is_no_target(tmp_path):
    rng = np.random.default_rng(1)
    write_svs_array(tmp_path / "a.svs", half_tissue_rgb(rng, False), mpp=0.5, app_mag=20, tile=128, downsamples=(1,))
    write_svs_array(tmp_path / "b.svs", half_tissue_rgb(rng, True), mpp=0.5, app_mag=20, tile=128, downsamples=(1,))
    (tmp_path / "ann").mkdir()
    write_geojson(tmp_path / "ann" / "a.geojson", [("tumour", (64, 0, 128, 128)), ("pen", (64, 0, 96, 32)),
                                                   ("stroma", (0, 0, 32, 32))])
    (tmp_path / "labels.csv").write_text("slide,label,annotations\na.svs,benign,ann/a.geojson\nb.svs,tumour,\n")
    labels = read_labels(tmp_path / "labels.csv")
    assert labels.targets == ("label",) and labels.classes == ("benign", "tumour")
    by_name = {r.path.name: r for r in labels.records}
    assert by_name["a.svs"].annotations == (tmp_path / "ann" / "a.geojson").resolve()
    assert by_name["b.svs"].annotations is None
    rgb = np.zeros((128, 128, 3), np.uint8)
    place = Placement(1.0, 0, 0, 128, 128)
    mask = SlideMasks("none", {}, grid16, include=("tumour",), exclude=("pen",))(
        by_name["a.svs"], rgb, place, Augmentation())[0, 0].numpy()
    expected = np.zeros((8, 8), bool)
    expected[:, 4:] = True
    expected[:2, 4:6] = False
    np.testing.assert_array_equal(mask, expected)
    everything = SlideMasks("none", {}, grid16)(by_name["a.svs"], rgb, place, Augmentation())[0, 0].numpy()
    assert everything[:2, :2].all() and everything[:, 4:].all() and not everything[4:, :4].any()
    # A crop or pad places the input elsewhere on the slide: the mask moves with it.
    shifted = SlideMasks("none", {}, grid16, include=("tumour",))(
        by_name["a.svs"], rgb, Placement(1.0, 32, 0, 128, 128), Augmentation())[0, 0].numpy()
    assert shifted[:, 2:6].all() and not shifted[:, :2].any() and not shifted[:, 6:].any()
    (tmp_path / "bad.csv").write_text("slide,label,annotations\na.svs,benign,missing.geojson\nb.svs,tumour,\n")
    with pytest.raises(Exception, match=r"bad.csv:2: annotation file 'missing.geojson' not found"):
        read_labels(tmp_path / "bad.csv")


def train_losses(spec, **changes):
    events = []
    done = run_training(dataclasses.replace(spec, **changes), events.append)
    return [e.values["loss"] for e in events if isinstance(e, Metrics) and e.phase == "train"], events, done


@pytest.mark.parametrize("head", ["avg", "attention"])
def test_masked_streamed_training_equals_conventional_and_differs_from_unmasked(spec, tmp_path, head):
    runs = {}
    for name, changes in (("streamed", {}), ("conventional", {"streaming": False}), ("unmasked", {"tissue_mask": "none"})):
        runs[name], _, _ = train_losses(spec, head=head, dtype="float64", out_dir=str(tmp_path / name), **changes)
    assert len(runs["streamed"]) == 6
    assert runs["streamed"] == pytest.approx(runs["conventional"], rel=1e-10, abs=1e-12)
    assert runs["streamed"] != pytest.approx(runs["unmasked"], rel=1e-6)
    a, b = (load_checkpoint(tmp_path / n / "last")[0].state_dict() for n in ("streamed", "conventional"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11)
    card = read_model_card(tmp_path / "streamed" / "last")
    assert card.head == head and card.tissue_mask == "auto"
    assert read_model_card(tmp_path / "unmasked" / "last").tissue_mask == "none"


@pytest.mark.parametrize("head", ["gem", "attention"])
def test_masked_training_with_gem_and_attention_still_learns(spec, tmp_path, head):
    losses, events, _ = train_losses(spec, head=head, epochs=6, lr=1e-2, model_kwargs={"width": 8},
                                     out_dir=str(tmp_path / head))
    val = [e.values for e in events if isinstance(e, Metrics) and e.phase == "val"]
    assert val[-1]["auc"] >= 0.75
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
