"""The graph budget in the training form and panel: typed, validated, in the spec, and the plan
(tile, blocks kept, estimated peak) computed on a worker and shown before Start."""

from __future__ import annotations

import pytest
from dict_store import DictStore
from fake_training import FakeTrainRunner

from engine.errors import SpecError
from viewer.controllers.fine_tuning import FineTuning
from viewer.controllers.live_maps import LiveMaps
from viewer.model.inference import InferenceSettings, ModelChoice
from viewer.model.labels import LabelTable
from viewer.model.training_form import NO_PLAN, TrainingForm, plan_text
from viewer.model.workspace import RecentFiles, Workspace
from viewer.widgets.training_panel import TrainingPanel


def test_the_typed_budget_goes_into_the_spec():
    form = TrainingForm()
    form.set(run_dir="/tmp/run")
    assert form.build_spec("l.csv", ModelChoice(RecentFiles())).graph_budget is None
    for text, want in (("2G", 2 * 2**30), ("512m", 512 * 2**20), ("auto", "auto")):
        form.set(graph_budget=text)
        assert form.build_spec("l.csv", ModelChoice(RecentFiles())).graph_budget == want
    form.set(graph_budget="plenty")
    with pytest.raises(SpecError):
        form.build_spec("l.csv", ModelChoice(RecentFiles()))


def test_plan_text_names_tile_blocks_kept_and_peak():
    text = plan_text({"streaming": True, "in_hw": (4096, 4096), "device": "cpu", "graph_budget": 2**30,
                      "tile": (1024, 1024), "blocks": 25, "kept": 9, "recomputed": 16, "whole_image": False,
                      "estimated_peak_bytes": 900 * 2**20})
    assert "tile 1024×1024" in text and "25 blocks" in text and "9 of 25 kept" in text
    assert "16 recomputed" in text and "budget 1.0 GiB" in text and "900 MiB" in text


@pytest.fixture
def setup(qtbot, tmp_path):
    errors: list[str] = []
    form, table = TrainingForm(), LabelTable()
    live = LiveMaps(Workspace(RecentFiles()), InferenceSettings(), ModelChoice(RecentFiles()), errors.append)
    runner = FakeTrainRunner()
    training = FineTuning(form, table, live, errors.append, DictStore({"training/runs_folder": str(tmp_path)}), runner)
    form.advanced = {"model_kwargs": {"width": 4}}  # not a shown field
    form.set(model="smallnet", input_by="level", input_value=0.0, input_size=96, tile_size=64, device="cpu")
    try:
        panel = TrainingPanel(form)
        qtbot.addWidget(panel)
        panel.plan_button.clicked.connect(training.show_plan)
        yield form, panel, training
    finally:
        runner.release.set()
        training.shutdown()
        live.shutdown()


def test_the_panel_shows_the_plan_computed_off_the_ui_thread(qtbot, setup):
    form, panel, training = setup
    assert panel.plan_label.text() == NO_PLAN
    panel.graph_budget.setText("1G")
    assert form.graph_budget == "1G"
    panel.plan_button.click()
    qtbot.waitUntil(lambda: "computing" not in panel.plan_label.text(), timeout=120000)
    assert "estimated peak" in panel.plan_label.text(), panel.plan_label.text()
    assert "whole input as one block" in panel.plan_label.text() and "96×96" in panel.plan_label.text()
    panel.graph_budget.setText("0")
    panel.plan_button.click()
    qtbot.waitUntil(lambda: "computing" not in panel.plan_label.text(), timeout=120000)
    assert "0 of" in panel.plan_label.text(), panel.plan_label.text()
    panel.graph_budget.setText("lots")
    panel.plan_button.click()
    assert "lots" in panel.plan_label.text()  # refused on the spot, no worker


def test_without_an_input_size_or_csv_the_plan_says_what_it_needs(qtbot, setup):
    form, panel, _ = setup
    form.set(input_size=0)
    panel.plan_button.click()
    assert "input size" in panel.plan_label.text()
