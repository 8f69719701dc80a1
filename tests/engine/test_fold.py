"""Folding frozen BatchNorm into convolutions (inference and saliency): same function, streamed
or not, with its input gradient; the original trunk untouched."""

import pytest
import torch

from engine.models import create_model
from engine.models.fold import fold_batchnorm
from engine.streaming import StreamingModule


def _trunk_with_statistics(arch, split):
    torch.manual_seed(0)
    trunk = create_model(arch, split=split, num_classes=2).double().eval().trunk()
    for m in trunk.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return trunk


@pytest.mark.parametrize("arch, split", [("smallnet", "stage4"), ("resnet18", "layer2"), ("resnet50", "layer1")])
def test_folded_trunk_streams_the_same_values_and_input_gradient(arch, split):
    trunk = _trunk_with_statistics(arch, split)
    folded = fold_batchnorm(trunk)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())  # a copy was folded

    x = torch.rand(1, 3, 203, 177, dtype=torch.float64, requires_grad=True)
    want = trunk(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    x.grad = None
    stream = StreamingModule(folded, tile_size=max(StreamingModule(trunk, 512).receptive_field) + 8)
    got = stream(x)
    got.square().sum().backward()
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(x.grad, want_grad, rtol=1e-9, atol=1e-12)


def test_the_folded_copy_keeps_the_module_tree_and_parameter_names():
    trunk = _trunk_with_statistics("resnet18", "layer2")
    folded = fold_batchnorm(trunk)
    assert type(folded) is type(trunk)
    assert isinstance(folded.get_submodule("layer1.0.bn1"), torch.nn.Identity)
    names = {n for n, _ in folded.named_parameters()}
    assert "layer1.0.conv1.bias" in names and "layer1.0.conv1.weight" in names


def test_a_conv_whose_output_has_two_consumers_keeps_its_batchnorm():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Branchy().double().eval()
    net.bn.running_mean.uniform_(-1, 1)
    folded = fold_batchnorm(net)
    assert isinstance(folded.bn, torch.nn.BatchNorm2d)
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    assert torch.equal(folded(x), net(x))


def test_a_conv_or_batchnorm_called_twice_is_not_folded():
    class Reused(torch.nn.Module):  # one conv (and one BatchNorm) at two places: one folded weight cannot serve both
        def __init__(self):
            super().__init__()
            self.conv, self.bn1, self.bn2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn2(self.conv(self.bn1(self.conv(x))))

    net = Reused().double().eval()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 4, 9, 9, dtype=torch.float64)
    assert torch.allclose(fold_batchnorm(net)(x), net(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_in_training_mode_and_untraceable_trunks_are_left_alone():
    trunk = _trunk_with_statistics("smallnet", "stage4").train()  # batch statistics: not an affine map
    folded = fold_batchnorm(trunk)
    assert folded is trunk

    class DataDependent(torch.nn.Module):  # fx cannot trace it; StreamingModule reports that itself
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 3), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            for _ in range(x.shape[1]):
                x = self.bn(self.conv(x))
            return x

    net = DataDependent().eval()
    assert fold_batchnorm(net) is net


def test_a_trunk_without_batchnorm_is_returned_as_it_is():
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    assert fold_batchnorm(trunk) is trunk


def test_folding_leaves_every_layer_of_the_trunk_in_its_mode():
    trunk = _trunk_with_statistics("smallnet", "stage4").train()
    trunk[0].eval()  # a mixed state, as a frozen-BatchNorm trunk inside a training loop has
    modes = [m.training for m in trunk.modules()]
    fold_batchnorm(trunk)
    assert [m.training for m in trunk.modules()] == modes
