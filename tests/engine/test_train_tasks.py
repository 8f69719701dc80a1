"""Regression and multilabel training reach a clear signal on tiny synthetic slides; the card
records the task, the targets and the standardisation, and old cards still load as classification."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import write_task_set

from engine.api import run_training
from engine.errors import SpecError
from engine.events import Metrics
from engine.io.checkpoints import load_checkpoint, read_model_card
from engine.specs import TrainingSpec

SIZE = 64  # one 64-px tile: these tests are about the tasks, test_train_loop about streaming



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a shared, loaded machine OpenMP's
    spinning threads made these runs 7x slower (measured: 49 s against 6.7 s for 24 steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(scope="module")
def tasks_csv(tmp_path_factory):
    return write_task_set(tmp_path_factory.mktemp("tasks"), n=12, size=SIZE)


def spec_for(tasks_csv, tmp_path, **kw):
    base = dict(labels=str(tasks_csv), out_dir=str(tmp_path / "run"), model="smallnet", model_kwargs={"width": 8},
                input_size=SIZE, tile_size=64, epochs=6, lr=5e-3, val_fraction=0.0, augment=False,
                normalization_mean=(0.5, 0.5, 0.5), normalization_std=(0.25, 0.25, 0.25), device="cpu", seed=0)
    base.update(kw)
    return TrainingSpec(**base)


def train_outputs(model_dir, labels, card):
    """The trained model's outputs on each training slide, through the task of its card."""
    import torch

    from engine.train.classifier import Classifier
    from engine.train.data import Augmentation, InputSpec, input_source, read_slide_input
    from engine.train.tasks import task_from_card

    model, card = load_checkpoint(model_dir)
    net = Classifier(model, streaming=True, tile_size=64).eval()
    task = task_from_card(card)
    out = []
    with torch.no_grad():
        for r in labels.records:
            rgb = read_slide_input(r.path, InputSpec(size=SIZE))
            out.append(task.outputs(net(input_source(rgb, Augmentation(), card.normalization_mean,
                                                     card.normalization_std))))
    return np.array(out)


def test_regression_learns_the_green_fraction_and_reports_it_in_its_units(tasks_csv, tmp_path):
    from engine.io.labels import read_labels
    from engine.metrics import spearman

    events = []
    spec = spec_for(tasks_csv, tmp_path, task="regression", targets=("green",), monitor="spearman", loss="huber",
                    pool="avg")
    done = run_training(spec, events.append)
    assert not done.cancelled
    losses = [e.values["loss"] for e in events if isinstance(e, Metrics) and e.phase == "train"]
    assert np.mean(losses[-12:]) < np.mean(losses[:12]) / 2
    card = read_model_card(done.outputs["last"])
    labels = read_labels(tasks_csv, task="regression", targets=["green"])
    truth = np.array([r.values[0] for r in labels.records])
    assert card.task == "regression" and card.targets == ("green",) == card.classes
    assert card.target_mean == pytest.approx((truth.mean(),)) and card.target_std == pytest.approx((truth.std(),))
    pred = train_outputs(done.outputs["last"], labels, card)[:, 0]
    assert spearman(pred, truth) > 0.8
    assert abs(pred.mean() - truth.mean()) < 0.2  # in the target's units, not standardised


def test_multilabel_learns_both_labels(tasks_csv, tmp_path):
    from engine.io.labels import read_labels
    from engine.metrics import roc_auc

    spec = spec_for(tasks_csv, tmp_path, task="multilabel", targets=("has_green", "has_blue"),
                    class_weights="balanced", monitor="macro_auc", epochs=10)
    done = run_training(spec, lambda e: None)
    card = read_model_card(done.outputs["last"])
    assert card.task == "multilabel" and card.classes == ("has_green", "has_blue") and card.target_mean is None
    labels = read_labels(tasks_csv, task="multilabel", targets=card.targets)
    probs = train_outputs(done.outputs["last"], labels, card)
    truth = np.array([r.values for r in labels.records]) > 0.5
    assert probs.shape == (12, 2) and ((probs >= 0) & (probs <= 1)).all()
    assert roc_auc(probs[:, 0], truth[:, 0]) > 0.9 and roc_auc(probs[:, 1], truth[:, 1]) > 0.9


def test_validation_reports_the_task_metrics(tasks_csv, tmp_path):
    events = []
    spec = spec_for(tasks_csv, tmp_path, task="regression", monitor="mae", epochs=1, val_fraction=0.34,
                    model_kwargs={"width": 4})
    run_training(spec, events.append)
    val = [e.values for e in events if isinstance(e, Metrics) and e.phase == "val"]
    # All three columns are targets: per-target values too.
    assert {"loss", "spearman", "pearson", "mae", "r2", "mae_green", "r2_has_blue"} <= set(val[0])
    assert (tmp_path / "run" / "best").exists()  # mae is lower-is-better and finite: best saved


