"""A global pool over the streamed map, reduced block by block (engine.streaming.pooled): the
same logits and the same input and parameter gradients as pooling the stitched map, and the
map is never allocated."""

from __future__ import annotations

import pytest
import torch
from streaming_helpers import rel_err

from engine.models import create_model
from engine.streaming import InputGradientSink, StreamHooks, StreamingModule
from engine.streaming.pooled import GlobalPoolReducer


def _conventional(model, x, pool):
    """Logits, input gradient of logit 1, and trunk parameter gradients, without streaming."""
    x = x.clone().requires_grad_(True)
    head = model.head()
    logits = head(model.trunk()(x))
    model.zero_grad()
    logits[:, 1].sum().backward()
    return logits.detach(), x.grad, [p.grad.clone() for p in model.trunk().parameters()]


def _streamed(model, x, tile, batch_n):
    trunk, head = model.trunk(), model.head()
    reducer = GlobalPoolReducer(head.pool)
    stream = StreamingModule(trunk, tile)
    stream.forward_blocks(x, hooks=StreamHooks(on_block=reducer.add))
    logits = head.fc(reducer.pooled().to(x.dtype))
    # d(sum_n logit[n, 1]) / d(pooled) is the fc's row 1 for every image.
    grad_pooled = model.fc.weight[1].detach().expand(batch_n, -1)
    full = torch.zeros_like(x)

    def put(reg):
        r0, r1, c0, c1 = reg.pixels
        full[:, :, r0:r1, c0:c1] = reg.values

    grads = stream.backward_from(x, reducer.grad_for_block(grad_pooled, x.dtype), input_grad_sink=InputGradientSink(put),
                                 params=True)
    return logits.detach(), full, grads


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("hw,tile,batch_n", [((160, 131), 64, 1), ((96, 200), 80, 2), ((70, 70), 256, 1)])
def test_block_by_block_pooling_equals_pooling_the_stitched_map(pool, hw, tile, batch_n):
    torch.manual_seed(3)
    model = create_model("smallnet", width=4, pool=pool).double().eval()
    x = torch.randn(batch_n, 3, *hw, dtype=torch.float64)
    ref_logits, ref_gx, ref_params = _conventional(model, x, pool)
    logits, gx, params = _streamed(model, x, tile, batch_n)
    assert rel_err(logits, ref_logits) < 1e-10
    assert rel_err(gx, ref_gx) < 1e-10
    for got, ref in zip(params, ref_params, strict=True):
        assert rel_err(got, ref) < 1e-10


def test_max_ties_share_the_gradient_as_amax_does():
    reducer = GlobalPoolReducer("max")
    a = torch.tensor([[[[1.0, 5.0], [5.0, 0.0]]]])
    b = torch.tensor([[[[5.0, 2.0]]]])
    reducer.add((0, 2), (0, 2), a)
    reducer.add((2, 3), (0, 2), b)
    assert reducer.pooled().tolist() == [[5.0]]
    grad = reducer.grad_for_block(torch.tensor([[3.0]]))
    full = torch.cat([grad((0, 2), (0, 2)), grad((2, 3), (0, 2))], dim=2)
    m = torch.cat([a, b], dim=2).requires_grad_(True)
    (3.0 * m.amax(dim=(2, 3))).sum().backward()
    assert torch.equal(full, m.grad)
    assert grad((0, 1), (0, 1)) is None  # no maximum there: the block is skipped


def test_forward_blocks_keeps_no_output_map(monkeypatch):
    """The stitched map is the one allocation that grows with the image: forward_blocks must
    not make it (new_empty is how the forward pass allocates it)."""
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=4).eval().trunk()
    calls = []
    original = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    blocks = []
    hooks = StreamHooks(on_block=lambda r, c, v: blocks.append(v.shape))
    StreamingModule(trunk, 64).forward_blocks(torch.randn(1, 3, 200, 200), hooks=hooks)
    assert len(blocks) > 4 and calls == []


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooled_with_autograd_equals_pooling_the_trunk(pool):
    """StreamingModule.pooled is a drop-in for head.pooled(trunk(x)) under autograd: logits,
    every trunk and head gradient, and the input gradient (as x.grad and through a sink)."""
    torch.manual_seed(5)
    model = create_model("smallnet", width=4, pool=pool).double().eval()
    x = torch.randn(2, 3, 150, 117, dtype=torch.float64)
    ref_x = x.clone().requires_grad_(True)
    model.zero_grad()
    ref_logits = model.head()(model.trunk()(ref_x))
    ref_logits.square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    got_x = x.clone().requires_grad_(True)
    stream = StreamingModule(model.trunk(), 64)
    logits = model.fc(stream.pooled(got_x, pool))
    logits.square().sum().backward()
    assert rel_err(logits, ref_logits) < 1e-10 and rel_err(got_x.grad, ref_x.grad) < 1e-10
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) < 1e-10, n

    full = torch.zeros_like(x)

    def put(reg):
        r0, r1, c0, c1 = reg.pixels
        full[:, :, r0:r1, c0:c1] = reg.values

    model.fc(stream.pooled(x, pool, input_grad_sink=InputGradientSink(put))).square().sum().backward()
    assert rel_err(full, ref_x.grad) < 1e-10
    with torch.no_grad():
        assert rel_err(stream.pooled(x, pool), model.head().pooled(model.trunk()(x))) < 1e-12


