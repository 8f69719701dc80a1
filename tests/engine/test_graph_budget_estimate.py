"""The graph plan's byte estimate against what conventional back-propagation really saves: a
budget of conventional's saved bytes runs the whole image as one block (conventional speed),
a budget just below what that needs keeps some tiled blocks, 0 keeps none."""

from __future__ import annotations

import pytest
import torch

from engine.models import create_model
from engine.streaming import StreamHooks, StreamingModule

SIZE = (150, 133)
BATCH = 2


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return create_model("smallnet", width=4).double().eval().trunk()


def conventional_saved_bytes(trunk, x, params=None) -> int:
    """Bytes of every storage autograd saves in ``trunk(x)`` (each once; not the parameters)."""
    params = {p.untyped_storage().data_ptr() for p in (params or trunk.parameters())}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trunk(x)
    return sum(seen.values())


@pytest.fixture(scope="module")
def measured(trunk):
    x = torch.randn(BATCH, 3, *SIZE, dtype=torch.float64, requires_grad=True)
    return conventional_saved_bytes(trunk, x), x.numel() * x.element_size()


def test_whole_image_estimate_matches_what_the_whole_block_saves(trunk, measured):
    """The whole image as one block saves what conventional does, and a padded copy where a
    stride-2 layer's far border needs less than its own padding (8% more here, at odd sizes)."""
    from engine.streaming.executor import run_block
    from engine.streaming.plan import plan_tiles

    saved, input_bytes = measured
    stream = StreamingModule(trunk, 64)
    whole = stream.graph_plan(SIZE, batch=BATCH, graph_budget=1 << 40)
    one = plan_tiles(stream.graph, stream.output_size(SIZE), SIZE)
    x = torch.randn(BATCH, 3, *SIZE, dtype=torch.float64, requires_grad=True)
    streamed = conventional_saved_bytes(lambda t: run_block(stream.graph, t, one.row_plans[0], one.col_plans[0]), x,
                                        trunk.parameters())
    # The estimate leaves out the input (the caller's tensor, which every method saves).
    assert whole.kept_bytes == pytest.approx(streamed - input_bytes, rel=0.02)
    assert saved - input_bytes <= whole.kept_bytes <= 1.10 * (saved - input_bytes)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_budget_of_conventional_saved_bytes_runs_the_whole_image(trunk, measured, layout):
    """One block over the whole image; its input gradient lands in the input's own layout
    (the block's own gradient when the layouts agree, no second input-sized buffer)."""
    stream = StreamingModule(trunk, 64)
    plans = []
    x = torch.randn(BATCH, 3, *SIZE, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    y = stream(x, hooks=StreamHooks(graph_budget=measured[0], on_plan=plans.append))
    (plan,) = plans
    assert plan.summary()["whole_image"] and plan.blocks == 1 and plan.recomputed == 0
    assert plan.tile_plan.row_plans[0].cone == (0, SIZE[0]) and plan.tile_plan.col_plans[0].cone == (0, SIZE[1])
    y.square().sum().backward()
    x_ref = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    trunk(x_ref).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-10, atol=1e-14)
    assert x.grad.stride() == x_ref.grad.stride()


def test_just_below_the_whole_image_keeps_some_tiled_blocks(trunk):
    stream = StreamingModule(trunk, 64)
    whole = stream.graph_plan(SIZE, batch=BATCH, graph_budget=1 << 40)
    below = stream.graph_plan(SIZE, batch=BATCH, graph_budget=whole.peak_bytes - 1)
    assert not below.summary()["whole_image"] and below.blocks > 1
    assert 0 < len(below.kept) < below.blocks and below.peak_bytes <= whole.peak_bytes - 1
    assert below.kept == tuple(below.tile_plan.block_order()[:len(below.kept)])


