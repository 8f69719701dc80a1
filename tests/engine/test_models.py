"""Model registry, torchvision-compatible parameter names, trunk/head split."""

from __future__ import annotations

import pytest
import torch

from engine.models import create_model, list_models, register_model
from engine.streaming import StreamingModule

# Facts of torchvision's ResNets (state_dict sizes and a few names/shapes), so its ImageNet
# weights, or timm's, load into ours by name.
TORCHVISION_FACTS = {
    "resnet18": (122, {"layer3.1.bn2.running_var": (256,), "layer2.0.downsample.0.weight": (128, 64, 1, 1)}),
    "resnet34": (218, {"layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.0.downsample.1.weight": (512,)}),
    "resnet50": (320, {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer4.2.bn3.num_batches_tracked": (),
                       "fc.weight": (1000, 2048)}),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_FACTS))
def test_resnet_state_dict_matches_torchvision_layout(name, tmp_path):
    count, shapes = TORCHVISION_FACTS[name]
    model = create_model(name, num_classes=1000)
    sd = model.state_dict()
    assert len(sd) == count
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "conv1.weight" in sd and "bn1.running_mean" in sd and "fc.bias" in sd
    # A plain state dict file loads safely (weights_only) into a fresh model by name.
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    fresh = create_model(name, num_classes=1000)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh.layer1[0].conv1.weight, model.layer1[0].conv1.weight)


def test_registry_lists_builds_and_refuses_duplicates():
    assert {"resnet18", "resnet34", "resnet50", "smallnet"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda **kw: None)
    with pytest.raises(ValueError, match="unknown model 'resnet99'; available"):
        create_model("resnet99")


@pytest.mark.parametrize("split,stride", [("maxpool", 4), ("layer1", 4), ("layer2", 8), ("layer3", 16)])
def test_split_point_moves_stages_between_trunk_and_head(split, stride):
    torch.manual_seed(0)
    model = create_model("resnet18", split=split).eval()
    trunk, head = model.trunk(), model.head()
    assert list(trunk.named_children())[-1][0] == split
    assert StreamingModule(trunk, 2000).stride == (stride, stride)
    x = torch.rand(1, 3, 96, 80)
    with torch.no_grad():
        assert torch.allclose(head(trunk(x)), model(x))
        cells = head.forward_cells(trunk(x))
    assert cells.shape[:2] == (1, 2)
    if model.pool == "max":  # logits of the max-pooled features bound the per-cell logits' range
        assert cells.shape[2] >= 1


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="choose one of"):
        create_model("smallnet", split="layer9").trunk()


def test_head_pools_max_or_avg():
    torch.manual_seed(0)
    fmap = torch.rand(2, 64, 5, 7)
    for pool, reduce in (("max", lambda f: f.amax(dim=(2, 3))), ("avg", lambda f: f.mean(dim=(2, 3)))):
        head = create_model("smallnet", pool=pool).head()
        assert torch.allclose(head(fmap), head.fc(reduce(fmap)))
    with pytest.raises(ValueError, match="pool must be"):
        create_model("smallnet", pool="median").head()


def test_resnet18_layer3_trunk_streams_exactly():
    from streaming_helpers import compare
    torch.manual_seed(0)
    trunk = create_model("resnet18", split="layer3").double().eval().trunk()
    rf = StreamingModule(trunk, 10_000).receptive_field[0]
    compare(trunk, torch.randn(1, 3, rf + 45, rf + 3, dtype=torch.float64), rf + 32, tol=1e-10)