@pytest.mark.parametrize("kw, message", [
    (dict(task="regression"), "monitor 'auc' does not apply to regression"),
    (dict(task="classification", monitor="spearman"), "monitor 'spearman' does not apply to classification"),
    (dict(task="ordinal"), "task 'ordinal' is not one of"),
    (dict(task="regression", monitor="r2", loss="l1"), "loss 'l1' is not one of mse, huber"),
    (dict(targets=("a", "b")), "classification trains one label column"),
    (dict(task="regression", monitor="r2", class_weights="balanced"), "class_weights apply to classification"),
    (dict(folds=0), "folds must be at least 1"),
])
def test_task_fields_are_validated(kw, message):
    with pytest.raises(SpecError, match=message):
        TrainingSpec(labels="x.csv", out_dir="out", **kw)


def test_the_demo_model_card_loads_as_classification_unchanged():
    from engine.api import demo_model_dir

    path = demo_model_dir() / "model.json"
    raw = json.loads(path.read_text())
    card = read_model_card(path)
    assert card.task == "classification" and card.targets == () and card.target_mean is None
    assert "task" not in raw and card.to_json() == raw  # a classification card is written as before
    model, loaded = load_checkpoint(demo_model_dir())
    assert loaded == card


def test_a_regression_card_refuses_a_missing_standardisation():
    from engine.errors import CheckpointError
    from engine.io.model_card import ModelCard

    with pytest.raises(CheckpointError, match="target_std"):
        ModelCard(architecture="smallnet", classes=("y",), split="stage4", task="regression", targets=("y",),
                  target_mean=(0.0,))
    card = ModelCard(architecture="smallnet", classes=("y",), split="stage4", task="regression", targets=("y",),
                     target_mean=(2.0,), target_std=(0.5,))
    assert ModelCard.from_json(json.loads(json.dumps(card.to_json()))) == card
    assert card.to_units(np.array([[1.0], [-2.0]])).tolist() == [[2.5], [1.0]]


def test_training_reports_merged_labels_as_a_warning(tmp_path):
    from train_fixtures import write_training_set

    from engine.events import JobWarning

    csv_path = write_training_set(tmp_path / "s", n_per_class=2, size=64)
    text = csv_path.read_text().replace("tumour_1.svs,tumour", "tumour_1.svs,Tumour ")
    csv_path.write_text(text)
    events = []
    spec = TrainingSpec(labels=str(csv_path), out_dir=str(tmp_path / "run"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=64, tile_size=64, epochs=1, device="cpu",
                        calibrate_norms=1)
    run_training(spec, events.append)
    warnings = [e for e in events if isinstance(e, JobWarning)]
    assert len(warnings) == 1 and "'Tumour ' (" in warnings[0].message and warnings[0].subject == str(csv_path)
    assert read_model_card(tmp_path / "run" / "last").classes == ("benign", "tumour")


def test_task_losses_weights_and_standardisation_by_hand(tasks_csv):
    import torch

    from engine.io.labels import read_labels
    from engine.train.data import split_records
    from engine.train.tasks import build_task

    spec = TrainingSpec(labels=str(tasks_csv), out_dir="o", task="multilabel", monitor="auc",
                        class_weights="balanced", val_fraction=0.34)
    labels = read_labels(tasks_csv, task="multilabel", targets=["has_green", "has_blue"])
    train, val = split_records(labels, spec.val_fraction, spec.seed)
    task = build_task(spec, labels, train)
    pos = [sum(r.values[i] for r in train) for i in range(2)]
    assert task.weights == [pytest.approx((len(train) - p) / p) for p in pos]
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    w = task.weights
    p = torch.sigmoid(logits)[0]
    by_hand = -(w[0] * torch.log(p[0]) + torch.log(1 - p[1])) / 2  # target (1, 0)
    assert float(task.loss(logits, (1.0, 0.0))) == pytest.approx(float(by_hand))

    rlabels = read_labels(tasks_csv, task="regression", targets=["green"])
    rtrain, rval = split_records(rlabels, 0.34, 0)
    rspec = TrainingSpec(labels=str(tasks_csv), out_dir="o", task="regression", monitor="r2", loss="mse")
    rtask = build_task(rspec, rlabels, rtrain)
    values = np.array([r.values[0] for r in rtrain])
    assert rtask.mean == pytest.approx((values.mean(),)) and rtask.std == pytest.approx((values.std(),))
    assert rtask.mean != pytest.approx((np.mean([r.values[0] for r in rlabels.records]),))  # validation unseen
    out = torch.tensor([[0.5]], dtype=torch.float64)
    y = rtrain[0].values
    z = (y[0] - rtask.mean[0]) / rtask.std[0]
    assert float(rtask.loss(out, y)) == pytest.approx((0.5 - z) ** 2)
    assert rtask.outputs(out) == [pytest.approx(0.5 * rtask.std[0] + rtask.mean[0])]
