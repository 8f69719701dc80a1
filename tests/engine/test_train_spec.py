"""A training spec refuses, when it is made, values that cannot run: SpecError naming the field."""

from __future__ import annotations

import dataclasses

import pytest

from engine.devices import resolve_device
from engine.errors import SpecError
from engine.specs import TrainingSpec
from engine.train.optim import class_weights

BASE = TrainingSpec(labels="labels.csv", out_dir="run")


@pytest.mark.parametrize("field_name, value, message", [
    ("optimizer", "adam", "optimizer 'adam' is not one of sgd, adamw"),
    ("schedule", "step", "schedule 'step' is not one of cosine, constant"),
    ("monitor", "f1", "monitor 'f1' is not one of auc, accuracy, loss"),
    ("dtype", "float16", "dtype 'float16' is not one of float32, float64"),
    ("epochs", 0, "epochs must be at least 1, got 0"),
    ("accumulate", 0, "accumulate must be at least 1"),
    ("tile_size", -1, "tile_size must be at least 1"),
    ("max_nonfinite", 0, "max_nonfinite must be at least 1"),
    ("val_fraction", 1.0, r"val_fraction must be in \[0, 1\), got 1.0"),
    ("class_weights", "inverse", "class_weights must be None, 'balanced' or one number per class"),
])
def test_impossible_values_are_refused_naming_the_field(field_name, value, message):
    with pytest.raises(SpecError, match=message) as err:
        dataclasses.replace(BASE, **{field_name: value})
    assert isinstance(err.value, ValueError)  # callers that caught ValueError still do


def test_the_choices_live_on_the_spec_and_every_default_is_one_of_them():
    assert BASE.optimizer in TrainingSpec.OPTIMIZERS and BASE.schedule in TrainingSpec.SCHEDULES
    assert BASE.monitor in TrainingSpec.MONITORS and BASE.dtype in TrainingSpec.DTYPES
    assert set(TrainingSpec.MONITORS_LOWER_IS_BETTER) <= set(TrainingSpec.MONITORS)
    assert "OPTIMIZERS" not in {f.name for f in dataclasses.fields(TrainingSpec)}  # not a field


def test_the_spec_as_json_keeps_every_field_as_json_values():
    d = BASE.as_json()
    assert set(d) == {f.name for f in dataclasses.fields(TrainingSpec)}
    assert d["normalization_mean"] == [0.485, 0.456, 0.406] and d["model_kwargs"] == {}


def test_class_weights_are_checked_against_the_classes_of_the_data():
    assert class_weights(dataclasses.replace(BASE, class_weights="balanced"), [3, 1]) == [4 / 6, 4 / 2]
    assert class_weights(dataclasses.replace(BASE, class_weights=(1.0, 2.0)), [3, 1]) == [1.0, 2.0]
    with pytest.raises(SpecError, match="class_weights has 3 values for 2 classes"):
        class_weights(dataclasses.replace(BASE, class_weights=(1.0, 2.0, 3.0)), [3, 1])


def test_unknown_devices_are_spec_errors():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(SpecError, match="unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")


@pytest.mark.parametrize("head, kwargs, message", [
    ("attention", {"hidden": 0}, "hidden=0 must be an integer"),
    ("max", {"hidden": 8}, "head 'max' takes no argument hidden"),
    ("gem", {"p": -1.0}, "p=-1.0 must be a positive number")])
def test_head_arguments_are_checked_when_the_spec_is_made(head, kwargs, message):
    from engine.errors import SpecError

    with pytest.raises(SpecError, match=message):
        TrainingSpec(labels="l.csv", out_dir="o", head=head, head_kwargs=kwargs)
    assert TrainingSpec(labels="l.csv", out_dir="o", head="attention", head_kwargs={"hidden": 32}).head_kwargs == {"hidden": 32}
