"""Training end to end on tiny slides: streamed equals conventional, learning, resume, cancel, NaN."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from train_fixtures import write_training_set

from engine.api import run_training
from engine.errors import TrainingError
from engine.events import CancelToken, CheckpointSaved, Finished, Metrics, StepSkipped
from engine.io.checkpoints import load_checkpoint
from engine.io.runs import RunFolder
from engine.io.training_state import find_checkpoint
from engine.models.split import ClassifierHead
from engine.specs import TrainingSpec


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=3, size=96, val_per_class=1)


@pytest.fixture
def spec(labels_csv, tmp_path):
    # smallnet width 4: receptive field 45 px, stride 16; a 64-px tile cuts a 96² input into 4 tiles.
    return TrainingSpec(labels=str(labels_csv), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=2, lr=3e-3,
                        normalization_mean=(0.5, 0.5, 0.5), normalization_std=(0.25, 0.25, 0.25), device="cpu")


class Recorder:
    def __init__(self, cancel_after_step: int | None = None, token: CancelToken | None = None):
        self.events, self.cancel_after_step, self.token = [], cancel_after_step, token

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Metrics) and event.phase == "train" and event.step == self.cancel_after_step:
            self.token.cancel()

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def losses(self):
        return [e.values["loss"] for e in self.of(Metrics) if e.phase == "train"]


def weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_streamed_training_equals_conventional_step_for_step_in_float64(spec, tmp_path):
    runs = {}
    for streaming in (True, False):
        rec = Recorder()
        s = dataclasses.replace(spec, streaming=streaming, dtype="float64", epochs=1,
                                out_dir=str(tmp_path / str(streaming)))
        run_training(s, rec)
        runs[streaming] = rec
    streamed, conventional = runs[True].losses(), runs[False].losses()
    assert len(streamed) == 4 and len(set(streamed)) > 1
    assert streamed == pytest.approx(conventional, rel=1e-10, abs=1e-12)
    a, b = weights(tmp_path / "True" / "last"), weights(tmp_path / "False" / "last")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11)


def test_streamed_training_learns_the_local_pattern(spec, tmp_path):
    labels = write_training_set(tmp_path / "slides", n_per_class=5, size=96, val_per_class=2, seed=1)
    rec = Recorder()
    done = run_training(dataclasses.replace(spec, labels=str(labels), model_kwargs={"width": 8}, epochs=4), rec)
    val = [e.values for e in rec.of(Metrics) if e.phase == "val"]
    assert len(val) == 4 and val[-1]["auc"] == 1.0 and val[-1]["accuracy"] == 1.0
    assert val[-1]["loss"] < val[0]["loss"]
    assert load_checkpoint(done.outputs["best"])[1].classes == ("benign", "tumour")
    rows = [json.loads(line) for line in open(done.outputs["metrics"])]
    assert [r["step"] for r in rows if r["phase"] == "train"] == list(range(4 * 6))
    assert [r["epoch"] for r in rows if r["phase"] == "val"] == [0, 1, 2, 3]
    assert {e.kind for e in rec.of(CheckpointSaved)} == {"last", "best"}
    summary = RunFolder(spec.out_dir).summary()  # what the viewer's runs list shows
    assert (summary.model, summary.epochs, summary.epochs_done, summary.steps) == ("smallnet", 4, 4, 24)
    assert summary.checkpoint == done.outputs["best"] and summary.val["auc"] == 1.0


def test_cancel_saves_and_resume_equals_uninterrupted(spec, tmp_path):
    whole = Recorder()
    run_training(dataclasses.replace(spec, out_dir=str(tmp_path / "whole")), whole)

    token = CancelToken()
    first = Recorder(cancel_after_step=2, token=token)
    out = str(tmp_path / "interrupted")
    result = run_training(dataclasses.replace(spec, out_dir=out), first, token)
    assert result.cancelled and first.of(CheckpointSaved)[-1].step == 3
    second = Recorder()
    run_training(dataclasses.replace(spec, out_dir=out, resume=True), second)

    assert first.losses() + second.losses() == whole.losses()
    a, b = weights(tmp_path / "whole" / "last"), weights(tmp_path / "interrupted" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(line)["loss"] for line in open(tmp_path / "interrupted" / "metrics.jsonl")
              if json.loads(line)["phase"] == "train"]
    assert logged == whole.losses()


@pytest.fixture
def nan_head(monkeypatch):
    """Make the head return NaN logits on chosen training calls (counted from 0)."""
    calls = {"n": 0, "bad": set()}
    original = ClassifierHead.classify  # both the pooled streamed path and head.forward go through it

    def classify(self, pooled):
        out = original(self, pooled)
        if self.training:
            calls["n"] += 1
            if calls["n"] - 1 in calls["bad"]:
                return out * math.nan
        return out

    monkeypatch.setattr(ClassifierHead, "classify", classify)
    return calls["bad"]


def test_a_nan_loss_skips_the_step_and_training_goes_on(spec, nan_head):
    nan_head.update({1})
    rec = Recorder()
    result = run_training(dataclasses.replace(spec, epochs=1), rec)
    assert not result.cancelled
    assert [(e.step, e.reason) for e in rec.of(StepSkipped)] == [(1, "non-finite loss")]
    assert all(torch.isfinite(v).all() for v in weights(result.outputs["last"]).values())


def test_repeated_nans_stop_the_run_and_never_save_bad_weights(spec, nan_head):
    nan_head.update(range(1, 100))
    rec = Recorder()
    with pytest.raises(TrainingError, match="3 steps in a row"):
        run_training(dataclasses.replace(spec, checkpoint_every=1), rec)
    assert len(rec.of(StepSkipped)) == 3
    last = find_checkpoint(spec.out_dir + "/last")
    assert all(torch.isfinite(v).all() for v in weights(last).values())
    assert not any(isinstance(e, Finished) for e in rec.events)


def _trunk_norms(model):
    return [m for m in model.trunk().modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_training_from_scratch_sets_frozen_norm_statistics_from_the_data(spec, tmp_path):
    run_training(dataclasses.replace(spec, epochs=1, lr=0.0, weight_decay=0.0), Recorder())
    model, _ = load_checkpoint(tmp_path / "run" / "last")
    norms = _trunk_norms(model)
    # PyTorch starts every norm at mean 0 / variance 1; calibrated ones carry their inputs' statistics.
    assert norms and all(not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    # With lr 0 nothing else moved, so the statistics came from calibration, not from training.
    assert all(m.num_batches_tracked.item() == spec.calibrate_norms for m in norms)

    run_training(dataclasses.replace(spec, out_dir=str(tmp_path / "off"), epochs=1, lr=0.0, weight_decay=0.0,
                                     calibrate_norms=0), Recorder())
    off, _ = load_checkpoint(tmp_path / "off" / "last")
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in _trunk_norms(off))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_the_gpu_numerics_paths_train_correctly_when_forced_on_cpu(spec, tmp_path, monkeypatch, amp_dtype):
    """Mixed precision (bf16; fp16 with the gradient scaler) is chosen on GPU only; forced on
    CPU here (with channels-last tiles) so its code runs in every CI: autocast must really be on,
    tiles NHWC, the first step's loss close to float32's, and the run must save float32 weights."""
    import engine.train.precision

    reference = Recorder()
    run_training(dataclasses.replace(spec, epochs=1, out_dir=str(tmp_path / "fp32")), reference)

    monkeypatch.setattr(engine.train.precision, "autocast_dtype", lambda spec, device, dtype: amp_dtype)
    monkeypatch.setattr(engine.train.precision, "use_channels_last", lambda spec, device: True)
    seen: dict = {"tiles": set(), "features": set()}
    from engine.streaming.module import StreamingModule

    original_read, original_classify = StreamingModule.read_cone, ClassifierHead.classify

    def spying_read(self, source, rows, cols):  # every tile the trunk reads
        x = original_read(self, source, rows, cols)
        seen["tiles"].add(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x

    def spying_classify(self, pooled):  # the trunk's pooled features, as the head gets them
        seen["features"].add(pooled.dtype)
        return original_classify(self, pooled)

    monkeypatch.setattr(StreamingModule, "read_cone", spying_read)
    monkeypatch.setattr(ClassifierHead, "classify", spying_classify)
    mixed = Recorder()
    run_training(dataclasses.replace(spec, epochs=1, out_dir=str(tmp_path / "amp")), mixed)
    assert seen == {"tiles": {True}, "features": {amp_dtype}}
    losses = [[e.values["loss"] for e in r.events if isinstance(e, Metrics) and e.phase == "train"]
              for r in (reference, mixed)]
    assert len(losses[1]) == len(losses[0]) and all(math.isfinite(v) for v in losses[1])
    assert losses[1][0] == pytest.approx(losses[0][0], rel=2e-2)
    # fp16's loss scale starts at 2**16 and halves on each overflow: those steps are skipped and
    # reported, but never counted towards stopping the run; bf16 needs no scaling.
    skipped = {e.reason for e in mixed.events if isinstance(e, StepSkipped)}
    assert skipped <= ({"fp16 gradient overflow; loss scale lowered"} if amp_dtype == torch.float16 else set())
    assert isinstance(mixed.events[-1], Finished) and not mixed.events[-1].cancelled
    model, _ = load_checkpoint(tmp_path / "amp" / "last")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_low_memory_training_gives_freed_heap_back_after_every_block_with_the_same_losses(spec, tmp_path, monkeypatch):
    import engine.streaming.passes as module

    calls = []
    monkeypatch.setattr(module, "release_free_heap", lambda: calls.append(1))
    plain = Recorder()
    run_training(dataclasses.replace(spec, epochs=1, out_dir=str(tmp_path / "plain")), plain)
    assert calls == []
    low = Recorder()
    run_training(dataclasses.replace(spec, epochs=1, out_dir=str(tmp_path / "low"), low_memory=True), low)
    steps = len(low.losses())
    assert steps > 0 and len(calls) >= 4 * steps  # a 96² input is 4 blocks: each forward block at least
    assert low.losses() == plain.losses()
