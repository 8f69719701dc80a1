"""A tile's windowed layers against the conventional layer on the whole map: exact on every
crop, border or not; and a layer pads its tile by a copy exactly when its runner says so
(``copies_tile``), since autograd saves that copy and the graph budget counts it by that word."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.streaming import window_ops
from engine.streaming.geometry import AxisWindow, clip_span
from engine.streaming.window_ops import AxisTile


def axis_tile(out: tuple[int, int], in_len: int, k: int, s: int, d: int, pad: int) -> AxisTile:
    """Outputs ``out`` of a layer with padding ``pad``: the input span they read, clipped."""
    span = (out[0] * s - pad, (out[1] - 1) * s - pad + d * (k - 1) + 1)
    return AxisTile(out[0], out[1], clip_span(span, in_len), in_len)


def random_layer(rng: random.Random, pool: bool):
    k = [rng.choice([1, 2, 3, 5, 7]) for _ in range(2)]
    s = [rng.choice([1, 2, 3]) for _ in range(2)]
    d = [1, 1] if pool else [rng.choice([1, 2]) for _ in range(2)]
    pad = [rng.randint(0, kk // 2) if pool else rng.randint(0, (kk - 1) * dd) for kk, dd in zip(k, d, strict=True)]
    return k, s, d, pad


def crops(rng: random.Random, n_out: int) -> list[tuple[int, int]]:
    """Output ranges at the start, the end, both and neither, and random ones."""
    mid = max(1, n_out // 2)
    out = [(0, n_out), (0, mid), (mid, n_out)] + [(a, b) for a, b in [(1, n_out - 1)] if a < b]
    for _ in range(3):
        a = rng.randrange(n_out)
        out.append((a, rng.randint(a + 1, n_out)))
    return out


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("pool", [False, True])
def test_a_tile_of_a_layer_equals_the_layer_on_the_whole_map(seed, pool, monkeypatch):
    rng = random.Random(seed)
    k, s, d, pad = random_layer(rng, pool)
    h, w = rng.randint(9, 40), rng.randint(9, 40)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if pool:
        layer = nn.MaxPool2d(k, s, pad)
        whole = layer(x)
        axes = tuple(AxisWindow(kernel=k[a], stride=s[a], dilation=d[a], pad_lo=pad[a], pad_hi=pad[a]) for a in range(2))
        run = window_ops.maxpool_runner(layer, axes)
    else:
        layer = nn.Conv2d(3, 4, k, s, pad, d).double()
        whole = layer(x)
        run = window_ops.conv_runner(layer)
    copies = []
    real_pad = F.pad
    monkeypatch.setattr(window_ops.F, "pad", lambda *a, **kw: copies.append(1) or real_pad(*a, **kw))
    n_h, n_w = whole.shape[-2:]
    for rows in crops(rng, n_h):
        cols = crops(rng, n_w)[rng.randrange(4)]
        th, tw = axis_tile(rows, h, k[0], s[0], d[0], pad[0]), axis_tile(cols, w, k[1], s[1], d[1], pad[1])
        tile = x[:, :, th.crop.start:th.crop.end, tw.crop.start:tw.crop.end]
        copies.clear()
        got = run(tile, th, tw)
        torch.testing.assert_close(got, whole[:, :, rows[0]:rows[1], cols[0]:cols[1]], rtol=1e-12, atol=1e-12)
        assert bool(copies) == run.copies_tile(th, tw), (rows, cols, th.crop, tw.crop)


def test_an_avg_pool_at_the_border_says_it_copies():
    layer = nn.AvgPool2d(3, 1, 1)
    run = window_ops.avgpool_runner(layer, (AxisWindow(3, 1, 1, 1, 1), AxisWindow(3, 1, 1, 1, 1)))
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    for rows in [(0, 6), (6, 12), (3, 9)]:
        th, tw = axis_tile(rows, 12, 3, 1, 1, 1), axis_tile((3, 9), 12, 3, 1, 1, 1)
        got = run(x[:, :, th.crop.start:th.crop.end, tw.crop.start:tw.crop.end], th, tw)
        torch.testing.assert_close(got, layer(x)[:, :, rows[0]:rows[1], 3:9])
        assert run.copies_tile(th, tw) == (rows != (3, 9))