def test_zero_keeps_none_on_the_module_tiles(trunk):
    stream = StreamingModule(trunk, 64)
    plan = stream.graph_plan(SIZE, batch=BATCH, graph_budget=0)
    assert plan.kept == () and plan.tile == (64, 64) and plan.tile_plan is stream.tile_plan(SIZE)


def test_more_budget_never_plans_more_compute(trunk):
    stream = StreamingModule(trunk, 64)
    tile = stream.graph_plan(SIZE, batch=BATCH, graph_budget=0)
    whole = stream.graph_plan(SIZE, batch=BATCH, graph_budget=1 << 40)
    budgets = [int(tile.peak_bytes + f * (whole.peak_bytes - tile.peak_bytes)) for f in (0.0, 0.2, 0.4, 0.7, 1.0)]
    plans = [stream.graph_plan(SIZE, batch=BATCH, graph_budget=b) for b in budgets]
    computes = [p.compute for p in plans]
    assert computes == sorted(computes, reverse=True) and computes[0] < tile.compute
    assert computes[-1] == pytest.approx(1.0) and plans[-1].summary()["whole_image"]
    for p in plans:
        assert p.peak_bytes <= p.budget
    # Below one tile's needs nothing fits: the module's tiles, nothing kept (today's schedule).
    assert stream.graph_plan(SIZE, batch=BATCH, graph_budget=tile.peak_bytes // 2).kept == ()


def test_on_cpu_a_large_image_keeps_its_tiles_instead_of_one_whole_block(monkeypatch):
    """Above CPU_WHOLE_IMAGE_MAX_PIXELS a CPU plan keeps the module's tiles (measured faster than
    one huge block there); below it a budget that fits the whole image runs it as one block."""
    import torch

    from engine.models import create_model
    from engine.streaming import StreamingModule
    from engine.streaming import module as streaming_module

    torch.manual_seed(0)
    stream = StreamingModule(create_model("smallnet", width=4).trunk().eval(), 64)
    hw = (150, 133)
    assert stream.graph_plan(hw, graph_budget=1 << 40).summary()["whole_image"]
    monkeypatch.setattr(streaming_module, "CPU_WHOLE_IMAGE_MAX_PIXELS", 100 * 100)
    plan = stream.graph_plan(hw, graph_budget=1 << 40)
    assert plan.blocks > 1 and len(plan.kept) == plan.blocks and not plan.summary()["whole_image"]


def test_every_block_saves_what_the_plan_estimates_border_blocks_included():
    """The estimate is per cell of each layer; a border block whose layers copied their tile to
    pad it saved 25-30% more than that (ResNet-34 to layer2), so the plan under-counted them."""
    from engine.streaming.executor import run_block
    from engine.streaming.keep import block_costs, saved_profile
    from engine.streaming.sources import TensorSource

    torch.manual_seed(0)
    trunk = create_model("resnet18", split="layer2").eval().trunk()
    size = (301, 277)  # odd: the last blocks are narrower and pad on their far side
    stream = StreamingModule(trunk, 160)
    plan = stream.tile_plan(size)
    profile = saved_profile(stream.graph, trunk, stream.geometry, 3)
    costs = block_costs(stream.graph, plan, profile, 4)
    params = {p.untyped_storage().data_ptr() for p in trunk.parameters()}
    source = TensorSource(torch.randn(1, 3, *size))
    assert plan.n_blocks >= 4
    for (i, j), estimate in zip(costs.order, costs.saved, strict=True):
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen.setdefault(storage.data_ptr(), storage.nbytes())
            return t

        x = stream.read_cone(source, plan.row_plans[i].cone, plan.col_plans[j].cone).requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_block(stream.graph, x, plan.row_plans[i], plan.col_plans[j])
        saved = sum(seen.values()) + (0 if x.untyped_storage().data_ptr() in seen else x.untyped_storage().nbytes())
        assert abs(saved - estimate) <= 0.03 * estimate, f"block {(i, j)}: saved {saved}, estimated {estimate}"
