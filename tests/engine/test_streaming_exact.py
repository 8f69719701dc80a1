"""Exactness of StreamingModule against conventional execution (float64: 1e-10, float32: 1e-4).

Float32 comparisons run the conventional pass in the streamed tiles' memory layout (see
streaming_helpers.compare), in both layouts.
"""

from __future__ import annotations

import random

import pytest
import torch
from streaming_helpers import compare
from torch import nn

from engine.models import create_model
from engine.streaming import StreamingModule

F64 = 1e-10


def _random_stack(seed: int) -> nn.Sequential:
    """A random local trunk: convs with kernels 1-7, strides 1-4, paddings, dilations, groups, pools."""
    rng = random.Random(seed)
    layers: list[nn.Module] = []
    c = 3
    total_stride = 1
    for _ in range(rng.randint(3, 6)):
        kind = rng.choice(["conv", "conv", "conv", "maxpool", "avgpool"])
        if kind == "conv":
            k = rng.randint(1, 7)
            d = rng.choice([1, 1, 2, 3]) if k > 1 else 1
            s = rng.choice([1, 1, 2, 3, 4]) if total_stride < 8 else 1
            c_out = rng.choice([4, 6, 8])
            groups = 2 if (c % 2 == 0 and c_out % 2 == 0 and rng.random() < 0.3) else 1
            if s == 1 and rng.random() < 0.3:
                pad = "same"
            else:
                pad = rng.randint(0, (d * (k - 1)) // 2 + 1)
            layers.append(nn.Conv2d(c, c_out, k, stride=s, padding=pad, dilation=d, groups=groups,
                                    bias=rng.random() < 0.5))
            c = c_out
            total_stride *= s
        else:
            k = rng.randint(2, 4)
            s = rng.randint(1, k) if total_stride < 8 else 1
            p = rng.randint(0, k // 2)
            if kind == "maxpool":
                layers.append(nn.MaxPool2d(k, s, p, dilation=rng.choice([1, 2]), ceil_mode=rng.random() < 0.5))
            else:
                layers.append(nn.AvgPool2d(k, s, p, ceil_mode=rng.random() < 0.5,
                                           count_include_pad=rng.random() < 0.5))
            total_stride *= s
        layers.append(rng.choice([nn.ReLU(), nn.LeakyReLU(0.1), nn.PReLU(c) if kind == "conv" else nn.Tanh(),
                                  nn.GELU(), nn.Identity()]))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed", range(24))
def test_random_stacks_match_in_float64(seed):
    torch.manual_seed(seed)
    trunk = _random_stack(seed).double()
    stream = StreamingModule(trunk, 10_000)  # just for the receptive field
    rf = max(stream.receptive_field)
    rng = random.Random(seed)
    h, w = rng.randint(rf + 5, rf + 90), rng.randint(rf + 5, rf + 90)
    x = torch.randn(rng.choice([1, 2]), 3, h, w, dtype=torch.float64)
    # Smallest tile allowed, an in-between tile, and one larger than the image.
    for tile in (rf, rf + rng.randint(1, 40), max(h, w) + 50):
        compare(trunk, x, tile, tol=F64)


class _Residual(nn.Module):
    """A branchy block: dilated conv, stride-1 first conv then max-pool (the seam trap), concat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.b = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.bn = nn.BatchNorm2d(6)
        self.skip = nn.Conv2d(6, 6, 1)
        self.act = nn.PReLU(12)

    def forward(self, x):
        y = self.pool(torch.relu(self.a(x)))
        z = self.bn(self.b(y))
        return self.act(torch.cat([z + self.skip(y), y * 0.5], dim=1))


@pytest.fixture
def branchy():
    torch.manual_seed(0)
    m = _Residual().double()
    with torch.no_grad():  # non-trivial frozen statistics and affine parameters
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("hw", [(37, 41), (64, 64), (101, 77)])
def test_branchy_block_with_frozen_batchnorm_and_dilation(branchy, hw):
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    for tile in (15, 24, 40, 200):
        compare(branchy, x, tile, tol=F64)


@pytest.mark.parametrize("name,split", [("resnet18", "layer1"), ("resnet18", "layer2"), ("resnet34", "layer2"),
                                        ("resnet50", "layer1"), ("resnet50", "layer2")])
def test_resnet_trunks_match_in_float64(name, split):
    torch.manual_seed(0)
    model = create_model(name, split=split).double().eval()
    for m in model.modules():  # non-trivial BN statistics so BN gradients are really checked
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    trunk = model.trunk()
    rf = StreamingModule(trunk, 10_000).receptive_field[0]
    x = torch.randn(1, 3, rf + 61, rf + 29, dtype=torch.float64)
    compare(trunk, x, rf + 24, tol=F64)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_resnet_trunk_float32_within_1e4(channels_last):
    torch.manual_seed(0)
    trunk = create_model("resnet18", split="layer2").eval().trunk()
    x = torch.randn(2, 3, 257, 301)
    stream = compare(trunk, x, 224, tol=1e-4, channels_last=channels_last)
    assert stream.channels_last is channels_last


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_smallnet_float32_batch_and_odd_sizes(channels_last):
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=8).eval().trunk()
    for hw in [(45, 45), (46, 200), (333, 129)]:
        compare(trunk, torch.randn(3, 3, *hw), 64, tol=1e-4, channels_last=channels_last)


def test_only_parameters_that_require_grad_get_one(branchy):
    branchy.a.weight.requires_grad_(False)
    x = torch.randn(1, 3, 50, 50, dtype=torch.float64)
    compare(branchy, x, 20, tol=F64)
    stream = StreamingModule(branchy, 20)
    stream(x).sum().backward()
    assert branchy.a.weight.grad is None
    assert branchy.b.weight.grad is not None and branchy.b.weight.grad.abs().sum() > 0


def test_input_without_grad_gets_none_and_params_still_exact(branchy):
    x = torch.randn(1, 3, 60, 44, dtype=torch.float64)
    stream = StreamingModule(branchy, 22)
    stream(x).square().sum().backward()
    got = [p.grad.clone() for p in branchy.parameters()]
    branchy.zero_grad(set_to_none=True)
    branchy(x).square().sum().backward()
    for a, p in zip(got, branchy.parameters(), strict=True):
        assert torch.allclose(a, p.grad, rtol=0, atol=1e-10 * p.grad.abs().max().item())
    assert x.grad is None


def test_a_channels_last_input_gets_its_gradient_in_its_own_layout_without_a_copy():
    """The input gradient is made in the input's layout: one of another layout is copied by
    autograd into the input's, a second input-sized buffer on a whole-slide tensor."""
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=4).double().eval().trunk()
    x = torch.rand(2, 3, 150, 170, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ref = x.detach().clone().requires_grad_(True)
    trunk(ref).square().sum().backward()
    x.requires_grad_(True)
    arriving = []
    x.register_hook(lambda g: arriving.append(g.stride()))  # the gradient as autograd hands it over
    out = StreamingModule(trunk, 96)(x)
    out.square().sum().backward()
    assert arriving == [x.stride()]
    assert torch.allclose(x.grad, ref.grad, rtol=1e-10, atol=1e-13)
