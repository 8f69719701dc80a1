"""Heads over a tissue mask: masked streamed training equals masked conventional training (float64,
every head), blocks outside the mask are not computed, attention weights, GeM's exponent, cards."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from streaming_helpers import rel_err

from engine.errors import CheckpointError
from engine.io.checkpoints import ModelCard, build_model, load_checkpoint, save_checkpoint
from engine.models import EmptyMaskError, create_model
from engine.streaming import InputGradientSink, StreamHooks, StreamingModule
from engine.streaming import passes as streaming_passes
from engine.streaming.pooled import GlobalPoolReducer, mask_skip
from engine.train.classifier import Classifier

HEADS = ("max", "avg", "gem", "attention")
SIZE = 192  # smallnet: stride 16 at stage4 -> a 12x12 map; a 64-px tile owns 2x2 cells -> 36 blocks


def tissue_mask(hw: tuple[int, int]) -> torch.Tensor:
    """An L-shaped tissue region in the top-left of the map: most blocks hold none of it."""
    m = torch.zeros(1, 1, *hw, dtype=torch.bool)
    h, w = hw
    m[..., : h // 2, 1: w // 3] = True
    m[..., 1:3, : w // 2] = True
    return m


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-11) -> bool:
    """Relative agreement, with an absolute floor for gradients that are 0 up to rounding (the
    attention score's bias: a softmax does not change when every score shifts)."""
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-3)


def make_model(head: str, split: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"hidden": 6} if head == "attention" else None
    model = create_model("smallnet", width=4, split=split, head=head, head_kwargs=kwargs).double()
    with torch.no_grad():  # statistics of a calibrated model, so frozen norms are not the identity
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def masked_step(model, streaming: bool, x: torch.Tensor, mask: torch.Tensor, **kw):
    """Logits, every parameter's gradient and the input gradient of one masked training step."""
    net = Classifier(model, streaming=streaming, tile_size=64, **kw).train()
    x = x.clone().requires_grad_(True)
    logits = net(x, mask)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1])) + 0.1 * logits.square().sum()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, x.grad.clone(), net


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("split", ["stage4", "stage3"])  # stage3: stage4 runs in the head, before its pool
def test_masked_streamed_training_equals_masked_conventional_for_every_head(head, split):
    model = make_model(head, split)
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    trunk_hw = StreamingModule(model.trunk(), 64, freeze_batchnorm=True).output_size((SIZE, SIZE))
    mask = tissue_mask(trunk_hw)
    ref_logits, ref_grads, ref_gx, _ = masked_step(copy.deepcopy(model), False, x, mask)
    logits, grads, gx, net = masked_step(model, True, x, mask)
    assert rel_err(logits, ref_logits) < 1e-12
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    for k in ref_grads:
        assert close(grads[k], ref_grads[k]), k
    assert rel_err(gx, ref_gx) < 1e-11
    # The mask matters: the unmasked model gives other logits.
    assert rel_err(net(x).detach(), ref_logits) > 1e-6
    if head in ("max", "avg") and split == "stage4":
        assert net.pooled_head  # the block-by-block reduction, the map never held


def test_masked_training_with_kept_graphs_is_exact_and_keeps_no_skipped_block():
    model = make_model("avg", "stage4")
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    mask = tissue_mask((12, 12))
    ref_logits, ref_grads, ref_gx, _ = masked_step(copy.deepcopy(model), False, x, mask)
    plans = []
    net = Classifier(model, streaming=True, tile_size=64, graph_budget=1 << 30).train()
    net.hooks = StreamHooks(on_plan=plans.append)
    xs = x.clone().requires_grad_(True)
    logits = net(xs, mask)
    (torch.nn.functional.cross_entropy(logits, torch.tensor([1])) + 0.1 * logits.square().sum()).backward()
    assert rel_err(logits.detach(), ref_logits) < 1e-12 and rel_err(xs.grad, ref_gx) < 1e-11
    for k, p in model.named_parameters():
        assert close(p.grad, ref_grads[k]), k
    skip = mask_skip(mask)
    plan = plans[0]
    computed = [(i, j) for i, j in plan.tile_plan.block_order()
                if not skip((plan.tile_plan.rows[i].own_start, plan.tile_plan.rows[i].end),
                            (plan.tile_plan.cols[j].own_start, plan.tile_plan.cols[j].end))]
    assert plan.tile_plan.n_blocks > 1  # the whole-image shortcut is not taken when blocks can be skipped
    assert set(plan.kept) == set(computed) and plan.blocks == len(computed) < plan.tile_plan.n_blocks


