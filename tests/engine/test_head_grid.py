"""The head's grid over the trunk's: one rule carries a trunk mask onto the head's cells (the heads'
pool, inference's and evaluation's maps), and a head cell is the stages' stride in trunk cells.

ResNet-18 split at layer2 on a 100-px input: a 13 x 13 trunk map, and layer3 + layer4 (stride 4)
give 4 x 4 head cells of 4 trunk cells each (the last one past the map's edge), not 13 / 4 ~ 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import CLASSES, GREY

from engine.api import run_inference
from engine.events import MapPatch
from engine.geometry import Box, head_cell_hw, trunk_mask_on_head_grid
from engine.io.checkpoints import ModelCard, save_checkpoint
from engine.io.maps import read_maps
from engine.io.svs import write_svs_array
from engine.models import create_model
from engine.models.head_grid import mask_on_head_grid, stages_stride
from engine.specs import InferenceSpec

SIDE = 100  # level-0 px: the trunk (stride 8) gives 13 cells per side
TISSUE_X1 = 28  # tissue left of this: trunk columns 0..3 (the fourth half tissue), one head column


def test_the_geometry_rule_and_its_torch_twin_agree_and_differ_from_adaptive_pooling():
    rng = np.random.default_rng(0)
    for trunk_hw, stride, head_hw in (((13, 13), (4, 4), (4, 4)), ((9, 11), (4, 2), (3, 6)), ((8, 8), (2, 2), (4, 4)),
                                      ((7, 5), (1, 1), (7, 5))):
        mask = rng.random((2, 1, *trunk_hw)) < 0.2
        expected = np.zeros((2, 1, *head_hw), bool)
        for i in range(head_hw[0]):
            for j in range(head_hw[1]):
                expected[..., i, j] = mask[..., stride[0] * i:stride[0] * (i + 1), stride[1] * j:stride[1] * (j + 1)].any(
                    axis=(-2, -1))
        np.testing.assert_array_equal(trunk_mask_on_head_grid(mask, stride, head_hw), expected)
        np.testing.assert_array_equal(mask_on_head_grid(torch.from_numpy(mask), stride, head_hw).numpy(), expected)
    column3 = np.zeros((13, 13), bool)
    column3[:, 3] = True  # trunk column 3 lies under head column 0 only
    carried = trunk_mask_on_head_grid(column3, (4, 4), (4, 4))
    assert carried[:, 0].all() and not carried[:, 1:].any()
    adaptive = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(column3)[None, None].float(), (4, 4))[0, 0] > 0
    assert adaptive[:, 1].all()  # the rule the maps used: a different cell


def test_the_stride_is_traced_from_the_stages_and_their_modes_are_kept():
    model = create_model("resnet18", num_classes=2, split="layer2").train()
    head = model.head()
    assert head.stride == (4, 4) and head_cell_hw((8, 8), head.stride) == (32, 32)
    assert all(m.training for m in head.stages.modules())  # traced in eval mode, given back
    assert stages_stride(torch.nn.Sequential()) == (1, 1)
    assert stages_stride(torch.nn.Sequential(torch.nn.MaxPool2d(2))) == (2, 2)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("head_grid")
    rgb = np.empty((SIDE, SIDE, 3), np.uint8)
    rgb[:] = GREY
    rgb[:, :TISSUE_X1] = (150, 90, 170)
    write_svs_array(d / "slide.svs", rgb, mpp=0.5, app_mag=20, tile=64, downsamples=(1,))
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=2, split="layer2").eval()
    card = ModelCard(architecture="resnet18", classes=CLASSES, split="layer2", input_mpp=0.5, tile_size=256,
                     provenance={"made_by": "tests/engine/test_head_grid.py"})
    save_checkpoint(d / "model", net, card)
    events = []
    spec = InferenceSpec(slide_path=str(d / "slide.svs"), model_path=str(d / "model"), l0_region=(0, 0, SIDE, SIDE),
                         device="cpu", saliency=False, tissue_mask="auto", out_dir=str(d / "out"))
    run_inference(spec, events.append)
    return net, [e for e in events if isinstance(e, MapPatch)], d / "out"


def test_the_prediction_map_holds_the_cells_the_head_pools_at_the_stride(resnet_run):
    net, patches, out = resnet_run
    (tissue,) = [p for p in patches if p.layer == "tissue"]
    (prediction,) = [p for p in patches if p.layer == "prediction"]
    assert tissue.map_shape == (13, 13) and prediction.map_shape == (4, 4)
    keep = tissue.values == 1
    assert keep[:, :4].all() and not keep[:, 4:].any()
    # The cells the masked head pools over, from the head itself, are the map's computed cells.
    with torch.no_grad():
        fmap = net.trunk()(torch.zeros(1, 3, SIDE, SIDE))
        _, pooled = net.head().masked_features(fmap, torch.from_numpy(keep)[None, None])
    assert tuple(fmap.shape[2:]) == (13, 13)
    computed = np.isfinite(prediction.values).all(axis=0)
    np.testing.assert_array_equal(computed, pooled[0, 0].numpy())
    assert computed[:, 0].all() and not computed[:, 1:].any()
    # Head cells of 4 trunk cells (32 level-0 px): the map reaches the region's edge (clipped there).
    assert Box.of(prediction.map_l0_box) == Box(0, 0, SIDE, SIDE)
    assert Box.of(prediction.l0_box) == Box(0, 0, SIDE, SIDE)
    layers, _ = read_maps(out)
    assert layers["prediction"].l0_box == (0, 0, SIDE, SIDE)
