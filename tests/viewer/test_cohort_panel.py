"""The Cohort panel in the main window, driven by qtbot with the real engine on a tiny synthetic
cohort (the hand-set green detector; one slide unreadable): the queued job, the table filled and
sorted, the ROC curve, cancel, and a double-clicked slide opened with its kept maps and no new
inference job."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from model_fixtures import save_green_detector, write_test_slide
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest

from engine.events import Progress
from viewer.model.layers import PREDICTION
from viewer.workers.evaluation import engine_evaluation_runner


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    model = save_green_detector(root / "model", tile_size=64)
    rows = ["slide,label,patient"]
    for i, boxes in enumerate([((16, 16, 64, 64),), (), ((100, 40, 140, 80),), ()]):
        write_test_slide(root / f"s{i}.svs", boxes=boxes, size=(192, 160))
        rows.append(f"s{i}.svs,{'green' if boxes else 'other'},p{i}")
    (root / "broken.svs").write_bytes(b"not a slide at all")
    rows.append("broken.svs,other,p9")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return root, str(model)


def make_window(qtbot, tmp_path, evaluation_runner=engine_evaluation_runner):
    from viewer.main_window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, cache_bytes=64 * 2**20, popups=False, evaluation_runner=evaluation_runner)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    win.show_cohort()
    qtbot.waitExposed(win)
    win.cohort_form.set(out_root=str(tmp_path / "evaluations"))
    return win


def load_model(qtbot, win, model: str) -> None:
    with qtbot.waitSignal(win.live.card_loaded, timeout=30_000):
        win.live.load_model(model)


def run_cohort(qtbot, win, csv: Path, until=("done",)) -> None:
    win.cohort.use_csv(str(csv))
    qtbot.mouseClick(win.cohort_panel.evaluate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: win.cohort_form.state in until, timeout=60_000)


def test_the_job_fills_the_table_and_plot_and_a_row_reopens_with_its_kept_maps(qtbot, tmp_path, cohort):
    root, model = cohort
    win = make_window(qtbot, tmp_path)
    try:
        load_model(qtbot, win, model)
        run_cohort(qtbot, win, root / "test.csv")
        panel = win.cohort_panel
        assert panel.model.rowCount() == 4 and not win.errors
        # The unreadable slide is reported; the other four are shown.
        assert "broken.svs" in panel.failed.text() and not panel.failed.isHidden()
        assert panel.summary.text().startswith("4 slides · AUC 1.000")
        assert panel.progress_bar.value() == 5 and win.cohort_form.progress_text.startswith("Done")
        # Sorted by the header: slide names ascending, then errors descending.
        panel.table_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        names = [panel.model.index(r, 0).data() for r in range(4)]
        assert names == ["s0.svs", "s1.svs", "s2.svs", "s3.svs"]
        panel.table_view.sortByColumn(4, Qt.SortOrder.DescendingOrder)
        errors = [float(panel.model.index(r, 4).data()) for r in range(4)]
        assert errors == sorted(errors, reverse=True)
        assert [panel.model.index(r, 2).data() for r in range(4)] == [panel.model.index(r, 3).data() for r in range(4)]
        # The ROC of the positive class, drawn from the folder's predictions.
        assert len(panel.plot.items) == 1 and "AUC 1.000" in panel.plot.items[0].name()
        xs, ys = panel.plot.items[0].getData()
        assert xs[0] == 0 and ys[-1] == 1

        # Double-click s2: the slide opens with its kept maps, and no inference job is queued.
        queued = []
        win.live.jobs.job_queued.connect(queued.append)
        panel.table_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        rect = panel.table_view.visualRect(panel.model.index(2, 0))
        with qtbot.waitSignal(win.cohort.maps_opened, timeout=30_000) as opened:
            # A press and release first: Qt's view takes a double-click as the second click of a pair.
            QTest.mouseClick(panel.table_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            QTest.mouseDClick(panel.table_view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        slide, npz = opened.args
        assert Path(slide).name == "s2.svs" and npz.endswith("maps/s2/maps.npz")
        qtbot.waitUntil(lambda: win.live.stack is not None and
                        any(k.source == PREDICTION for k in win.live.stack.layers), timeout=30_000)
        assert win.workspace.current.key == slide and queued == []
    finally:
        win.shutdown()


def test_cancel_stops_the_job_and_shows_the_slides_done(qtbot, tmp_path, cohort):
    root, model = cohort
    cancel_pressed = threading.Event()

    def runner(spec, on_event, token):
        """The real evaluation; after its first slide the worker waits for the user's Cancel."""
        def relay(event):
            on_event(event)
            if isinstance(event, Progress) and event.done == 1:
                assert cancel_pressed.wait(60)  # worker thread: hold the job where the test can cancel it
        return engine_evaluation_runner(spec, relay, token)

    win = make_window(qtbot, tmp_path, runner)
    cancel = win.cohort.jobs.cancel

    def cancel_and_release():
        cancel()
        cancel_pressed.set()

    win.cohort.jobs.cancel = cancel_and_release
    try:
        load_model(qtbot, win, model)
        run_cohort(qtbot, win, root / "test.csv", until=("running",))
        qtbot.waitUntil(lambda: "1 of 5 slides" in win.cohort_form.progress_text, timeout=60_000)
        assert win.cohort_panel.cancel_button.isEnabled() and not win.cohort_panel.evaluate_button.isEnabled()
        qtbot.mouseClick(win.cohort_panel.cancel_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: win.cohort_form.state == "cancelled", timeout=60_000)
        assert win.cohort_panel.model.rowCount() == 1 and win.cohort.files.metrics["cancelled"] is True
        assert win.cohort_panel.evaluate_button.isEnabled() and win.cohort_form.progress_text.startswith("Cancelled")
    finally:
        win.shutdown()


def test_cancel_while_the_browser_labels_are_written_starts_no_job(qtbot, tmp_path, cohort):
    root, model = cohort
    win = make_window(qtbot, tmp_path)
    try:
        load_model(qtbot, win, model)
        win.labels.set_labels([str(root / "s0.svs")], "green")
        win.labels.set_labels([str(root / "s1.svs")], "other")
        win.cohort.use_browser()
        written = []  # the labels job, held: the user presses Cancel before it ends
        win.cohort.background.submit = lambda fn, *args, on_done, on_error: written.append((fn, args, on_done))
        started = []
        win.cohort.jobs.start = started.append
        qtbot.mouseClick(win.cohort_panel.evaluate_button, Qt.MouseButton.LeftButton)
        assert written and win.cohort_form.state == "running"
        qtbot.mouseClick(win.cohort_panel.cancel_button, Qt.MouseButton.LeftButton)
        assert win.cohort_form.state == "cancelled"
        fn, args, on_done = written[0]
        on_done(fn(*args))  # the labels are written after all
        assert started == [] and win.cohort_panel.evaluate_button.isEnabled()
    finally:
        win.shutdown()


def test_evaluate_without_a_model_says_what_to_do(qtbot, tmp_path, cohort):
    root, _ = cohort
    win = make_window(qtbot, tmp_path)
    try:
        win.cohort.use_csv(str(root / "test.csv"))
        qtbot.mouseClick(win.cohort_panel.evaluate_button, Qt.MouseButton.LeftButton)
        assert win.errors and "load a model in the Model panel" in win.errors[-1]
        assert win.cohort_form.state == "idle"
    finally:
        win.shutdown()