def test_freed_heap_is_released_every_few_blocks_on_cpu(monkeypatch):
    """Peak memory over many blocks was glibc's retained heap, not live tensors: the module
    returns it every ``release_every`` blocks (forward and backward blocks both count)."""
    import engine.streaming.passes as module
    from engine.streaming.heap import release_free_heap

    release_free_heap()  # callable here (a no-op where malloc_trim does not exist)
    calls = []
    monkeypatch.setattr(module, "release_free_heap", lambda: calls.append(1))
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=4).eval().trunk()
    stream = StreamingModule(trunk, 64)
    x = torch.randn(1, 3, 200, 200)
    blocks = stream.tile_plan((200, 200)).n_blocks
    stream.pooled(x, "avg", hooks=StreamHooks(release_every=1)).sum().backward()  # avg: every block has gradient
    assert len(calls) == 2 * blocks
    stream.pooled(x, "avg", hooks=StreamHooks(release_every=4)).sum().backward()
    assert len(calls) == 2 * blocks + (2 * blocks) // 4
    stream.pooled(x, "avg", hooks=StreamHooks(release_every=0)).sum().backward()
    assert len(calls) == 2 * blocks + (2 * blocks) // 4
    stream.pooled(x, "avg").sum().backward()  # no hooks: never
    assert len(calls) == 2 * blocks + (2 * blocks) // 4


def test_hooks_come_with_each_call_and_none_stay_behind(monkeypatch):
    """release_every and should_stop are per call: a later call without hooks is not affected."""
    import engine.streaming.passes as module
    from engine.errors import Cancelled

    calls = []
    monkeypatch.setattr(module, "release_free_heap", lambda: calls.append(1))
    torch.manual_seed(0)
    stream = StreamingModule(create_model("smallnet", width=4).eval().trunk(), 64)
    x = torch.randn(1, 3, 200, 200)
    blocks = stream.tile_plan((200, 200)).n_blocks
    stream.pooled(x, "avg", hooks=StreamHooks(release_every=1)).sum().backward()
    assert len(calls) == 2 * blocks
    stream.pooled(x, "avg").sum().backward()
    assert len(calls) == 2 * blocks
    with pytest.raises(Cancelled):
        stream.pooled(x, "avg", hooks=StreamHooks(should_stop=lambda: True))
    stream.pooled(x, "avg")  # the cancel did not stay on the module


def test_a_channel_flat_over_the_map_is_exact_without_storing_its_cells():
    """A channel tied at its maximum everywhere (a dead or constant channel) must not store a
    position per cell (that would outgrow the map); its gradient comes from the recomputed
    blocks instead, and still equals amax's."""
    from engine.streaming import pooled

    torch.manual_seed(2)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.MaxPool2d(2)).double()
    with torch.no_grad():
        trunk[0].weight[0] = 0.0
        trunk[0].bias[0] = 0.5  # channel 0 is 0.5 at every cell
    fc = torch.nn.Linear(4, 2).double()
    x = torch.randn(2, 3, 90, 70, dtype=torch.float64)
    ref_x = x.clone().requires_grad_(True)
    fc(trunk(ref_x).amax(dim=(2, 3))).square().sum().backward()
    ref = [p.grad.clone() for p in trunk.parameters()]
    trunk.zero_grad()

    stream = StreamingModule(trunk, 24)
    got_x = x.clone().requires_grad_(True)
    reducers = []
    original = pooled.GlobalPoolReducer.add

    def spy(self, *args):
        reducers.append(self)
        return original(self, *args)

    pooled.GlobalPoolReducer.add = spy
    try:
        fc(stream.pooled(got_x, "max")).square().sum().backward()
    finally:
        pooled.GlobalPoolReducer.add = original
    reducer = reducers[0]
    stored = sum(len(w) for w in reducer._where)
    assert stored <= 2 * 4 * pooled.TIE_CAP, stored  # not the 2 x 45 x 35 cells of channel 0
    assert rel_err(got_x.grad, ref_x.grad) < 1e-10
    for got, want in zip(trunk.parameters(), ref, strict=True):
        assert rel_err(got.grad, want) < 1e-10
