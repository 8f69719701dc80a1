"""Staged training: head-only epochs on the frozen trunk (maps cached in the run folder), then the
whole network with its own learning rate and tile; resume on both sides of the switch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import slide_rgb, write_training_set

from engine.api import run_training
from engine.errors import SpecError, TileSizeError
from engine.events import CancelToken, CheckpointSaved, Metrics
from engine.io.checkpoints import load_checkpoint
from engine.io.labels import read_labels
from engine.specs import HEADS, TrainingSpec
from engine.streaming.module import StreamingModule
from engine.train import stages
from engine.train.classifier import Classifier, build_model
from engine.train.data import Augmentation, split_records
from engine.train.loop import Trainer
from engine.train.map_cache import CACHE_FOLDER, MANIFEST, MapCache, cache_key
from engine.train.step import SlideForward

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory):
    # 4 training slides (one per step), 2 validation slides
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=3, size=96, val_per_class=1)


@pytest.fixture
def spec(labels_csv, tmp_path):
    return TrainingSpec(labels=str(labels_csv), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=3, lr=3e-3,
                        normalization_mean=(0.5, 0.5, 0.5), normalization_std=(0.25, 0.25, 0.25), device="cpu",
                        augment=False, freeze_trunk_epochs=2)


class Recorder:
    def __init__(self, cancel_after_step: int | None = None, token: CancelToken | None = None, on_save=None):
        self.events, self.cancel_after_step, self.token, self.on_save = [], cancel_after_step, token, on_save

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Metrics) and event.phase == "train" and event.step == self.cancel_after_step:
            self.token.cancel()
        if isinstance(event, CheckpointSaved) and event.kind == "last" and self.on_save is not None:
            self.on_save(event)

    def losses(self):
        return [e.values["loss"] for e in self.events if isinstance(e, Metrics) and e.phase == "train"]


@pytest.fixture
def trunk_calls(monkeypatch):
    """How often the trunk ran forward on a slide in head epochs (map kept, or pooled block by block)."""
    calls = {"map": 0, "pooled": 0}
    original_map, original_pooled = stages.trunk_map, StreamingModule.pooled

    def trunk_map(classifier, x, mask=None):
        if not any(p.requires_grad for p in classifier.trunk.parameters()):
            calls["map"] += 1
        return original_map(classifier, x, mask)

    def pooled(self, x, pool, **kw):
        if not any(p.requires_grad for p in self.trunk.parameters()):
            calls["pooled"] += 1
        return original_pooled(self, x, pool, **kw)

    monkeypatch.setattr(stages, "trunk_map", trunk_map)
    monkeypatch.setattr(StreamingModule, "pooled", pooled)
    return calls


def _split(state: dict, prefix_of_trunk: tuple[str, ...]) -> tuple[dict, dict]:
    trunk = {k: v for k, v in state.items() if k.startswith(prefix_of_trunk)}
    return trunk, {k: v for k, v in state.items() if k not in trunk}


def test_head_epochs_leave_the_trunk_bit_identical_and_train_the_head(spec):
    s = dataclasses.replace(spec, epochs=2, calibrate_norms=0)  # no calibration: the built model is the start
    start, _ = build_model(s, ("benign", "tumour"))
    run_training(s, Recorder())
    end, _ = load_checkpoint(Path(s.out_dir) / "last")
    trunk_names = tuple(f"{n}." for n in start.stage_names)  # smallnet splits after its last stage
    trunk0, head0 = _split(start.state_dict(), trunk_names)
    trunk1, head1 = _split(end.state_dict(), trunk_names)
    assert trunk0 and head0 and trunk0.keys() == trunk1.keys()
    assert all(torch.equal(trunk0[k], trunk1[k]) for k in trunk0)  # weights and BatchNorm statistics
    assert any(not torch.equal(head0[k], head1[k]) for k in head0)


def test_maps_are_cached_once_in_half_precision_in_the_run_folder_and_removed_at_the_end(spec, trunk_calls):
    folder = Path(spec.out_dir) / CACHE_FOLDER
    seen = []

    def look(event):  # at every checkpoint: what the cache holds (map dtype; the tissue mask beside it)
        if folder.is_dir():
            seen.append({p.name: (np.load(p)["map"].dtype, np.load(p)["mask"].dtype) for p in folder.glob("*.npz")})

    run_training(dataclasses.replace(spec, epochs=2), Recorder(on_save=look))
    # 4 training and 2 validation slides: the trunk ran once on each over both head epochs
    assert trunk_calls == {"map": 6, "pooled": 0}
    names = {f"train-{i}.npz" for i in range(4)} | {"val-0.npz", "val-1.npz"}
    assert len(seen) == 2 and all(s == dict.fromkeys(names, (np.dtype(np.float16), np.dtype(bool))) for s in seen)
    assert not folder.exists()
    assert not any("benign" in n or "tumour" in n for n in names)


def test_the_cache_goes_when_the_trunk_is_unfrozen_and_full_epochs_run_the_trunk_again(spec, trunk_calls):
    folder = Path(spec.out_dir) / CACHE_FOLDER
    during = []
    run_training(dataclasses.replace(spec, epochs=3, freeze_trunk_epochs=1),
                 Recorder(on_save=lambda e: during.append(folder.exists())))
    assert during == [True, False, False] and trunk_calls["map"] == 6


def test_with_augmentation_the_trunk_runs_every_head_epoch_and_only_validation_maps_are_cached(spec, trunk_calls):
    folder = Path(spec.out_dir) / CACHE_FOLDER
    seen = []
    run_training(dataclasses.replace(spec, epochs=2, augment=True),
                 Recorder(on_save=lambda e: seen.append(sorted(p.name for p in folder.glob("*.npz")))))
    # smallnet's head is pool + linear: augmented slides are pooled block by block, the map never held
    assert trunk_calls == {"map": 2, "pooled": 8}
    assert seen == [["val-0.npz", "val-1.npz"]] * 2


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("split", ["stage4", "stage2"])  # no head stages (max/avg pool streamed); stages of its own
def test_the_head_on_a_cached_map_gives_the_full_models_logits(spec, tmp_path, split, head, masked):
    s = dataclasses.replace(spec, split=split, head=head, dtype="float64")
    model, _ = build_model(s, ("benign", "tumour"))
    model.to(torch.float64)
    classifier = Classifier(model, streaming=True, tile_size=s.tile_size).eval()
    assert classifier.pooled_head == (split == "stage4" and head in ("max", "avg"))
    plain = SlideForward(s, torch.float64, torch.device("cpu"), None)
    rgb = slide_rgb(96, True, np.random.default_rng(3))
    mask = None
    if masked:  # the top rows of the trunk's grid: with 64-px tiles some blocks are left out (NaN in the map)
        (h, w), _ = classifier.trunk_grid((96, 96))
        mask = torch.zeros((1, 1, h, w), dtype=torch.bool)
        mask[..., : h // 2, : w - 1] = True
    with torch.no_grad():
        full = plain(classifier, rgb, Augmentation(), mask)
        head_net = stages.HeadOnly(classifier)
        for dtype in (np.float64, np.float16):
            cache = MapCache(tmp_path / dtype.__name__, "key", dtype)
            cache.prepare()
            forward = stages.HeadForward(plain, classifier, cache)
            first = forward(head_net, stages.CachedSlide("train-0", rgb=rgb), Augmentation(), mask)
            stored, stored_mask = cache.load("train-0")
            assert stored.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype
            assert (stored_mask is None) == (mask is None) and (mask is None or torch.equal(stored_mask, mask))
            again = forward(head_net, stages.CachedSlide("train-0", fmap=stored, mask=stored_mask), Augmentation())
            assert torch.equal(first, again)  # the first epoch trains on the map as cached
            if dtype is np.float64:
                torch.testing.assert_close(again, full, rtol=1e-12, atol=1e-12)
            else:  # exactly the head on the float16-rounded map, in float64
                fmap = stages.trunk_map(classifier, plain_source(s, rgb), mask)
                rounded = fmap.to(torch.float16).to(torch.float64)
                assert torch.equal(again, classifier.head(rounded, mask))
                torch.testing.assert_close(again, full, rtol=1e-2, atol=1e-2)


def plain_source(spec, rgb):
    from engine.train.data import input_source

    return input_source(rgb, Augmentation(), spec.normalization_mean, spec.normalization_std, dtype=torch.float64)


def _rows(out_dir):
    return [json.loads(line) for line in open(Path(out_dir) / "metrics.jsonl")]


@pytest.mark.parametrize("cancel_at", [2, 9])  # in the first head epoch; in the full epoch after the switch
def test_resume_across_the_switch_equals_an_uninterrupted_run(spec, tmp_path, cancel_at):
    s = dataclasses.replace(spec, finetune_lr=1e-3, finetune_tile=80)
    whole = Recorder()
    run_training(dataclasses.replace(s, out_dir=str(tmp_path / "whole")), whole)

    out = tmp_path / "interrupted"
    token = CancelToken()
    first = Recorder(cancel_after_step=cancel_at, token=token)
    assert run_training(dataclasses.replace(s, out_dir=str(out)), first, token).cancelled
    assert not (out / CACHE_FOLDER).exists()  # a clean cancel removes the cache
    state = json.loads((out / "last" / "state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [3e-3, 1e-3]
    second = Recorder()
    trainer = Trainer(dataclasses.replace(s, out_dir=str(out), resume=True), second, CancelToken())
    trainer.run()

    assert first.losses() + second.losses() == whole.losses()
    a, b = load_checkpoint(tmp_path / "whole" / "last")[0].state_dict(), load_checkpoint(out / "last")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [r for r in _rows(out) if r["phase"] != "note"]  # the note says where it resumed
    assert rows == _rows(tmp_path / "whole")
    assert [(r["epoch"], r["step"], r["stage"]) for r in rows if r["phase"] == "stage"] == [
        (0, 0, "head"), (1, 4, "head"), (2, 8, "full")]
    assert [r["step"] for r in rows if r["phase"] == "train"] == list(range(12))
    assert trainer.classifier.runner.tile_size == (80, 80)
    assert [g["initial_lr"] for g in trainer.step.optimizer.param_groups] == [3e-3, 1e-3]


def test_finetune_lr_and_tile_reach_the_optimiser_and_the_streamed_trunk(spec, monkeypatch):
    tiles = []
    original = StreamingModule.read_cone

    def read(self, source, rows, cols):  # every tile the trunk reads, by the module's tile size
        tiles.append((self.tile_size, any(p.requires_grad for p in self.trunk.parameters())))
        return original(self, source, rows, cols)

    monkeypatch.setattr(StreamingModule, "read_cone", read)
    s = dataclasses.replace(spec, epochs=2, freeze_trunk_epochs=1, finetune_lr=1e-3, finetune_tile=80)
    trainer = Trainer(s, Recorder(), CancelToken())
    trainer.run()
    assert {t for t, trains in tiles if trains} == {(80, 80)}  # every tile of the full epoch
    assert {t for t, trains in tiles if not trains} == {(64, 64)}  # the frozen trunk's maps
    train = [r for r in _rows(s.out_dir) if r["phase"] == "train"]
    # rows log the rate after their step: the trunk's is 0 until the last head step, then 1e-3 (cosine)
    assert [r["trunk_lr"] for r in train[:3]] == [0.0] * 3 and train[3]["trunk_lr"] == pytest.approx(1e-3)
    assert train[3]["lr"] == pytest.approx(3e-3 * 0.5 * (1 + np.cos(np.pi * 4 / 8)))
    groups = trainer.step.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [3e-3, 1e-3]
    trunk_ids = {id(p) for p in trainer.classifier.trunk.parameters()}
    assert {id(p) for p in groups[1]["params"]} == trunk_ids
    assert not trunk_ids & {id(p) for p in groups[0]["params"]}


def _kill_instead_of_cancel(monkeypatch):
    """Keep the cache as a killed run leaves it (a clean cancel would remove it)."""
    monkeypatch.setattr(stages.Stages, "close", lambda self: None)


def test_a_killed_runs_cache_is_reused_when_it_fits_and_rebuilt_when_it_is_stale(spec, tmp_path, monkeypatch,
                                                                                  trunk_calls):
    folder = Path(spec.out_dir) / CACHE_FOLDER
    with monkeypatch.context() as m:
        _kill_instead_of_cancel(m)
        token = CancelToken()
        run_training(spec, Recorder(cancel_after_step=2, token=token), token)
    cached = sorted(p.name for p in folder.glob("*.npz"))
    assert len(cached) == 3 and all(n.startswith("train-") for n in cached)  # the three steps' slides
    assert trunk_calls["map"] == 3
    trunk_calls["map"] = 0

    # Still valid: only the missing maps are computed (one training slide, two validation slides).
    with monkeypatch.context() as m:
        _kill_instead_of_cancel(m)
        token = CancelToken()
        run_training(dataclasses.replace(spec, resume=True), Recorder(cancel_after_step=5, token=token), token)
    assert trunk_calls["map"] == 3 and len(list(folder.glob("*.npz"))) == 6
    trunk_calls["map"] = 0

    # Stale (here a manifest of another key, as another trunk, slide list or spec would give): rebuilt.
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps({**manifest, "key": "0" * 64}))
    np.savez(folder / "train-7.npz", map=np.full((1, 16, 6, 6), 7.0, np.float16))
    seen = []
    run_training(dataclasses.replace(spec, resume=True),
                 Recorder(on_save=lambda e: seen.append(sorted(p.name for p in folder.glob("*.npz")))))
    # from step 6: two training slides and the two validation slides of epoch 1, all computed anew
    assert trunk_calls["map"] == 4 and len(seen[0]) == 4 and "train-7.npz" not in seen[0]
    assert not folder.exists()


def test_the_cache_key_follows_the_trunk_the_slides_and_the_input(spec, labels_csv):
    labels = read_labels(spec.labels, spec.classes)
    train, val = split_records(labels, spec.val_fraction, spec.seed)
    model, _ = build_model(spec, labels.classes)
    trunk = model.trunk()
    key = cache_key(spec, train, val, trunk)
    assert cache_key(spec, train, val, trunk) == key
    assert cache_key(dataclasses.replace(spec, input_size=80), train, val, trunk) != key
    assert cache_key(spec, train[1:], val, trunk) != key
    with torch.no_grad():
        next(trunk.parameters()).view(-1)[0] += 1e-6
    assert cache_key(spec, train, val, trunk) != key
    with torch.no_grad():
        next(trunk.parameters()).view(-1)[0] -= 1e-6
    st = os.stat(train[0].path)
    os.utime(train[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the slide file changed
    try:
        assert cache_key(spec, train, val, trunk) != key
    finally:
        os.utime(train[0].path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bad_staged_values_are_refused(spec):
    for bad in ({"freeze_trunk_epochs": -1}, {"finetune_lr": 0.0}, {"finetune_tile": 0},
                {"freeze_trunk_epochs": 0, "finetune_lr": 1e-3}, {"freeze_trunk_epochs": 0, "finetune_tile": 128}):
        with pytest.raises(SpecError):
            dataclasses.replace(spec, **bad)
    # smallnet width 4 sees 45 px: a smaller fine-tuning tile is refused before any epoch runs
    with pytest.raises(TileSizeError, match="receptive field"):
        Trainer(dataclasses.replace(spec, finetune_tile=32), Recorder(), CancelToken())
    assert not Path(spec.out_dir).exists()


def test_two_gloo_ranks_train_staged_as_one_process_with_the_same_effective_batch(labels_csv, tmp_path):
    common = ["--labels", str(labels_csv), "--model", "smallnet", "--model-arg", "width=4", "--input-size", "96",
              "--tile", "64", "--epochs", "2", "--lr", "0.003", "--dtype", "float64", "--device", "cpu",
              "--no-augment", "--freeze-trunk-epochs", "1", "--finetune-lr", "0.001", "--finetune-tile", "80"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "engine", "train", *common, "--out", str(tmp_path / "ddp")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = TrainingSpec(labels=str(labels_csv), out_dir=str(tmp_path / "single"), model="smallnet",
                          model_kwargs={"width": 4}, input_size=96, tile_size=64, epochs=2, lr=0.003,
                          dtype="float64", device="cpu", accumulate=2, augment=False, freeze_trunk_epochs=1,
                          finetune_lr=0.001, finetune_tile=80)
    run_training(single, Recorder())
    a = load_file(tmp_path / "ddp" / "last" / "model.safetensors")
    b = load_file(tmp_path / "single" / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-13, msg=k)
    assert not (tmp_path / "ddp" / CACHE_FOLDER).exists()


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_staged_training_runs_under_the_gpu_numerics_forced_on_cpu(spec, monkeypatch, amp_dtype):
    """Mixed precision and channels-last tiles (GPU only) forced on CPU: the cached maps come from
    the autocast trunk, are kept in float16 and feed the head; the run saves finite float32 weights."""
    import engine.train.precision

    monkeypatch.setattr(engine.train.precision, "autocast_dtype", lambda spec, device, dtype: amp_dtype)
    monkeypatch.setattr(engine.train.precision, "use_channels_last", lambda spec, device: True)
    folder = Path(spec.out_dir) / CACHE_FOLDER
    dtypes = []
    rec = Recorder(on_save=lambda e: dtypes.extend(np.load(p)["map"].dtype for p in folder.glob("*.npz")))
    run_training(dataclasses.replace(spec, epochs=2, freeze_trunk_epochs=1), rec)
    assert dtypes and set(dtypes) == {np.dtype(np.float16)}
    losses = rec.losses()
    assert len(losses) == 8 and all(np.isfinite(losses))
    model, _ = load_checkpoint(Path(spec.out_dir) / "last")
    assert all(torch.isfinite(v).all() and v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