class ReadCounter:
    """Counts the cones a streamed pass reads, by phase."""

    def __init__(self, monkeypatch):
        self.phase, self.reads = "forward", {"forward": 0, "backward": 0}
        original = StreamingModule.read_cone

        def read(module, source, rows, cols):
            self.reads[self.phase] += 1
            return original(module, source, rows, cols)

        monkeypatch.setattr(StreamingModule, "read_cone", read)


@pytest.mark.parametrize("head", ["avg", "attention"])
def test_blocks_outside_the_mask_are_read_neither_forward_nor_backward(head, monkeypatch):
    model = make_model(head, "stage4")
    net = Classifier(model, streaming=True, tile_size=64).train()
    plan = net.runner.tile_plan((SIZE, SIZE))
    mask = tissue_mask(plan.out_hw)
    inside = sum(bool(mask[..., rb.own_start:rb.end, cb.own_start:cb.end].any())
                 for rb in plan.rows for cb in plan.cols)
    assert 0 < inside < plan.n_blocks / 2
    counter = ReadCounter(monkeypatch)
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64, requires_grad=True)
    logits = net(x, mask)
    counter.phase = "backward"
    logits.sum().backward()
    # Every block with tissue has a gradient (a mean; attention weighs every masked cell), and
    # no other block is read in either pass.
    assert counter.reads == {"forward": inside, "backward": inside}
    counter.reads = {"forward": 0, "backward": 0}
    counter.phase = "forward"
    logits = net(x)
    counter.phase = "backward"
    logits.sum().backward()
    assert counter.reads == {"forward": plan.n_blocks, "backward": plan.n_blocks}


def test_backward_skips_the_zero_gradient_blocks_and_the_sink_hears_of_them(monkeypatch):
    torch.manual_seed(1)
    trunk = make_model("max", "stage4").trunk().eval()
    stream = StreamingModule(trunk, 64)
    plan = stream.tile_plan((SIZE, SIZE))
    mask = tissue_mask(plan.out_hw)
    skip = mask_skip(mask)
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    # The masked model's map gradient: non-zero on the mask's cells, zero outside (torch.where).
    grad = torch.where(mask, torch.ones(1, 16, *plan.out_hw, dtype=torch.float64), torch.zeros((), dtype=torch.float64))
    calls = []
    real_block_grad = streaming_passes.block_grad
    monkeypatch.setattr(streaming_passes, "block_grad",
                        lambda g, rb, cb, values=None: calls.append((rb.start, cb.start)) or real_block_grad(g, rb, cb))
    regions = []
    sink = InputGradientSink(regions.append)
    stream.backward_from(x, grad, input_grad_sink=sink, hooks=StreamHooks(skip_block=skip))
    inside = sum(not skip((rb.own_start, rb.end), (cb.own_start, cb.end)) for rb in plan.rows for cb in plan.cols)
    assert 0 < len(calls) == inside < plan.n_blocks
    # The sink still emits the whole image, once: skipped blocks add nothing to it.
    covered = torch.zeros(SIZE, SIZE, dtype=torch.int64)
    grad_x = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    for r in regions:
        covered[r.pixels[0]:r.pixels[1], r.pixels[2]:r.pixels[3]] += 1
        grad_x[r.pixels[0]:r.pixels[1], r.pixels[2]:r.pixels[3]] = r.values[0].abs().sum(dim=0)
    assert bool((covered == 1).all())
    assert bool(grad_x[:64, :64].any()) and not bool(grad_x[140:, :].any()) and not bool(grad_x[:, 140:].any())


