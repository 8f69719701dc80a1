"""StreamingModule beyond exactness: refusals, no_grad, autocast, lazy sources, sinks, budgets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from streaming_helpers import compare, rel_err
from torch import nn

from engine.errors import Cancelled, NotStreamableError, TileSizeError
from engine.models import create_model
from engine.streaming import (
    CallableSource,
    InputGradientSink,
    StreamHooks,
    StreamingModule,
)


@pytest.fixture
def small_trunk():
    torch.manual_seed(0)
    return create_model("smallnet", width=4).double().eval().trunk()


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.attn = nn.MultiheadAttention(4, 1)

    def forward(self, x):
        return self.attn(self.conv(x), self.conv(x), self.conv(x))[0]


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(2).mean(-1)


@pytest.mark.parametrize("trunk,needle", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), "batch statistics"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), "AdaptiveAvgPool2d"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2)), "Upsample"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5)), "Dropout"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")), "circular"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), "GroupNorm"),
    (_Attention(), "attn"),
    (_Flatten(), "flatten"),
])
def test_non_local_layers_are_refused_by_name(trunk, needle):
    with pytest.raises(NotStreamableError) as info:
        StreamingModule(trunk, 64)
    msg = str(info.value)
    assert needle in msg
    assert "head" in msg or "eval" in msg or "padding" in msg  # says what to do


def test_batchnorm_switched_to_training_later_is_refused_at_run_time(small_trunk):
    stream = StreamingModule(small_trunk, 64)
    small_trunk.train()
    with pytest.raises(NotStreamableError, match="batch statistics"):
        stream(torch.zeros(1, 3, 64, 64, dtype=torch.float64))


def test_freeze_batchnorm_survives_train_mode(small_trunk):
    small_trunk.train()
    stream = StreamingModule(small_trunk, 64, freeze_batchnorm=True)
    stream.train()
    assert not any(m.training for m in small_trunk.modules() if isinstance(m, nn.BatchNorm2d))
    compare(small_trunk, torch.randn(1, 3, 90, 70, dtype=torch.float64), 64, tol=1e-10, freeze_batchnorm=True)


def test_tile_smaller_than_receptive_field_is_refused_clearly(small_trunk):
    with pytest.raises(TileSizeError, match="receptive field \\(45 px\\)"):
        StreamingModule(small_trunk, 44)
    StreamingModule(small_trunk, 45)  # the smallest allowed


def test_no_grad_runs_one_pass_and_keeps_nothing(small_trunk):
    stream = StreamingModule(small_trunk, 64)
    x = torch.randn(1, 3, 150, 130, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = stream(x)
    assert y.grad_fn is None and not y.requires_grad
    assert rel_err(y, small_trunk(x).detach()) < 1e-12


def test_reads_never_exceed_the_tile(small_trunk):
    """Peak memory is one cone: no read, hence no activation, is larger than the tile."""
    x = torch.randn(1, 3, 400, 333, dtype=torch.float64)
    reads = []

    def read(rows, cols):
        reads.append((rows[1] - rows[0], cols[1] - cols[0]))
        return x[:, :, rows[0]:rows[1], cols[0]:cols[1]]

    stream = StreamingModule(small_trunk, 96)
    y = stream(CallableSource(x.shape, read, torch.float64))
    assert max(max(r) for r in reads) <= 96
    assert len(reads) == stream.tile_plan((400, 333)).n_blocks > 1
    assert rel_err(y, small_trunk(x)) < 1e-12


def test_lazy_source_streams_input_gradient_to_sink_reduced(small_trunk):
    """The saliency path: input pulled lazily, gradient written out tile by tile, 8x8-averaged."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 203, 170, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    small_trunk(x_ref).amax(dim=(2, 3)).sum().backward()
    want = F.avg_pool2d(x_ref.grad, 8, 8, ceil_mode=True, count_include_pad=False)

    regions = []
    sink = InputGradientSink(regions.append, reduce=8)
    stream = StreamingModule(small_trunk, 64)
    src = CallableSource(x.shape, lambda r, c: x[:, :, r[0]:r[1], c[0]:c[1]], torch.float64)
    stream(src, input_grad_sink=sink).amax(dim=(2, 3)).sum().backward()

    got = torch.full_like(want, float("nan"))
    for reg in regions:
        r0, r1, c0, c1 = reg.cells
        assert torch.isnan(got[:, :, r0:r1, c0:c1]).all(), "a cell was emitted twice"
        got[:, :, r0:r1, c0:c1] = reg.values
    assert not torch.isnan(got).any(), "some cells were never emitted"
    assert len(regions) > 4  # emitted progressively, not once at the end
    assert want.abs().max() > 0
    assert rel_err(got, want) < 1e-10


