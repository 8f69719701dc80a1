"""The attention map of an attention head: emitted live block by block (unnormalised), replaced at
the end by the normalised weights, which sum to 1 over the tissue; written with the other maps.

The head here is the engine's gated attention head (:class:`engine.models.heads.AttentionHead`)
over the green detector's trunk; the last test runs a whole model built with ``head="attention"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import CLASSES, green_detector, save_green_detector
from tissue_fixtures import STRIDE, TISSUE_X1, WHOLE, region_input, tissue_keep, write_half_tissue_slide
from torch import nn

import engine.infer as infer
from engine.api import read_model_card, run_inference
from engine.events import MapPatch
from engine.io.maps import read_maps
from engine.models.heads import AttentionHead, GatedAttention
from engine.specs import InferenceSpec


class AttentionNet(nn.Module):
    """The green detector's trunk under the engine's gated attention head, with optional stages."""

    def __init__(self, stages: nn.Sequential | None = None, hidden: int = 6):
        super().__init__()
        self.base = green_detector()
        torch.manual_seed(3)
        attention = GatedAttention(self.base.fc.in_features, hidden)
        with torch.no_grad():  # sharper scores: a map with contrast, not a near-constant
            attention.attention_v.weight.mul_(3.0)
            attention.attention_w.weight.mul_(20.0)
        self.attention_head = AttentionHead(stages if stages is not None else nn.Sequential(),
                                            nn.Linear(hidden, len(CLASSES)), attention)

    def trunk(self):
        return self.base.trunk()

    def head(self):
        return self.attention_head


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("attention")
    write_half_tissue_slide(d / "half.svs")
    save_green_detector(d / "model", tile_size=128)  # its card; the weights come from AttentionNet
    return d


def _run(workdir, monkeypatch, net: AttentionNet, **kw):
    card = read_model_card(str(workdir / "model"))
    monkeypatch.setattr(infer, "load_checkpoint", lambda path, device="cpu": (net.eval(), card))
    events = []
    spec = InferenceSpec(slide_path=str(workdir / "half.svs"), model_path=str(workdir / "model"), l0_region=WHOLE,
                         device="cpu", **kw)
    return run_inference(spec, events.append), [e for e in events if isinstance(e, MapPatch)]


def _reference(workdir, net: AttentionNet, masked: bool):
    """The masked model conventionally, in float64: attention weights (h, w) and probabilities."""
    net = net.double()
    with torch.no_grad():
        fmap = net.trunk()(region_input(workdir / "half.svs"))
        mask = torch.from_numpy(tissue_keep(workdir / "half.svs", fmap))[None, None] if masked else None
        x = fmap if mask is None else torch.where(mask, fmap, torch.zeros(()))
        head = net.head()
        weights = head.attention(x, mask)[0, 0].numpy()
        probs = torch.softmax(head(x, mask), dim=1)[0].numpy()
    net.float()
    return weights, probs


def test_attention_is_live_then_normalised_over_the_tissue(workdir, monkeypatch, tmp_path):
    net = AttentionNet()
    result, patches = _run(workdir, monkeypatch, net, tissue_mask="auto", saliency=False, out_dir=str(tmp_path / "o"))
    attention = [p for p in patches if p.layer == "attention"]
    live, final = attention[:-1], attention[-1]
    assert len(live) > 1 and final.values.shape == tuple(final.map_shape) and final.cell_offset == (0, 0)
    # Live patches come as blocks finish, with each block's prediction patch; the final one after the last block.
    prediction = [p for p in patches if p.layer == "prediction"]
    assert len(live) == len(prediction)
    assert patches.index(live[0]) < patches.index(prediction[-1]) < patches.index(final)
    weights = final.values.astype(np.float64)
    tissue_cols = TISSUE_X1 // STRIDE
    assert np.isnan(weights[:, tissue_cols:]).all() and np.isfinite(weights[:, :tissue_cols]).all()
    assert np.nansum(weights) == pytest.approx(1.0, abs=1e-5)
    expected, probs = _reference(workdir, net, masked=True)
    np.testing.assert_allclose(weights[:, :tissue_cols], expected[:, :tissue_cols], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(result.prediction.probabilities, probs, atol=1e-5)
    assert weights[:, :tissue_cols].max() > 1.2 * weights[:, :tissue_cols].min()  # a map (green apart), not a constant
    # The live map is the final one up to one factor (the softmax's sum).
    live_map = np.full(final.map_shape, np.nan)
    for p in live:
        r, c = p.cell_offset
        live_map[r:r + p.values.shape[0], c:c + p.values.shape[1]] = p.values
    ratio = weights[:, :tissue_cols] / live_map[:, :tissue_cols]
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)
    layers, _ = read_maps(tmp_path / "o")
    assert set(layers) == {"prediction", "tissue", "attention"}
    np.testing.assert_array_equal(layers["attention"].values, final.values)
    assert layers["attention"].l0_box == layers["prediction"].l0_box


def test_without_a_mask_the_attention_sums_to_one_over_every_cell(workdir, monkeypatch):
    net = AttentionNet()
    result, patches = _run(workdir, monkeypatch, net, tissue_mask="none", saliency=True)
    final = [p for p in patches if p.layer == "attention"][-1]
    assert np.isfinite(final.values).all() and float(final.values.astype(np.float64).sum()) == pytest.approx(1, abs=1e-5)
    expected, probs = _reference(workdir, net, masked=False)
    np.testing.assert_allclose(final.values, expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(result.prediction.probabilities, probs, atol=1e-5)
    assert any(p.layer == "saliency" for p in patches)


def test_a_head_with_stages_gives_the_attention_once_on_its_own_grid(workdir, monkeypatch):
    net = AttentionNet(stages=nn.Sequential(nn.MaxPool2d(2)))
    result, patches = _run(workdir, monkeypatch, net, tissue_mask="auto", saliency=False)
    attention = [p for p in patches if p.layer == "attention"]
    prediction = [p for p in patches if p.layer == "prediction"]
    assert len(attention) == 1 and len(prediction) == 1
    (final,) = attention
    assert final.map_shape == prediction[0].map_shape == (16, 32)  # the trunk's 32 x 64 cells, pooled by 2
    assert np.nansum(final.values.astype(np.float64)) == pytest.approx(1.0, abs=1e-5)
    assert np.isnan(final.values[:, TISSUE_X1 // STRIDE // 2:]).all()
    expected, probs = _reference(workdir, net, masked=True)
    np.testing.assert_allclose(np.nan_to_num(final.values), expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(result.prediction.probabilities, probs, atol=1e-5)


def test_the_engine_attention_head_gives_an_attention_map(tmp_path):
    """A model built with the attention head, and the card's tissue mask."""
    from engine.io.checkpoints import ModelCard, save_checkpoint
    from engine.models import create_model

    write_half_tissue_slide(tmp_path / "half.svs")
    net = create_model("smallnet", width=4, num_classes=2, split="stage4", head="attention").eval()
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", head="attention", tissue_mask="auto",
                     model_kwargs={"width": 4}, input_mpp=0.5, tile_size=128)
    save_checkpoint(tmp_path / "model", net, card)
    events = []
    spec = InferenceSpec(slide_path=str(tmp_path / "half.svs"), model_path=str(tmp_path / "model"), l0_region=WHOLE,
                         device="cpu", saliency=False)
    run_inference(spec, events.append)
    final = [e for e in events if isinstance(e, MapPatch) and e.layer == "attention"][-1]
    assert np.nansum(final.values.astype(np.float64)) == pytest.approx(1.0, abs=1e-5)
    assert np.isnan(final.values[:, TISSUE_X1 // STRIDE:]).all()
