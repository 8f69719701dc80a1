"""viewer.controllers.fine_tuning without any widget: runs start from the training form model
and the label table, the form shows the run's state, pause/resume/cancel, the runs folder, and
the close-while-training answers. The runner is a fake of ``run_training``'s shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from dict_store import DictStore
from fake_training import FakeTrainRunner

from viewer.controllers.fine_tuning import FineTuning
from viewer.controllers.live_maps import LiveMaps
from viewer.model.inference import InferenceSettings, ModelChoice
from viewer.model.labels import LabelTable
from viewer.model.training_form import CLOSE_BACKGROUND, CLOSE_CANCEL, CLOSE_STAY, TrainingForm
from viewer.model.workspace import RecentFiles, Workspace


class Harness:
    def __init__(self, tmp_path, runner) -> None:
        self.store = DictStore({"training/runs_folder": str(tmp_path / "runs")})
        self.errors: list[str] = []
        self.form, self.table = TrainingForm(), LabelTable()
        self.live = LiveMaps(Workspace(RecentFiles()), InferenceSettings(), ModelChoice(RecentFiles()), self.errors.append)
        self.training = FineTuning(self.form, self.table, self.live, self.errors.append, self.store, runner)
        self.form.set(model="smallnet", input_by="level", input_value=0.0, input_size=96, tile_size=64, epochs=1, device="cpu")

    def label_slides(self, folder: Path) -> list[Path]:
        slides = [folder / f"{label}_{i}.svs" for label in ("benign", "tumour") for i in range(2)]
        for label in ("benign", "tumour"):
            self.table.set_labels([s for s in slides if s.name.startswith(label)], label)
        self.training.on_browser_labels()
        return slides

    def shutdown(self) -> None:
        self.training.shutdown()
        self.live.shutdown()


@pytest.fixture
def runner():
    runner = FakeTrainRunner()
    yield runner
    runner.release.set()


@pytest.fixture
def harness(qtbot, tmp_path, runner):
    h = Harness(tmp_path, runner)
    yield h
    h.shutdown()


def test_the_form_starts_in_a_new_run_folder_under_the_runs_folder(harness, tmp_path):
    assert Path(harness.form.run_dir).parent == tmp_path / "runs" and harness.form.state == "idle"


def test_nothing_starts_without_labels_of_two_classes(qtbot, harness, runner):
    harness.table.set_labels(["/s/a.svs"], "benign")
    harness.training.start()
    assert "Cannot start training: label slides of at least two classes" in harness.errors[-1]
    assert not harness.training.active and harness.form.state == "idle" and not runner.specs


def test_browser_labels_are_written_to_the_run_folder_and_the_form_follows_the_run(qtbot, harness, runner, tmp_path):
    slides = harness.label_slides(tmp_path / "slides")
    assert harness.form.labels_source == "browser" and harness.form.labels_summary.startswith("Slide browser: 4 slides")
    states = []
    harness.form.changed.connect(lambda name: name == "state" and states.append(harness.form.state))
    with qtbot.waitSignal(harness.training.jobs.metrics, timeout=10_000):
        harness.training.start()
    spec = runner.specs[-1]
    assert spec.labels == str(Path(harness.form.run_dir) / "labels.csv") and spec.model == "smallnet"
    assert (spec.level, spec.mpp, spec.input_size, spec.tile_size, spec.device) == (0, None, 96, 64, "cpu")
    with open(spec.labels, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["slide", "label"] and len(rows) == 1 + len(slides)
    assert states == ["stopping", "running"]  # "stopping" while the labels file was written
    with qtbot.waitSignal(harness.training.run_finished, timeout=10_000) as finished:
        harness.training.cancel()
    assert finished.args[0].state == "cancelled" and harness.form.state == "cancelled" and states[-2:] == ["stopping", "cancelled"]


def test_pause_then_resume_runs_the_same_spec_from_its_checkpoint(qtbot, harness, runner, tmp_path):
    harness.label_slides(tmp_path / "slides")
    texts = []
    harness.training.status_text.connect(texts.append)
    with qtbot.waitSignal(harness.training.jobs.metrics, timeout=10_000):
        harness.training.start()
    with qtbot.waitSignal(harness.training.run_finished, timeout=10_000) as paused:
        harness.training.pause()
    assert paused.args[0].state == "paused" and harness.form.state == "paused" and texts[-1].startswith("Pausing")
    with qtbot.waitSignal(harness.training.jobs.metrics, timeout=10_000):
        harness.training.resume()
    assert runner.specs[-1].resume and runner.specs[-1].out_dir == runner.specs[0].out_dir
    assert harness.form.state == "running"
    with qtbot.waitSignal(harness.training.run_finished, timeout=10_000) as done:
        runner.release.set()
    assert done.args[0].state == "done" and harness.form.state == "done"


@pytest.mark.parametrize("answer", [CLOSE_STAY, CLOSE_CANCEL, CLOSE_BACKGROUND])
def test_closing_while_training_does_what_the_user_answered(qtbot, harness, runner, tmp_path, answer):
    assert harness.training.close_requested(lambda: pytest.fail("nothing runs: no question"), None, None)
    harness.label_slides(tmp_path / "slides")
    with qtbot.waitSignal(harness.training.jobs.metrics, timeout=10_000):
        harness.training.start()
    events = []
    may_close = harness.training.close_requested(lambda: answer, lambda: events.append("hide"), lambda: events.append("close"))
    assert not may_close
    if answer == CLOSE_STAY:
        assert events == [] and harness.training.active
        return
    if answer == CLOSE_BACKGROUND:
        assert events == ["hide"] and harness.training.active
        runner.release.set()
    qtbot.waitUntil(lambda: events[-1:] == ["close"], timeout=10_000)
    assert not harness.training.active


def test_a_runs_folder_is_remembered_and_listed(qtbot, harness, tmp_path):
    other = tmp_path / "elsewhere"
    (other / "old-run").mkdir(parents=True)
    (other / "old-run" / "spec.json").write_text(json.dumps({"model": "smallnet", "epochs": 3}))
    # The runs folder read at start-up may still be listed: wait for the new one's.
    with qtbot.waitSignal(harness.training.runs_listed, timeout=10_000, check_params_cb=lambda f, _: f == str(other)) as listed:
        harness.training.set_runs_folder(str(other))
    folder, runs = listed.args
    assert folder == str(other) and [r.name for r in runs] == ["old-run"]
    assert harness.store.values["training/runs_folder"] == str(other) and Path(harness.form.run_dir).parent == other
    harness.form.set(run_dir="/my/own/run")
    harness.training.set_runs_folder(str(tmp_path / "third"))
    assert harness.form.run_dir == "/my/own/run"  # a folder the user typed stays


def test_a_saliency_checkpoint_runs_on_the_view_with_saliency_on(qtbot, harness):
    harness.training.saliency_now()
    assert harness.errors[-1].startswith("No checkpoint yet")
    harness.live.settings.set(saliency=False)
    texts = []
    harness.training.status_text.connect(texts.append)
    harness.training.show_saliency("/runs/r/last")
    assert texts[-1].startswith("No slide on screen") and not harness.live.settings.saliency