def test_sink_with_tensor_input_and_no_reduction(small_trunk):
    x = torch.randn(2, 3, 120, 99, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    small_trunk(x_ref).sum().backward()
    full = torch.zeros_like(x)

    def put(reg):
        r0, r1, c0, c1 = reg.pixels
        full[:, :, r0:r1, c0:c1] = reg.values

    StreamingModule(small_trunk, 50)(x, input_grad_sink=InputGradientSink(put)).sum().backward()
    assert rel_err(full, x_ref.grad) < 1e-10


def test_memory_budget_chooses_larger_tiles_for_larger_budgets(small_trunk):
    a = StreamingModule(small_trunk, memory_budget=8 * 2**20)
    b = StreamingModule(small_trunk, memory_budget=64 * 2**20)
    assert 45 <= a.tile_size[0] < b.tile_size[0]
    assert a.estimate_tile_bytes(a.tile_size[0]) <= 8 * 2**20
    with pytest.raises(TileSizeError, match="too small"):
        StreamingModule(small_trunk, memory_budget=1000)


def test_should_stop_cancels_between_tiles(small_trunk):
    calls = []
    hooks = StreamHooks(should_stop=lambda: len(calls) >= 3,
                        progress=lambda phase, done, total: calls.append((phase, done, total)))
    stream = StreamingModule(small_trunk, 64)
    with pytest.raises(Cancelled):
        stream(torch.zeros(1, 3, 300, 300, dtype=torch.float64), hooks=hooks)
    assert len(calls) == 3 and calls[-1][2] > 3
    stream(torch.zeros(1, 3, 300, 300, dtype=torch.float64))  # the hooks were that call's only
    assert len(calls) == 3


def test_progress_reports_forward_and_backward(small_trunk):
    calls = []
    stream = StreamingModule(small_trunk, 64)
    x = torch.randn(1, 3, 150, 150, dtype=torch.float64, requires_grad=True)
    stream(x, hooks=StreamHooks(progress=lambda *a: calls.append(a))).sum().backward()
    total = stream.tile_plan((150, 150)).n_blocks
    assert [c for c in calls if c[0] == "forward"][-1] == ("forward", total, total)
    assert [c for c in calls if c[0] == "backward"][-1] == ("backward", total, total)


def test_cancelling_in_the_backward_pass_of_a_call_uses_that_calls_hooks(small_trunk):
    """The hooks given to the forward call also serve its backward pass (run by autograd later)."""
    stop = []
    calls = []
    hooks = StreamHooks(should_stop=lambda: bool(stop), progress=lambda *a: calls.append(a))
    stream = StreamingModule(small_trunk, 64)
    x = torch.randn(1, 3, 150, 150, dtype=torch.float64, requires_grad=True)
    y = stream(x, hooks=hooks)
    stop.append(True)
    with pytest.raises(Cancelled):
        y.sum().backward()
    assert not any(c[0] == "backward" for c in calls)


def test_max_pool_head_skips_blocks_without_gradient_and_stays_exact(small_trunk):
    x = torch.randn(1, 3, 400, 400, dtype=torch.float64)
    reads = []

    def read(rows, cols):
        reads.append(rows)
        return x[:, :, rows[0]:rows[1], cols[0]:cols[1]]

    stream = StreamingModule(small_trunk, 48)
    regions = []
    y = stream(CallableSource(x.shape, read, torch.float64), input_grad_sink=InputGradientSink(regions.append))
    n_forward = len(reads)
    y[:, 0].amax().backward()  # the gradient reaches a single output cell, so one block
    assert len(reads) - n_forward == 1
    g = torch.zeros_like(x)
    for reg in regions:
        r0, r1, c0, c1 = reg.pixels
        g[:, :, r0:r1, c0:c1] = reg.values
    x_ref = x.clone().requires_grad_(True)
    small_trunk(x_ref)[:, 0].amax().backward()
    assert rel_err(g, x_ref.grad) < 1e-10


def test_bfloat16_autocast_on_cpu_matches_conventional_autocast():
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=8).eval().trunk()
    x = torch.randn(1, 3, 160, 144, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = trunk(x.contiguous(memory_format=torch.channels_last))  # the streamed tiles' layout
    y_ref.float().square().sum().backward()
    g_ref = x.grad.clone()
    w_ref = trunk.stage1[0].weight.grad.clone()
    x.grad = None
    trunk.zero_grad()
    stream = StreamingModule(trunk, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stream(x)
    assert y.dtype == torch.bfloat16 == y_ref.dtype
    y.float().square().sum().backward()
    # bfloat16 has 8 bits of mantissa; tiles change the summation order of convolutions.
    assert rel_err(y.float(), y_ref.float()) < 3e-2
    assert rel_err(x.grad, g_ref) < 5e-2
    assert rel_err(trunk.stage1[0].weight.grad, w_ref) < 5e-2


def test_gradients_are_not_all_zero(small_trunk):
    """A trap seen in published streaming code: a silently all-zero saliency map."""
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    StreamingModule(small_trunk, 64)(x).sum().backward()
    assert (x.grad != 0).float().mean() > 0.9


def test_forward_priority_reorders_blocks_without_changing_the_result(small_trunk):
    x = torch.randn(1, 3, 300, 260, dtype=torch.float64)
    seen = []
    stream = StreamingModule(small_trunk, 64)
    hooks = StreamHooks(on_block=lambda rows, cols, y: seen.append((rows, cols)), priority=(1e9, 1e9))  # bottom-right first
    y = stream(x, hooks=hooks)
    assert seen[0][0][1] == y.shape[2] and seen[0][1][1] == y.shape[3]
    assert len(seen) == stream.tile_plan((300, 260)).n_blocks
    assert rel_err(y, small_trunk(x)) < 1e-12
