"""The Training dock: the form, the live curves, the run's status and the runs list side by
side, bound to a fine-tuning controller; and the question asked when the window closes while a
run is going."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QScrollArea, QSplitter, QWidget

from engine.events import Metrics
from viewer.model.training_form import CLOSE_BACKGROUND, CLOSE_CANCEL, CLOSE_STAY, TrainingForm
from viewer.widgets.runs_list import RunsList
from viewer.widgets.training_curves import TrainingCurves
from viewer.widgets.training_panel import TrainingPanel
from viewer.widgets.training_status import TrainingStatus


def ask_close_while_training(parent: QWidget) -> str:
    """Ask what to do with a running training job when the window closes (tests patch this)."""
    box = QMessageBox(QMessageBox.Icon.Question, "Training is running",
                      "A training run is still going. Closing stops the viewer.", parent=parent)
    box.setInformativeText("Cancel it (the last checkpoint is saved at the next step), or keep it "
                           "running with the window hidden until it finishes?")
    cancel = box.addButton("Cancel and save", QMessageBox.ButtonRole.DestructiveRole)
    keep = box.addButton("Keep running until done", QMessageBox.ButtonRole.AcceptRole)
    stay = box.addButton("Don't close", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(stay)
    box.exec()
    return {cancel: CLOSE_CANCEL, keep: CLOSE_BACKGROUND}.get(box.clickedButton(), CLOSE_STAY)


class TrainingDock(QSplitter):
    """Form | curves | status over the runs list. :meth:`bind` ties it to the controller."""

    def __init__(self, form: TrainingForm, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.panel = TrainingPanel(form)
        self.curves = TrainingCurves()
        self.status = TrainingStatus()
        self.runs_list = RunsList()
        scroll = QScrollArea()
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(500)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.status)
        side.addWidget(self.runs_list)
        for w in (scroll, self.curves, side):
            self.addWidget(w)
        self.setStretchFactor(1, 1)
        self.setSizes([500, 420, 300])

    def bind(self, training) -> None:
        """Buttons and lists ask ``training`` (a :class:`viewer.controllers.fine_tuning.FineTuning`);
        its signals fill the curves, the status and the runs list."""
        p, runs = self.panel, self.runs_list
        p.start_button.clicked.connect(training.start)
        p.pause_button.clicked.connect(training.pause)
        p.resume_button.clicked.connect(training.resume)
        p.cancel_button.clicked.connect(training.cancel)
        p.saliency_now.clicked.connect(training.saliency_now)
        p.plan_button.clicked.connect(training.show_plan)
        p.import_csv_requested.connect(training.import_csv)
        p.save_csv_requested.connect(training.save_labels)
        p.model.first_popup.connect(training.load_model_names)
        runs.refresh_requested.connect(training.refresh_runs)
        runs.folder_chosen.connect(training.set_runs_folder)
        runs.reopen_requested.connect(training.reopen)
        training.runs_listed.connect(runs.set_runs)
        training.curves_reset.connect(self.curves.clear)
        training.curves_read.connect(lambda _path, curves: self.curves.set_curves(curves.train, curves.val))
        training.run_begun.connect(lambda run, text: self.status.begin(text, run.spec.epochs, run.spec.input_size))
        training.run_begun.connect(lambda run, _text: self.curves.set_monitor(run.spec.monitor))
        training.progress.connect(lambda run, progress: self.status.show_progress(progress, run.spec.accumulate))
        training.metrics.connect(self._on_metrics)
        training.status_text.connect(self.status.state.setText)
        training.run_ended.connect(self._on_run_ended)

    def _on_metrics(self, _run, m: Metrics) -> None:
        if m.phase == "train":
            self.curves.add_train(m.step, m.values.get("loss", float("nan")))
            self.status.set_epoch(m.epoch)
            self.status.show_loss(m.values.get("loss", float("nan")), m.values.get("lr", float("nan")))
        else:
            self.curves.add_val(m.epoch, m.step, m.values)
            self.status.show_validation(m.values)

    def _on_run_ended(self, _run, text: str, complete: bool) -> None:
        self.curves.flush()  # the redraw timer may still hold the run's last steps
        self.status.end(text, complete)
