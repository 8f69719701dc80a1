"""The training panel's research-loop fields (task, targets, head, tissue mask, frozen-trunk
epochs): the TrainingSpec they make, the SpecError shown before Start, the CSV's columns as
targets, and the curves of the run's monitored metric."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt

from engine.specs import HEADS
from viewer.model.inference import ModelChoice
from viewer.model.training_form import TrainingForm
from viewer.model.workspace import RecentFiles
from viewer.widgets.training_curves import TrainingCurves
from viewer.widgets.training_panel import TrainingPanel


@pytest.fixture
def panel(qtbot, tmp_path):
    form = TrainingForm()
    form.set(run_dir=str(tmp_path / "run"), model="smallnet", device="cpu")
    panel = TrainingPanel(form)
    qtbot.addWidget(panel)
    # What the fine-tuning controller does on every change (viewer.controllers.fine_tuning._recheck).
    form.changed.connect(lambda name: name == "spec_problem" or form.set(spec_problem=form.check(ModelChoice(RecentFiles()))))
    return panel


def spec_of(panel):
    return panel.form.build_spec("labels.csv", ModelChoice(RecentFiles()))


def test_each_new_field_reaches_the_spec_through_its_widget(panel):
    panel.form.set_columns(("density", "grade"))
    panel.task.setCurrentText("regression")
    assert spec_of(panel).task == "regression" and spec_of(panel).monitor == "spearman"
    panel.targets.item(1).setCheckState(Qt.CheckState.Unchecked)  # the user unticks "grade"
    assert spec_of(panel).targets == ("density",)
    for head in HEADS:
        panel.head.setCurrentText(head)
        assert spec_of(panel).head_name == head
    panel.tissue_mask.setChecked(False)
    assert spec_of(panel).tissue_mask == "none"
    panel.tissue_mask.setChecked(True)
    assert spec_of(panel).tissue_mask == "auto"
    assert not panel.finetune_lr.isEnabled() and not panel.finetune_tile.isEnabled()  # no frozen epochs
    panel.freeze_trunk_epochs.setValue(2)
    assert panel.finetune_lr.isEnabled() and panel.finetune_tile.isEnabled()
    panel.finetune_lr.setValue(2e-5)
    panel.finetune_tile.setValue(512)
    spec = spec_of(panel)
    assert (spec.freeze_trunk_epochs, spec.finetune_lr, spec.finetune_tile) == (2, 2e-5, 512)
    panel.finetune_lr.setValue(0.0)  # "same as lr"
    panel.finetune_tile.setValue(0)  # "same tile"
    assert (spec_of(panel).finetune_lr, spec_of(panel).finetune_tile) == (None, None)


def test_the_trunk_lr_and_tile_are_left_out_without_frozen_epochs(panel):
    panel.freeze_trunk_epochs.setValue(1)
    panel.finetune_lr.setValue(2e-5)
    panel.finetune_tile.setValue(512)
    panel.freeze_trunk_epochs.setValue(0)  # they apply after frozen epochs: now there are none
    spec = spec_of(panel)
    assert (spec.freeze_trunk_epochs, spec.finetune_lr, spec.finetune_tile) == (0, None, None)
    assert not panel.spec_problem.text() and panel.start_button.isEnabled()
    assert not panel.finetune_lr.isEnabled() and not panel.finetune_tile.isEnabled()


def test_a_classification_takes_the_label_column_and_refuses_two_targets_before_start(panel):
    panel.form.set_columns(("grade", "label"))
    assert panel.form.targets == ("label",) and spec_of(panel).monitor == "auc"
    assert [panel.targets.item(i).checkState() for i in range(2)] == [Qt.CheckState.Unchecked, Qt.CheckState.Checked]
    assert panel.start_button.isEnabled() and not panel.spec_problem.text()
    panel.targets.item(0).setCheckState(Qt.CheckState.Checked)
    assert "classification trains one label column, targets names 2: grade, label" in panel.spec_problem.text()
    assert not panel.start_button.isEnabled() and not panel.spec_problem.isHidden()
    panel.task.setCurrentText("multilabel")  # two 0/1 columns: a valid combination
    assert panel.spec_problem.text() == "" and panel.start_button.isEnabled()
    assert spec_of(panel).monitor == "macro_auc" and spec_of(panel).targets == ("grade", "label")


def test_a_bad_value_shows_the_spec_error_text(panel):
    panel.form.set(freeze_trunk_epochs=1, finetune_lr=-1.0)  # the spin box cannot go there; the form may
    assert panel.spec_problem.text().startswith("finetune_lr must be a positive learning rate")
    assert not panel.start_button.isEnabled()


def test_the_validation_curve_is_the_monitored_metric_named_on_its_axis(qtbot):
    curves = TrainingCurves()
    qtbot.addWidget(curves)
    curves.set_monitor("spearman")
    curves.add_val(0, 4, {"loss": 0.5, "spearman": 0.25, "pearson": 0.9})
    curves.add_val(1, 8, {"loss": 0.4, "spearman": 0.5, "pearson": 0.8})
    curves.flush()
    assert list(curves.monitor_item.getData()[1]) == [0.25, 0.5]
    assert "Spearman" in curves.metric_plot.getAxis("left").labelText
    assert curves.metric_plot.getViewBox().viewRange()[1][0] < -0.9  # ρ runs from -1
    # A reopened regression run: its rows say what it monitored.
    curves.set_monitor("auc")
    curves.set_curves([], [{"epoch": 0, "step": 4, "spearman": 0.7}])
    assert curves.monitor == "spearman" and np.allclose(curves.monitor_item.getData()[1], [0.7])


def test_starting_from_the_loaded_model_locks_the_head_choice(panel):
    assert panel.head.isEnabled()
    panel.form.set(base="loaded")
    assert not panel.head.isEnabled() and "loaded model" in panel.head.toolTip()
    panel.form.set(base="random")
    assert panel.head.isEnabled()
