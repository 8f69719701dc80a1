"""The validation split, slide inputs, augmentation as index transforms, prefetching, AUC, atomic state."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from train_fixtures import write_training_set

from engine import cli
from engine.io.labels import read_labels
from engine.io.training_state import find_checkpoint, load_training_state, save_training_state
from engine.metrics import classification_metrics, roc_auc
from engine.models import create_model
from engine.slides import open_slide
from engine.train.data import Augmentation, InputSpec, Prefetcher, input_source, read_slide_input, split_records


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("slides"), n_per_class=2, size=96).parent


def write(path, text):
    path.write_text(text)
    return path


def test_class_folders_and_a_seeded_stratified_split(tmp_path):
    for cls in ("a", "b"):
        write_training_set(tmp_path / cls, n_per_class=3, size=64)
        (tmp_path / cls / "labels.csv").unlink()
    labels = read_labels(tmp_path, classes=("b", "a"))
    assert labels.classes == ("b", "a") and labels.counts() == [6, 6]
    train, val = split_records(labels, 1 / 3, seed=5)
    assert sorted(r.label for r in val) == [0, 0, 1, 1] and len(train) == 8
    assert split_records(labels, 1 / 3, seed=5)[1] == val


def test_inputs_are_padded_or_cropped_to_size_with_background(slides):
    path = slides / "benign_0.svs"
    whole = read_slide_input(path, InputSpec(tissue_crop=False))
    assert whole.shape == (96, 96, 3) and whole.dtype == np.uint8
    padded = read_slide_input(path, InputSpec(size=128, tissue_crop=False))
    with open_slide(path) as slide:
        background = slide.background_rgb  # padding is what the slide says lies outside it
    assert padded.shape == (128, 128, 3) and (padded[:16] == background).all()
    np.testing.assert_array_equal(padded[16:112, 16:112], whole)
    cropped = read_slide_input(path, InputSpec(size=64, tissue_crop=False), np.random.default_rng(0))
    assert cropped.shape == (64, 64, 3)
    offsets = [(y, x) for y, x in itertools.product(range(33), repeat=2)
               if np.array_equal(whole[y:y + 64, x:x + 64], cropped)]
    assert offsets


@pytest.mark.parametrize("rot90, flip", [(0, False), (1, False), (2, True), (3, True)])
def test_augmented_tiles_equal_the_augmented_whole_input(rot90, flip):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    aug = Augmentation(rot90=rot90, flip=flip, gain=(1.1, 0.9, 1.0), bias=(0.02, -0.01, 0.0))
    src = input_source(rgb, aug, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), dtype=torch.float64)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].double() / 255
    x = torch.rot90(x, rot90, dims=(2, 3))
    x = torch.flip(x, dims=(3,)) if flip else x
    gain, bias = torch.tensor(aug.gain).view(1, 3, 1, 1), torch.tensor(aug.bias).view(1, 3, 1, 1)
    mean, std = torch.tensor((0.5, 0.4, 0.3)).view(1, 3, 1, 1), torch.tensor((0.2, 0.25, 0.3)).view(1, 3, 1, 1)
    expected = ((x * gain + bias) - mean) / std
    assert src.shape == tuple(expected.shape)
    torch.testing.assert_close(src.read((5, 17), (3, 30)), expected[:, :, 5:17, 3:30])


def test_prefetcher_keeps_order_and_reraises_errors():
    def job(i):
        if i == 3:
            raise OSError("disk gone")
        return i

    with Prefetcher([lambda i=i: job(i) for i in range(6)], depth=2) as pf:
        seen = []
        with pytest.raises(OSError, match="disk gone"):
            for v in pf:
                seen.append(v)
    assert seen == [0, 1, 2]


def test_prefetcher_close_stops_a_producer_that_is_ahead():
    pf = Prefetcher((lambda i=i: i for i in itertools.count()), depth=2)
    assert next(iter(pf)) == 0
    pf.close()
    assert not pf._thread.is_alive()


def test_roc_auc_matches_counting_pairs():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    positive = rng.random(40) < 0.4
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in scores[positive] for n in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1]])
    m = classification_metrics(probs, np.array([0, 1, 2, 0]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert m == pytest.approx({"loss": 0.25, "accuracy": 1.0, "auc": 1.0})


def test_a_crash_between_the_renames_leaves_the_old_checkpoint_recoverable(tmp_path):
    from engine.io.checkpoints import ModelCard

    model = create_model("smallnet", width=4, num_classes=2)
    card = ModelCard(architecture="smallnet", classes=("a", "b"), split="stage4", model_kwargs={"width": 4})
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    opt.step()
    save_training_state(tmp_path / "last", model, card, optimizer=opt, counters={"step": 1})
    os.replace(tmp_path / "last", tmp_path / ".last.old")  # as if killed after the first rename
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last"
    fresh = create_model("smallnet", width=4, num_classes=2)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    assert load_training_state(tmp_path / "last", fresh, optimizer=opt2) == {"step": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    buf = [s["momentum_buffer"] for s in opt2.state_dict()["state"].values()]
    assert all(torch.equal(a, b)
               for a, b in zip(buf, [s["momentum_buffer"] for s in opt.state_dict()["state"].values()], strict=True))


def test_cli_train_writes_checkpoints_and_a_metrics_log(slides, tmp_path, capsys):
    labels = write(slides / "no_splits.csv", "slide,label\n" + "".join(
        f"{c}_{i}.svs,{c}\n" for c in ("benign", "tumour") for i in range(2)))
    code = cli.main(["train", "--labels", str(labels), "--model", "smallnet", "--model-arg", "width=4",
                     "--out", str(tmp_path / "run"), "--epochs", "1", "--tile", "64", "--input-size", "96",
                     "--val-fraction", "0.5", "--device", "cpu"])
    assert code == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "epoch 1 validation: loss=" in out and "saved last checkpoint" in out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # two training steps (half of the slides go to validation), one validation
    assert cli.main(["train", "--labels", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")]) == cli.EXIT_USAGE