def test_a_skipped_block_with_a_gradient_is_refused_not_dropped():
    trunk = make_model("max", "stage4").trunk().eval()
    stream = StreamingModule(trunk, 64)
    plan = stream.tile_plan((SIZE, SIZE))
    mask = tissue_mask(plan.out_hw)
    grad = torch.zeros(1, 16, *plan.out_hw, dtype=torch.float64)
    grad[..., -1, -1] = 1.0  # a cell of a block the mask skips
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    with pytest.raises(ValueError, match="skip_block leaves out: the backward would drop it"):
        stream.backward_from(x, grad, params=True, hooks=StreamHooks(skip_block=mask_skip(mask)))


def test_a_streamed_pass_that_skips_every_block_says_the_mask_is_empty():
    stream = StreamingModule(make_model("max", "stage4").trunk().eval(), 64)
    x = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    with pytest.raises(EmptyMaskError, match="every block of the 12x12 output map was skipped"):
        stream(x, hooks=StreamHooks(skip_block=lambda rows, cols: True))


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_a_masked_reducer_over_no_cell_is_refused_not_minus_infinity(pool):
    fmap = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[3, 3] = True  # in a block never added
    reducer = GlobalPoolReducer(pool, mask)
    reducer.add((0, 2), (0, 4), fmap[:, :, :2])
    with pytest.raises(EmptyMaskError, match="nothing to pool"):
        reducer.pooled()
    with pytest.raises(EmptyMaskError, match="nothing to pool"):
        GlobalPoolReducer(pool, mask).pooled()  # every block skipped


def test_masked_reducer_excludes_cells_from_max_sum_and_count():
    torch.manual_seed(2)
    fmap = torch.randn(1, 3, 6, 8, dtype=torch.float64)
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[1:4, 2:5] = True
    fmap[0, :, 5, 7] = 100.0  # outside the mask: must not be the maximum
    for pool, expect in (("max", fmap[:, :, mask].amax(dim=2)), ("avg", fmap[:, :, mask].mean(dim=2))):
        reducer = GlobalPoolReducer(pool, mask)
        for r0 in (0, 3):
            for c0 in (0, 4):
                reducer.add((r0, r0 + 3), (c0, c0 + 4), fmap[:, :, r0:r0 + 3, c0:c0 + 4])
        assert rel_err(reducer.pooled(), expect) < 1e-14
        grad = reducer.grad_for_block(torch.ones(1, 3, dtype=torch.float64))
        assert grad((3, 6), (4, 8)) is None or not bool(grad((3, 6), (4, 8))[:, :, 2, 3].any())


