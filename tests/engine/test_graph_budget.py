"""Graph budget (engine.streaming.keep): blocks that keep their forward graph are not recomputed,
and every gradient stays equal to conventional back-propagation whatever is kept."""

from __future__ import annotations

import pytest
import torch
from streaming_helpers import loss_of, rel_err

from engine.models import create_model
from engine.streaming import InputGradientSink, StreamHooks, StreamingModule

F64 = 1e-10
SIZE = (150, 133)  # 3 x 3 blocks at tile 64 on smallnet


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("smallnet", width=4).double().eval()


def _budgets(stream: StreamingModule, hw) -> dict[str, int]:
    """Budgets that keep none, some, several (of the module's own tiles), and all: the whole
    image as one block."""
    plan = stream.graph_plan(hw, graph_budget=0)
    assert plan.blocks > 2
    every = stream.graph_plan(hw, graph_budget=1 << 40)
    assert every.blocks == 1 and every.kept == ((0, 0),) and every.summary()["whole_image"]
    several = min(plan.peak_bytes + plan.block_bytes * (plan.blocks // 2), every.peak_bytes - 1)
    return {"none": 0, "some": (plan.peak_bytes + every.peak_bytes) // 2, "several": several, "all": 1 << 40}


def _count_recomputes(stream, monkeypatch) -> list:
    calls = []
    original = stream.recompute

    def counting(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    monkeypatch.setattr(stream, "recompute", counting)
    return calls


@pytest.mark.parametrize("which", ["none", "some", "several", "all"])
def test_every_gradient_equals_conventional_at_any_budget(model, which, monkeypatch):
    trunk = model.trunk()
    torch.manual_seed(1)
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    y_ref = trunk(x_ref)
    weights = torch.randn(y_ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    params = list(trunk.parameters())
    g_ref = torch.autograd.grad(loss_of(y_ref, weights), [x_ref, *params])

    stream = StreamingModule(trunk, 64)
    budget = _budgets(stream, SIZE)[which]
    plans = []
    calls = _count_recomputes(stream, monkeypatch)
    x_s = x.clone().requires_grad_(True)
    y_s = stream(x_s, hooks=StreamHooks(graph_budget=budget, on_plan=plans.append))
    assert rel_err(y_s, y_ref) < F64
    g_s = torch.autograd.grad(loss_of(y_s, weights), [x_s, *params])
    names = ["input"] + [n for n, _ in trunk.named_parameters()]
    for name, a, b in zip(names, g_s, g_ref, strict=True):
        assert rel_err(a, b) < F64, f"gradient of {name} differs at budget '{which}'"
    (plan,) = plans
    kept = len(plan.kept)
    assert {"none": kept == 0, "some": 0 < kept < plan.blocks, "several": 1 < kept < plan.blocks,
            "all": kept == plan.blocks == 1}[which], kept
    # Kept blocks ran their forward with autograd (counted once there), the others are recomputed.
    assert len(calls) == plan.blocks
    assert plan.kept == tuple(plan.tile_plan.block_order()[:kept]), "backward's first blocks are kept"


def test_module_budget_and_per_call_override(model, monkeypatch):
    trunk = model.trunk()
    stream = StreamingModule(trunk, 64, graph_budget=1 << 40)
    x = torch.randn(1, 3, *SIZE, dtype=torch.float64, requires_grad=True)
    plans = []
    stream(x, hooks=StreamHooks(on_plan=plans.append)).sum().backward()
    stream(x, hooks=StreamHooks(graph_budget=0, on_plan=plans.append)).sum().backward()
    assert len(plans[0].kept) == plans[0].blocks and plans[1].kept == ()
    summary = stream.plan_summary(SIZE)
    assert summary["kept"] == summary["blocks"] and summary["recomputed"] == 0
    assert summary["tile"] == SIZE and summary["estimated_peak_bytes"] > summary["kept_bytes"] > 0
    assert StreamingModule(trunk, 64).plan_summary(SIZE)["kept"] == 0  # None: today's schedule


def test_more_budget_keeps_more_and_estimates_grow(model):
    stream = StreamingModule(model.trunk(), 64)
    plans = [stream.graph_plan(SIZE, graph_budget=b) for b in (0, 2**20, 2**22, 2**24, 1 << 40)]
    kept = [len(p.kept) for p in plans]
    kept = [len(p.kept) / p.blocks for p in plans]
    assert kept == sorted(kept) and kept[0] == 0 and kept[-1] == 1
    peaks = [p.peak_bytes for p in plans]
    assert peaks == sorted(peaks)
    for p in plans[1:]:
        if p.kept:
            assert p.peak_bytes <= p.budget


@pytest.mark.parametrize("which", ["none", "some", "several", "all"])
def test_input_gradient_sink_with_kept_blocks(model, which, monkeypatch):
    """The sink needs raster order in backward; kept blocks are consumed in that same order."""
    trunk = model.trunk()
    x = torch.randn(1, 3, *SIZE, dtype=torch.float64)
    x_ref = x.clone().requires_grad_(True)
    trunk(x_ref).square().sum().backward()
    stream = StreamingModule(trunk, 64)
    full = torch.full_like(x, float("nan"))

    def put(reg):
        r0, r1, c0, c1 = reg.pixels
        full[:, :, r0:r1, c0:c1] = reg.values

    budget = _budgets(stream, SIZE)[which]
    stream(x, input_grad_sink=InputGradientSink(put), hooks=StreamHooks(graph_budget=budget)).square().sum().backward()
    assert not torch.isnan(full).any()
    assert rel_err(full, x_ref.grad) < F64


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("which", ["none", "some", "several", "all"])
def test_pooled_head_with_kept_blocks(pool, which, monkeypatch):
    torch.manual_seed(5)
    model = create_model("smallnet", width=4, pool=pool).double().eval()
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    ref_x = x.clone().requires_grad_(True)
    model.head()(model.trunk()(ref_x)).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    stream = StreamingModule(model.trunk(), 64)
    got_x = x.clone().requires_grad_(True)
    hooks = StreamHooks(graph_budget=_budgets(stream, SIZE)[which])
    model.fc(stream.pooled(got_x, pool, hooks=hooks)).square().sum().backward()
    assert rel_err(got_x.grad, ref_x.grad) < F64
    for n, p in model.named_parameters():
        assert rel_err(p.grad, ref[n]) < F64, n


def test_parameters_only_and_frozen_input(model):
    """No input gradient wanted: kept blocks hold no input cone gradient, parameters still exact."""
    trunk = model.trunk()
    x = torch.randn(1, 3, *SIZE, dtype=torch.float64)
    trunk(x).square().sum().backward()
    ref = [p.grad.clone() for p in trunk.parameters()]
    trunk.zero_grad()
    StreamingModule(trunk, 64, graph_budget=1 << 40)(x).square().sum().backward()
    for p, r in zip(trunk.parameters(), ref, strict=True):
        assert rel_err(p.grad, r) < F64


def test_bfloat16_autocast_with_kept_blocks_matches_recomputing(monkeypatch):
    torch.manual_seed(0)
    trunk = create_model("smallnet", width=8).eval().trunk()
    x = torch.randn(1, 3, 160, 144)
    stream = StreamingModule(trunk, 64)
    p0 = stream.graph_plan((160, 144), graph_budget=0, element_bytes=2)
    whole = stream.graph_plan((160, 144), graph_budget=1 << 40, element_bytes=2)
    some = min(p0.peak_bytes + p0.block_bytes * (p0.blocks // 2), whole.peak_bytes - 1)
    grads, plans = [], []
    for budget in (0, some, 1 << 40):
        xs = x.clone().requires_grad_(True)
        trunk.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = stream(xs, hooks=StreamHooks(graph_budget=budget, on_plan=plans.append))
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        grads.append((xs.grad.clone(), trunk.stage1[0].weight.grad.clone()))
    assert 0 < len(plans[1].kept) < plans[1].blocks and plans[2].blocks == 1
    # A kept graph is the one the recomputation would have built: same ops, same inputs, same bits.
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    # The whole image as one block sums in another order: bfloat16's 8-bit mantissa shows.
    assert rel_err(grads[2][0], grads[0][0]) < 5e-2 and rel_err(grads[2][1], grads[0][1]) < 5e-2


def test_no_grad_forward_keeps_nothing(model):
    stream = StreamingModule(model.trunk(), 64, graph_budget=1 << 40)
    plans = []
    with torch.no_grad():
        stream(torch.randn(1, 3, *SIZE, dtype=torch.float64), hooks=StreamHooks(on_plan=plans.append))
    assert plans == []
