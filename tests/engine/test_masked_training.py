"""Masks in training: the tissue cells are inference's (one detection per slide, on its thumbnail),
detected tissue follows the augmentation, an annotations column defines the
mask, masked streamed training equals conventional, and masked training still learns (GeM, attention)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from train_fixtures import GLASS, LESION, TISSUE

from engine.api import run_inference, run_training
from engine.events import JobWarning, MapPatch, Metrics
from engine.io.checkpoints import ModelCard, load_checkpoint, read_model_card, save_checkpoint
from engine.io.labels import read_labels
from engine.io.svs import write_svs_array
from engine.models import create_model
from engine.slides.tissue import MIN_CELL_TISSUE, slide_tissue
from engine.specs import InferenceSpec, TrainingSpec
from engine.train.classifier import Classifier
from engine.train.data import Augmentation, InputSpec, Placement, oriented, read_slide_placed
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


DARK, PALE = (150, 90, 170), (245, 200, 225)  # pale: saturation 45, mean 223 (not dark)


@pytest.fixture(scope="module")
def two_tone_slide(tmp_path_factory):
    """512 x 512 glass; tissue in [64, 448)^2, its left half dark, its right half pale. On the
    slide's thumbnail Otsu keeps both; on a crop that is all tissue it splits them."""
    folder = tmp_path_factory.mktemp("two_tone")
    rgb = np.empty((512, 512, 3), np.uint8)
    rgb[:] = GLASS
    rgb[64:448, 64:256] = DARK
    rgb[64:448, 256:448] = PALE
    write_svs_array(folder / "slide.svs", rgb, mpp=0.5, app_mag=20, tile=128, downsamples=(1,))
    net = create_model("smallnet", width=4, num_classes=2, split="stage4").eval()
    card = ModelCard(architecture="smallnet", classes=("a", "b"), split="stage4", model_kwargs={"width": 4},
                     input_mpp=0.5, tile_size=128, tissue_mask="auto")
    save_checkpoint(folder / "model", net, card)
    return folder, Classifier(net, streaming=True, tile_size=128).trunk_grid


def inference_tissue(folder, l0_box) -> np.ndarray:
    """The tissue layer inference emits on the trunk's grid over ``l0_box``."""
    events = []
    run_inference(InferenceSpec(slide_path=str(folder / "slide.svs"), model_path=str(folder / "model"),
                                l0_region=l0_box, device="cpu", saliency=False), events.append)
    (tissue,) = [e for e in events if isinstance(e, MapPatch) and e.layer == "tissue"]
    return tissue.values == 1


@pytest.mark.parametrize("inputs", [InputSpec(level=0, tissue_crop=False), InputSpec(level=0),
                                    InputSpec(level=0, size=128), InputSpec(level=0, tissue_crop=False, size=576)],
                         ids=["whole", "tissue box", "crop all tissue", "padded"])
def test_training_and_inference_find_the_same_tissue_cells(two_tone_slide, inputs):
    """Padded: the 512-px slide centred on a 576-px canvas, 32 px (2 cells) of padding a side."""
    folder, grid = two_tone_slide
    rgb, place = read_slide_placed(folder / "slide.svs", inputs)
    record = read_labels_record(folder / "slide.svs")
    trained = SlideMasks("auto", {}, grid)(record, rgb, place, Augmentation())[0, 0].numpy()
    if inputs.size == 128:
        assert trained.all()  # all tissue, the pale half too
    read = place.l0_read_box
    inferred = inference_tissue(folder, read.as_tuple())
    # The same cells, up to the placement: the input's cells over the part read from the slide.
    dx, dy = (read.x0 - place.l0_box.x0) / STRIDE, (read.y0 - place.l0_box.y0) / STRIDE
    assert dx == int(dx) and dy == int(dy)
    h, w = inferred.shape
    np.testing.assert_array_equal(trained[int(dy):int(dy) + h, int(dx):int(dx) + w], inferred)
    assert not trained.sum() > inferred.sum()  # padding holds no tissue
    assert inferred[:, : inferred.shape[1] // 2].any() and inferred[:, inferred.shape[1] // 2:].any()


@pytest.mark.parametrize("rot90", range(4))
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("size", [(128, 96), (120, 100)], ids=["stride multiple", "odd"])
def test_the_tissue_mask_follows_flips_and_rotations_exactly(two_tone_slide, rot90, flip, size):
    """Each augmented cell holds exactly the share of tissue of its pixels in the augmented input
    (the slide's thumbnail here is the slide at 1:1, so a pixel count is the exact coverage)."""
    folder, grid = two_tone_slide
    h, w = size
    place = Placement(1.0, 40, 24, w, h)  # over glass and both tones
    record = read_labels_record(folder / "slide.svs")
    aug = Augmentation(rot90=rot90, flip=flip)
    turned = SlideMasks("auto", {}, grid)(record, np.zeros((h, w, 3), np.uint8), place, aug)[0, 0].numpy()
    tissue = slide_tissue(folder / "slide.svs")
    assert tissue.th_mask.shape == (512, 512)
    pixels = np.ascontiguousarray(oriented(tissue.th_mask[24:24 + h, 40:40 + w], aug))
    (out_h, out_w), (sh, sw) = grid(pixels.shape)
    padded = np.zeros((out_h * sh, out_w * sw), bool)  # the trunk's cells from the input's pixel (0, 0)
    rows, cols = min(out_h * sh, pixels.shape[0]), min(out_w * sw, pixels.shape[1])
    padded[:rows, :cols] = pixels[:rows, :cols]
    share = padded.reshape(out_h, sh, out_w, sw).mean(axis=(1, 3))
    np.testing.assert_array_equal(turned, share >= MIN_CELL_TISSUE)
    assert 0 < turned.mean() < 1
    if size == (128, 96):
        plain = SlideMasks("auto", {}, grid)(record, np.zeros((h, w, 3), np.uint8), place, Augmentation())
        np.testing.assert_array_equal(turned, oriented(plain[0, 0].numpy(), aug))


def read_labels_record(path="slide.svs", annotations=None):
    from pathlib import Path

    from engine.io.labels import SlideRecord

    return SlideRecord(Path(path), 0, None, "test", annotations=annotations)


def test_a_blank_input_falls_back_to_the_whole_map_with_a_warning(tmp_path):
    events = []
    masks = SlideMasks("auto", {}, grid16, emit=events.append)
    blank = np.full((64, 64, 3), 235, np.uint8)
    write_svs_array(tmp_path / "blank.svs", blank, mpp=0.5, app_mag=20, tile=64, downsamples=(1,))
    record, place = read_labels_record(tmp_path / "blank.svs"), Placement(1.0, 0, 0, 64, 64)
    assert masks(record, blank, place, Augmentation()) is None
    assert masks(record, blank, place, Augmentation()) is None
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