def test_attention_weights_sum_to_one_over_the_mask_and_vanish_outside():
    head = make_model("attention", "stage3").head()  # stage4 strides: the mask is carried to its grid
    fmap = torch.rand(2, 16, 12, 12, dtype=torch.float64)
    mask = torch.zeros(2, 1, 12, 12, dtype=torch.bool)
    mask[0, :, :4, :6] = True
    mask[1, :, 5:, 7:] = True
    weights = head.attention(fmap, mask)
    assert weights.shape == (2, 1, 6, 6)
    carried = torch.nn.functional.max_pool2d(mask.double(), 2) > 0
    torch.testing.assert_close(weights.sum(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-14)
    assert bool((weights[~carried] == 0).all()) and bool((weights[carried] > 0).all())
    full = head.attention(fmap)
    torch.testing.assert_close(full.sum(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-14)


def test_gem_exponent_learns_and_interpolates_between_mean_and_max():
    model = make_model("gem", "stage4")
    head = model.head()
    fmap = torch.rand(1, 16, 5, 5, dtype=torch.float64) + 0.1
    head.fc(head.pooled(fmap)).sum().backward()
    assert model.pooling.p.grad is not None and float(model.pooling.p.grad.abs()) > 0
    with torch.no_grad():
        model.pooling.p.fill_(1.0)
        assert rel_err(head.pooled(fmap), fmap.mean(dim=(2, 3))) < 1e-12
        model.pooling.p.fill_(200.0)
        assert rel_err(head.pooled(fmap), fmap.amax(dim=(2, 3))) < 0.02
    assert "pooling.p" in model.state_dict()


def test_max_and_avg_models_keep_their_state_dict_names():
    for head in ("max", "avg"):
        assert create_model("smallnet", head=head).state_dict().keys() == create_model("smallnet").state_dict().keys()


def test_an_empty_mask_is_refused_not_pooled_to_nan():
    head = make_model("gem", "stage4").head()
    with pytest.raises(EmptyMaskError, match="nothing to pool"):
        head(torch.rand(1, 16, 4, 4, dtype=torch.float64), torch.zeros(1, 1, 4, 4, dtype=torch.bool))


def test_cards_record_the_head_and_old_cards_load_as_their_pool(tmp_path):
    old = {"format_version": 1, "architecture": "smallnet", "classes": ["a", "b"], "split": "stage4",
           "pool": "avg", "model_kwargs": {"width": 4}}
    card = ModelCard.from_json(old)
    assert card.head is None and card.head_name == "avg" and "head" not in card.to_json()
    assert build_model(card).head().pool == "avg"
    card = ModelCard(architecture="smallnet", classes=("a", "b"), split="stage4", model_kwargs={"width": 4},
                     head="attention", head_kwargs={"hidden": 8}, tissue_mask="auto", tissue_params={"dark": 150})
    model = build_model(card)
    save_checkpoint(tmp_path / "m", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "m")
    assert loaded_card.head == "attention" and loaded_card.tissue_mask == "auto"
    assert loaded_card.tissue_params == {"dark": 150}
    assert type(loaded.head()).__name__ == "AttentionHead" and loaded.pooling.embed.out_features == 8
    saved = json.loads((tmp_path / "m" / "model.json").read_text())
    assert saved["head"] == "attention" and saved["head_kwargs"] == {"hidden": 8}


@pytest.mark.parametrize("fields, message", [
    ({"head": "transformer"}, "field 'head' is not a head this StreamSlide knows; it must be one of max, avg, gem"),
    ({"head": "max", "pool": "avg"}, "they must agree"),
    ({"head": "attention", "head_kwargs": {"depth": 2}}, "takes no argument depth"),
    ({"head": "attention", "head_kwargs": {"hidden": 0}}, "must be an integer from 1"),
    ({"tissue_mask": "otsu"}, "field 'tissue_mask' must be one of auto, none"),
])
def test_a_card_with_an_unknown_head_is_refused_with_a_clear_message(fields, message):
    d = {"format_version": 1, "architecture": "smallnet", "classes": ["a", "b"], "split": "stage4", **fields}
    with pytest.raises(CheckpointError, match=message) as err:
        ModelCard.from_json(d, source="cards/model.json")
    assert "cards/model.json" in str(err.value)


@pytest.mark.parametrize("head", ["avg", "attention"])
def test_a_masked_run_freezes_the_heads_norms_so_glass_does_not_count(head):
    """The same tissue on a 12 x 12 and on a 48 x 48 map (the rest glass, masked out): with the
    head's BatchNorm in training mode its batch statistics would count the glass cells."""
    torch.manual_seed(4)
    tissue = torch.rand(1, 16, 12, 12, dtype=torch.float64)
    big = torch.rand(1, 16, 48, 48, dtype=torch.float64)
    big[..., :12, :12] = tissue
    small_mask = torch.ones(1, 1, 12, 12, dtype=torch.bool)
    big_mask = torch.zeros(1, 1, 48, 48, dtype=torch.bool)
    big_mask[..., :12, :12] = True
    logits = {}
    for masked in (False, True):
        net = Classifier(make_model(head, "stage3"), streaming=False, tile_size=64, masked=masked).train()
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.head.stages.modules())
        assert all(not m.training for m in net.head.stages.modules()
                   if isinstance(m, torch.nn.BatchNorm2d)) == masked
        logits[masked] = (net.head(tissue, small_mask), net.head(big, big_mask))
    assert (logits[False][0] - logits[False][1]).abs().max() > 1e-3  # batch statistics: glass counts
    torch.testing.assert_close(logits[True][0], logits[True][1], rtol=1e-12, atol=1e-12)


def test_the_trunk_grid_is_traced_when_the_classifier_is_built(monkeypatch):
    net = Classifier(make_model("max", "stage4"), streaming=False, tile_size=64)

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced after construction (on a prefetch thread, fx patches nn.Module.__call__)")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_tracing)
    assert net.trunk_grid((192, 160)) == ((12, 10), (16, 16))
