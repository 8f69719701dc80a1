"""The training dock in the main window, driven through its widgets: a real short run end to
end (curves, per-epoch saliency, the model in the model panel, the runs list), pause/resume,
cancel, bad labels, browser labels, and the close-while-training question (with a fake runner
of ``run_training``'s shape). (The controller alone: test_fine_tuning_controller.py.)"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from fake_training import FakeTrainRunner
from PySide6.QtCore import QSettings, QTimer
from train_fixtures import write_training_set

from engine.events import Metrics
from viewer.model.layers import SALIENCY
from viewer.model.training_form import CLOSE_BACKGROUND, CLOSE_CANCEL, CLOSE_STAY
from viewer.widgets import training_dock

# smallnet width 4 (receptive field 45 px): a 64-px tile cuts the 96² inputs into 4 tiles.
ADVANCED = {"model_kwargs": {"width": 4}, "normalization_mean": (0.5, 0.5, 0.5),
            "normalization_std": (0.25, 0.25, 0.25)}


@pytest.fixture(scope="module")
def labels_csv(tmp_path_factory):
    # 3 slides per class, 1 of each for validation: 4 training steps and 2 validation slides an epoch.
    return write_training_set(tmp_path_factory.mktemp("train-slides"), n_per_class=3, size=96, val_per_class=1)


def make_window(qtbot, tmp_path, train_runner=None):
    from viewer.main_window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("training/runs_folder", str(tmp_path / "runs"))
    kwargs = {"train_runner": train_runner} if train_runner else {}
    win = MainWindow(settings=settings, cache_bytes=64 * 2**20, popups=False, **kwargs)
    qtbot.addWidget(win)
    win.resize(1600, 1000)
    win.show()
    win.show_training()
    qtbot.waitExposed(win)
    return win


def fill_form(win, epochs=2):
    """Fill the form through its widgets, as a user would; returns the controller."""
    win.training_form.advanced = dict(ADVANCED)
    p = win.training_view.panel
    p.model.setCurrentText("smallnet")
    p.input_by.setCurrentText("level")
    p.input_value.setValue(0)
    p.input_size.setValue(96)
    p.tile_size.setValue(64)
    p.epochs.setValue(epochs)
    p.lr.setValue(3e-3)
    p.device.setCurrentText("cpu")
    return win.training


def import_labels(qtbot, ft, path):
    with qtbot.waitSignal(ft.labels_imported, timeout=10_000):
        ft.import_csv(str(path))


def train_steps(win):
    return list(win.training_view.curves.train_steps)


def test_panel_drives_a_real_run_end_to_end(qtbot, tmp_path, labels_csv):
    win = make_window(qtbot, tmp_path)
    ft, ui = fill_form(win), win.training_view
    try:
        with qtbot.waitSignal(win.slides.slide_shown, timeout=10_000):
            win.slides.show_or_open(str(labels_csv.parent / "tumour_0.svs"))
        import_labels(qtbot, ft, labels_csv)
        assert "6 slides" in ui.panel.labels_summary.text()
        ui.panel.update_saliency.setChecked(True)
        saliency_runs, progress = [], []
        ft.saliency_started.connect(saliency_runs.append)
        ft.jobs.progress.connect(lambda run, p: progress.append(p))
        ticks: list[float] = []
        probe = QTimer(interval=5)
        probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
        probe.start()
        with qtbot.waitSignal(ft.run_finished, timeout=180_000) as done:
            ui.panel.start_button.click()
            assert not ui.panel.start_button.isEnabled() and ui.panel.pause_button.isEnabled()
        probe.stop()
        worst_ms = max(np.diff(ticks)) * 1000
        print(f"\nworst event-loop stall during a real training run (+ per-epoch saliency): {worst_ms:.1f} ms")
        run, finished = done.args
        assert run.state == "done" and not finished.cancelled and not win.errors
        # 2 epochs of 4 steps, one validation each: every step and epoch is on the curves.
        assert train_steps(win) == list(range(8)) and [r["epoch"] for r in ui.curves.val_rows] == [0, 1]
        assert ui.curves.train_item.getData()[0] is not None and len(ui.curves.train_item.getData()[0]) == 8
        assert {p.phase for p in progress} == {"train", "val"}
        assert "slides/s" in ui.status.fields["Throughput"].text()
        assert "MiB" in ui.status.fields["Memory"].text() or "GiB" in ui.status.fields["Memory"].text()
        assert ui.status.state.text().startswith("Finished") and ui.panel.start_button.isEnabled()
        # The finished model lands in the model panel, ready for the overlay workflow.
        best = finished.outputs.get("best") or finished.outputs["last"]
        qtbot.waitUntil(lambda: win.model.path == best, timeout=20_000)
        assert win.model.card.classes == ("benign", "tumour")
        assert win.model_panel.card_fields["Classes"].text() == "benign, tumour" and win.model_panel.slide_button.isEnabled()
        # One saliency run per epoch on the slide on screen, each with that epoch's checkpoint.
        assert len(saliency_runs) == 2 and all(p.endswith("last") for p in saliency_runs)
        qtbot.waitUntil(lambda: win.live.jobs.running is None and not win.live.jobs.queued, timeout=60_000)
        qtbot.waitUntil(lambda: SALIENCY in (win.live.stack.layers if win.live.stack else {}), timeout=10_000)
        # What the model learns is what the user sees: the saliency layer is shown and selected.
        stack = win.live.stack
        assert stack.active == SALIENCY and stack.style_for(SALIENCY).visible
        assert not any(stack.style_for(key).visible for key in stack.layers if key != SALIENCY)
        assert win.overlay_panel.current_key == SALIENCY
        # The runs list shows it with its final metrics; reopening loads its curves and model.
        qtbot.waitUntil(lambda: any(r.path == run.spec.out_dir for r in ui.runs_list.runs), timeout=10_000)
        summary = next(r for r in ui.runs_list.runs if r.path == run.spec.out_dir)
        assert summary.epochs_done == 2 and summary.steps == 8 and "auc" in summary.val
        ui.curves.clear()
        with qtbot.waitSignal(ft.curves_loaded, timeout=10_000):
            ft.reopen(summary)
        assert train_steps(win) == list(range(8)) and len(ui.curves.val_rows) == 2
        assert ui.status.state.text() == f"Reopened {summary.name}"
        # A bound for gross regressions only (a loaded 2-core machine's scheduler alone adds
        # hundreds of ms); the printed figure is the measurement.
        assert worst_ms < 1500
    finally:
        win.shutdown()


def test_pause_then_resume_continues_exactly_and_finishes(qtbot, tmp_path, labels_csv):
    win = make_window(qtbot, tmp_path)
    ft, panel = fill_form(win), win.training_view.panel
    try:
        import_labels(qtbot, ft, labels_csv)

        def pause_after_first_step(run, m: Metrics):
            if m.phase == "train" and m.step == 0 and panel.pause_button.isEnabled():
                panel.pause_button.click()

        ft.jobs.metrics.connect(pause_after_first_step)
        with qtbot.waitSignal(ft.run_finished, timeout=120_000) as paused:
            panel.start_button.click()
        run, finished = paused.args
        assert run.state == "paused" and finished.cancelled
        assert (Path(run.spec.out_dir) / "last" / "model.json").exists()
        assert panel.resume_button.isEnabled() and not panel.pause_button.isEnabled()
        assert "Resume" in win.training_view.status.state.text()
        steps_before = train_steps(win)
        assert steps_before and steps_before[0] == 0 and len(steps_before) < 8
        ft.jobs.metrics.disconnect(pause_after_first_step)
        with qtbot.waitSignal(ft.run_finished, timeout=120_000) as resumed:
            panel.resume_button.click()
        run2, finished2 = resumed.args
        assert run2.spec.resume and run2.spec.out_dir == run.spec.out_dir
        assert run2.state == "done" and not finished2.cancelled
        assert train_steps(win) == list(range(8))  # continued where it stopped, no step twice
        assert not win.errors
    finally:
        win.shutdown()


def test_cancel_saves_the_last_checkpoint(qtbot, tmp_path, labels_csv):
    win = make_window(qtbot, tmp_path)
    ft, panel = fill_form(win, epochs=1), win.training_view.panel
    try:
        import_labels(qtbot, ft, labels_csv)

        def cancel_after_first_step(run, m: Metrics):
            if m.phase == "train" and panel.cancel_button.isEnabled():
                panel.cancel_button.click()

        ft.jobs.metrics.connect(cancel_after_first_step)
        with qtbot.waitSignal(ft.run_finished, timeout=120_000) as blocker:
            panel.start_button.click()
        run, finished = blocker.args
        assert run.state == "cancelled" and finished.cancelled
        assert (Path(finished.outputs["last"]) / "model.json").exists()
        assert panel.start_button.isEnabled() and panel.resume_button.isEnabled()
        assert "Cancelled" in win.training_view.status.state.text()
    finally:
        win.shutdown()


def test_a_bad_labels_csv_is_reported_and_nothing_starts(qtbot, tmp_path, labels_csv):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nbenign_0.svs,benign\n")
    win = make_window(qtbot, tmp_path)
    ft, panel = fill_form(win), win.training_view.panel
    try:
        with qtbot.waitSignal(win.error_reported, timeout=10_000):
            ft.import_csv(str(bad))
        assert "header" in win.errors[-1] and "not imported" in panel.labels_summary.text()
        panel.labels_source.setCurrentIndex(1)  # CSV mode, but none was imported
        assert win.training_form.use_csv
        panel.start_button.click()
        assert "import a labels CSV" in win.errors[-1] and not ft.active and panel.start_button.isEnabled()
        missing = tmp_path / "missing.csv"
        missing.write_text("slide,label\nnowhere.svs,benign\nnowhere2.svs,tumour\n")
        with qtbot.waitSignal(win.error_reported, timeout=10_000):
            ft.import_csv(str(missing))
        assert "not found" in win.errors[-1]
    finally:
        win.shutdown()


@pytest.fixture
def fake_runner():
    runner = FakeTrainRunner()
    yield runner
    runner.release.set()  # never leave a worker running


def start_fake(qtbot, win, tmp_path, labels_csv):
    ft = fill_form(win)
    import_labels(qtbot, ft, labels_csv)
    with qtbot.waitSignal(ft.jobs.metrics, timeout=10_000):
        win.training_view.panel.start_button.click()
    return ft


@pytest.mark.parametrize("answer", [CLOSE_STAY, CLOSE_CANCEL, CLOSE_BACKGROUND])
def test_closing_while_training_asks(qtbot, tmp_path, labels_csv, fake_runner, monkeypatch, answer):
    asked = []
    monkeypatch.setattr(training_dock, "ask_close_while_training", lambda parent: asked.append(parent) or answer)
    win = make_window(qtbot, tmp_path, fake_runner)
    try:
        ft = start_fake(qtbot, win, tmp_path, labels_csv)
        assert not win.close() and asked == [win]
        if answer == CLOSE_STAY:
            assert win.isVisible() and ft.active and not win.is_shut_down
            return
        if answer == CLOSE_CANCEL:
            with qtbot.waitSignal(ft.run_finished, timeout=10_000) as blocker:
                pass
            assert blocker.args[0].state == "cancelled"
        else:
            assert not win.isVisible() and ft.active and not win.is_shut_down
            with qtbot.waitSignal(ft.run_finished, timeout=10_000) as blocker:
                fake_runner.release.set()
            assert blocker.args[0].state == "done"
        qtbot.waitUntil(lambda: win.is_shut_down, timeout=5_000)  # the window closed itself once the run ended
        assert len(asked) == 1
    finally:
        win.shutdown()


def test_browser_labels_are_written_relative_to_the_run_csv(qtbot, tmp_path, labels_csv, fake_runner):
    win = make_window(qtbot, tmp_path, fake_runner)
    ft, panel = fill_form(win), win.training_view.panel
    try:
        win.browser.set_folder(labels_csv.parent)
        slides = sorted(labels_csv.parent.glob("*.svs"))
        win.labeller.set_label([str(p) for p in slides if p.name.startswith("benign")], "benign")
        win.labeller.set_label([str(p) for p in slides if p.name.startswith("tumour")], "tumour")
        assert win.browser.item_for(str(slides[0])).text(3) == "benign"
        assert "Slide browser: 6 slides" in panel.labels_summary.text() and panel.labels_source.currentIndex() == 0
        with qtbot.waitSignal(ft.jobs.metrics, timeout=10_000):
            panel.start_button.click()
        spec = fake_runner.specs[-1]
        assert spec.labels == str(Path(spec.out_dir) / "labels.csv") and spec.model == "smallnet"
        assert spec.model_kwargs == {"width": 4} and spec.input_size == 96 and spec.level == 0 and spec.mpp is None
        with open(spec.labels, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["slide", "label"] and len(rows) == 7
        for slide, label in rows[1:]:
            assert not Path(slide).is_absolute()
            assert (Path(spec.labels).parent / slide).resolve().name.startswith(label)
        with qtbot.waitSignal(ft.run_finished, timeout=10_000):
            panel.cancel_button.click()
    finally:
        win.shutdown()


def test_choosing_a_runs_folder_lists_its_runs_and_is_remembered(qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    other = tmp_path / "elsewhere"
    (other / "old-run").mkdir(parents=True)
    (other / "old-run" / "spec.json").write_text(json.dumps({"model": "smallnet", "epochs": 3}))
    (other / "old-run" / "metrics.jsonl").write_text(
        json.dumps({"phase": "train", "epoch": 0, "step": 0, "loss": 0.7, "lr": 0.001}) + "\n"
        + json.dumps({"phase": "val", "epoch": 0, "step": 1, "loss": 0.6, "accuracy": 0.5, "auc": 0.75}) + "\n")
    win = make_window(qtbot, tmp_path)
    try:
        ui = win.training_view
        assert Path(ui.panel.run_dir.text()).parent == tmp_path / "runs"
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(other))
        ui.runs_list.folder_button.click()
        qtbot.waitUntil(lambda: [r.name for r in ui.runs_list.runs] == ["old-run"], timeout=10_000)
        assert str(other) in ui.runs_list.folder_label.text() and ui.runs_list.runs[0].val["auc"] == 0.75
        assert Path(ui.panel.run_dir.text()).parent == other  # the next run goes there too
        assert win.settings.value("training/runs_folder") == str(other)
    finally:
        win.shutdown()
