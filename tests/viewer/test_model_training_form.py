"""viewer.model.training_form and viewer.model.labels: the spec a form makes, what it refuses,
and the label table the slide browser writes (no Qt)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from viewer.model.inference import ModelChoice
from viewer.model.labels import LabelTable
from viewer.model.training_form import TrainingForm, checkpoint_weights, labels_summary
from viewer.model.workspace import RecentFiles
from viewer.workers.training_files import write_labels_csv


def form_for(tmp_path, **fields) -> TrainingForm:
    form = TrainingForm()
    form.set(run_dir=str(tmp_path / "runs" / "run-1"), **fields)
    return form


def test_the_spec_takes_the_form_then_advanced_fields(tmp_path):
    form = form_for(tmp_path, model="smallnet", input_by="level", input_value=0.0, input_size=96, tile_size=64,
                    epochs=2, lr=3e-3, device="cpu")
    form.advanced = {"model_kwargs": {"width": 4}, "normalization_std": (0.25, 0.25, 0.25)}
    spec = form.build_spec("labels.csv", ModelChoice(RecentFiles()))
    assert (spec.labels, spec.out_dir, spec.model, spec.level, spec.mpp) == ("labels.csv", str(tmp_path / "runs" / "run-1"), "smallnet", 0, None)
    assert (spec.input_size, spec.tile_size, spec.epochs, spec.lr, spec.device) == (96, 64, 2, 3e-3, "cpu")
    assert spec.model_kwargs == {"width": 4} and spec.normalization_std == (0.25, 0.25, 0.25) and spec.pretrained is None
    form.set(input_by="µm/px", input_value=0.5, input_size=0)
    spec = form.build_spec("labels.csv", ModelChoice(RecentFiles()))
    assert (spec.level, spec.mpp, spec.input_size) == (None, 0.5, None)  # 0: each slide's own size


def test_starting_from_the_loaded_model_takes_its_architecture_and_weights(tmp_path):
    form = form_for(tmp_path, base="loaded")
    loaded = ModelChoice(RecentFiles())
    with pytest.raises(ValueError, match="no model is loaded"):
        form.build_spec("labels.csv", loaded)
    card = SimpleNamespace(architecture="resnet18", split="stage3", pool="avg", model_kwargs={"width": 8})
    loaded.loaded(str(tmp_path / "model" / "model.json"), card)
    form.advanced = {"model_kwargs": {"width": 4}}
    spec = form.build_spec("labels.csv", loaded)
    assert (spec.model, spec.split, spec.pool, spec.head, spec.model_kwargs) == ("resnet18", "stage3", "avg", "avg", {"width": 8})
    assert spec.pretrained == str(tmp_path / "model" / "model.safetensors")


def test_imagenet_weights_must_be_chosen(tmp_path):
    form = form_for(tmp_path, base="imagenet")
    with pytest.raises(ValueError, match="ImageNet weights"):
        form.build_spec("labels.csv", ModelChoice(RecentFiles()))
    form.set(weights=" /w/resnet34.pth ")
    assert form.build_spec("labels.csv", ModelChoice(RecentFiles())).pretrained == "/w/resnet34.pth"


def test_labels_come_from_the_csv_or_from_two_browser_classes(tmp_path):
    form, table = form_for(tmp_path), LabelTable()
    table.set_labels([tmp_path / "a.svs"], "benign")
    with pytest.raises(ValueError, match="at least two classes"):
        form.labels_file(table)
    table.set_labels([tmp_path / "b.svs"], "tumour")
    assert form.labels_file(table) == str(tmp_path / "runs" / "run-1" / "labels.csv")
    form.set(labels_source="csv")
    with pytest.raises(ValueError, match="import a labels CSV"):
        form.labels_file(table)
    form.set(csv_path="/data/labels.csv")
    assert form.labels_file(table) == "/data/labels.csv"


def test_the_registry_list_keeps_the_chosen_architecture_when_it_is_listed():
    form = TrainingForm()
    form.set(model="smallnet")
    form.set_architectures(["resnet18", "smallnet"])
    assert form.architectures == ("resnet18", "smallnet") and form.model == "smallnet"
    form.set_architectures(["vit"])
    assert form.model == "vit"


def test_busy_states_and_helpers(tmp_path):
    form = TrainingForm()
    assert not form.busy
    form.set(state="stopping")
    assert form.busy
    (tmp_path / "best").mkdir()
    assert checkpoint_weights(str(tmp_path / "best")) == str(tmp_path / "best" / "model.safetensors")
    assert checkpoint_weights("/runs/r/best/model.json") == "/runs/r/best/model.safetensors"
    assert labels_summary("x.csv", {"a": "b", "c": "t", "d": "t"}, ("b", "t")) == "x.csv: 3 slides · b (1), t (2)"


def test_the_label_table_notifies_and_writes_paths_relative_to_its_csv(tmp_path):
    table, changes = LabelTable(), []
    table.changed.connect(lambda: changes.append(len(table)))
    slides = [tmp_path / "slides" / f"{n}.svs" for n in ("a", "b", "c")]
    table.set_labels(slides[:2], "benign")
    table.set_labels(slides[2:], " tumour ")
    table.set_labels(slides[:1], "")  # blank: unlabelled
    assert changes == [2, 3, 2] and table.classes == ["benign", "tumour"] and table.get(slides[2]) == "tumour"
    table.replace({str(slides[0]): "tumour"})
    assert changes[-1] == 1 and table.items() == [(str(slides[0].resolve()), "tumour")]
    out = write_labels_csv(tmp_path / "run" / "labels.csv", table.items())
    with open(out, newline="") as f:
        assert list(csv.reader(f)) == [["slide", "label"], [str(Path("..") / "slides" / "a.svs"), "tumour"]]


def test_starting_from_a_loaded_attention_model_keeps_its_head_and_arguments(tmp_path):
    form = form_for(tmp_path, base="loaded", head="max")
    loaded = ModelChoice(RecentFiles())
    card = SimpleNamespace(architecture="smallnet", split="stage4", pool="max", model_kwargs={},
                           head="attention", head_kwargs={"hidden": 32})
    loaded.loaded(str(tmp_path / "model" / "model.json"), card)
    spec = form.build_spec("labels.csv", loaded)
    assert (spec.head_name, spec.head_kwargs) == ("attention", {"hidden": 32})
