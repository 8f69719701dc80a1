"""k-fold cross-validation: patients never straddle folds, folds are seeded, every fold is a run,
and the summary gives the mean and spread of each metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_fixtures import write_task_set

from engine.errors import LabelsError, SpecError
from engine.io.labels import read_labels
from engine.specs import TrainingSpec
from engine.train.folds import assign_folds, run_folds, summarise


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
    return write_task_set(tmp_path_factory.mktemp("folds"), n=12, size=64)


def test_a_patients_slides_share_one_fold_and_folds_are_seeded(tasks_csv):
    labels = read_labels(tasks_csv, task="regression", targets=["green"])
    folds = assign_folds(labels, 3, seed=0)
    by_patient = {}
    for r, f in zip(labels.records, folds, strict=True):
        by_patient.setdefault(r.patient, set()).add(f)
    assert all(len(s) == 1 for s in by_patient.values()) and len(by_patient) == 6
    assert sorted(folds.count(f) for f in range(3)) == [4, 4, 4]
    assert assign_folds(labels, 3, seed=0) == folds
    assert any(assign_folds(labels, 3, seed=s) != folds for s in range(1, 5))
    with pytest.raises(LabelsError, match="7 folds need at least 7 patients"):
        assign_folds(labels, 7, seed=0)


def test_classification_folds_mix_the_classes(tasks_csv):
    labels = read_labels(tasks_csv, targets=["has_blue"])  # 0/1 classes, two slides per patient
    for seed in range(4):
        folds = assign_folds(labels, 3, seed=seed)  # three patients of each class: one of each per fold
        for f in range(3):
            assert sorted(r.label for r, g in zip(labels.records, folds, strict=True) if g == f) == [0, 0, 1, 1]


def test_every_fold_is_a_run_and_the_summary_has_mean_and_spread(tasks_csv, tmp_path):
    spec = TrainingSpec(labels=str(tasks_csv), out_dir=str(tmp_path / "cv"), model="smallnet",
                        model_kwargs={"width": 4}, input_size=64, tile_size=64, epochs=1, device="cpu",
                        task="regression", targets=("green",), monitor="spearman", folds=3, augment=False,
                        calibrate_norms=1)
    done = run_folds(spec, lambda e: None)
    assert not done.cancelled and set(done.outputs) == {"fold-0", "fold-1", "fold-2", "summary"}
    held_out = []
    for k in range(3):
        fold = Path(done.outputs[f"fold-{k}"])
        assert (fold / "last" / "model.json").exists() and json.loads((fold / "spec.json").read_text())["folds"] == 1
        fold_labels = read_labels(fold / "labels.csv", task="regression", targets=["green"])
        val = {r.patient for r in fold_labels.records if r.split == "val"}
        train = {r.patient for r in fold_labels.records if r.split == "train"}
        assert val and train and not (val & train)
        held_out += [r.path for r in fold_labels.records if r.split == "val"]
    assert len(held_out) == len(set(held_out)) == 12  # each slide held out exactly once
    summary = json.loads(Path(done.outputs["summary"]).read_text())
    assert summary["folds"] == 3 and summary["grouping"] == "patient"
    assert len(summary["metrics"]["loss"]["values"]) == 3 and summary["metrics"]["loss"]["std"] is not None


def test_summary_mean_and_sample_std_by_hand():
    s = summarise([{"auc": 0.8, "loss": 1.0}, {"auc": 0.6, "loss": float("nan")}, {"auc": 0.7}])["metrics"]
    assert s["auc"]["mean"] == pytest.approx(0.7) and s["auc"]["std"] == pytest.approx(0.1)
    assert s["loss"] == {"mean": 1.0, "std": None, "values": [1.0]}


def test_the_trainer_refuses_folds_and_points_to_run_folds(tasks_csv, tmp_path):
    from engine.train.loop import Trainer

    spec = TrainingSpec(labels=str(tasks_csv), out_dir=str(tmp_path), folds=2, device="cpu")
    with pytest.raises(SpecError, match="run_folds"):
        Trainer(spec, lambda e: None, None)


def test_the_validation_split_deals_whole_patients(tasks_csv):
    from engine.train.data import split_records

    labels = read_labels(tasks_csv, task="regression", targets=["green"])
    for seed in range(5):
        train, val = split_records(labels, 0.34, seed)
        assert len(train) + len(val) == 12 and len(val) == 4  # round(0.34 * 6 patients) = 2 patients
        assert not ({r.patient for r in train} & {r.patient for r in val})


def test_the_training_commands_task_options_become_spec_fields():
    import argparse

    from engine.train.cli import add_task_arguments, task_fields

    p = argparse.ArgumentParser()
    add_task_arguments(p)
    assert task_fields(p.parse_args([])) == {"task": "classification", "targets": None, "loss": "mse", "folds": 1,
                                             "monitor": "auc"}
    fields = task_fields(p.parse_args(["--task", "regression", "--targets", "ki67, grade", "--folds", "5",
                                       "--loss", "huber"]))
    assert fields == {"task": "regression", "targets": ("ki67", "grade"), "loss": "huber", "folds": 5,
                      "monitor": "spearman"}
    TrainingSpec(labels="x", out_dir="y", **fields)  # valid as given
    assert task_fields(p.parse_args(["--task", "multilabel", "--monitor", "loss"]))["monitor"] == "loss"


def test_the_train_command_runs_folds_of_a_regression(tasks_csv, tmp_path, capsys):
    from engine.cli import main
    from engine.io.checkpoints import read_model_card

    rc = main(["train", "--labels", str(tasks_csv), "--out", str(tmp_path / "cv"), "--model", "smallnet",
               "--model-arg", "width=4", "--input-size", "64", "--tile", "64", "--epochs", "1", "--device", "cpu",
               "--task", "regression", "--targets", "green", "--loss", "huber", "--folds", "2", "--no-augment"])
    out = capsys.readouterr().out
    assert rc == 0 and "spearman=" in out and "summary" in out
    card = read_model_card(tmp_path / "cv" / "fold-1" / "last")
    assert card.task == "regression" and card.targets == ("green",)
    assert json.loads((tmp_path / "cv" / "fold-0" / "spec.json").read_text())["monitor"] == "spearman"
