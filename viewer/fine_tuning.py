"""Fine-tuning from the GUI, composed: the training form, live curves and status, the runs list,
labels from the slide browser, and the link to the model panel (finished models, saliency).

The main window creates one :class:`FineTuning`, docks :attr:`widget`, and asks
:meth:`close_requested` before closing. Training runs through :class:`viewer.training.TrainingController`
(the only door to ``run_training``); file work (labels, runs, curves, the model registry) runs on
a background worker; inference and saliency go through :class:`viewer.live_maps.LiveMaps`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QSettings, Qt, Signal
from PySide6.QtWidgets import QMainWindow, QMessageBox, QScrollArea, QSplitter, QWidget

from engine.events import CheckpointSaved, Finished, Metrics, Progress, StepSkipped
from engine.specs import TrainingSpec
from viewer.background import BackgroundRunner
from viewer.labels_table import LabelTable, read_labels_rows, write_labels_csv
from viewer.live_maps import LiveMaps
from viewer.runs import Curves, RunSummary, read_curves, scan_runs
from viewer.training import TrainingController, TrainingRun, TrainRunner, engine_train_runner
from viewer.widgets.browser_labels import BrowserLabeller
from viewer.widgets.runs_list import RunsList
from viewer.widgets.slide_browser import SlideBrowser
from viewer.widgets.training_curves import TrainingCurves
from viewer.widgets.training_panel import TrainingPanel
from viewer.widgets.training_status import TrainingStatus

DEFAULT_RUNS_FOLDER = Path.home() / "StreamSlide" / "runs"
#: Answers of the close-while-training question.
CLOSE_CANCEL, CLOSE_BACKGROUND, CLOSE_STAY = "cancel", "background", "stay"


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


def list_model_names() -> list[str]:
    """Worker job: the engine's registered architectures (imports torch, hence the worker)."""
    from engine.models import list_models

    return list(list_models())


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def checkpoint_weights(model_path: str) -> str:
    """The weights file of a checkpoint given as its folder, ``model.json`` or ``model.safetensors``."""
    path = Path(model_path)
    return str(path / "model.safetensors" if path.is_dir() else path.with_suffix(".safetensors"))


def labels_summary(source: str, rows: dict[str, str], classes: tuple[str, ...] | list[str]) -> str:
    counts = {c: 0 for c in classes}
    for label in rows.values():
        counts[label] = counts.get(label, 0) + 1
    return f"{source}: {len(rows)} slides · " + ", ".join(f"{c} ({n})" for c, n in counts.items())


class FineTuning(QObject):
    run_started = Signal(object)  # TrainingRun
    run_finished = Signal(object, object)  # TrainingRun, Finished
    run_failed = Signal(object, str)
    labels_imported = Signal(str)
    labels_saved = Signal(str)
    runs_listed = Signal(list)
    curves_loaded = Signal(str)
    saliency_started = Signal(str)  # the checkpoint whose saliency map is being computed

    def __init__(self, live: LiveMaps, browser: SlideBrowser, report_error: Callable[[str], None],
                 settings: QSettings, runner: TrainRunner = engine_train_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.live, self.report_error, self.settings = live, report_error, settings
        self.controller = TrainingController(runner, parent=self)
        self.background = BackgroundRunner(workers=1, parent=self)
        self.table = LabelTable()
        self.labeller = BrowserLabeller(browser, self.table, parent=self)
        #: Spec fields the form does not show (normalisation, augmentation, model kwargs, ...).
        self.advanced: dict = {}
        self.runs_folder = Path(str(settings.value("training/runs_folder", str(DEFAULT_RUNS_FOLDER))))
        self.latest_checkpoint: str | None = None
        self._steps_per_epoch: int | None = None
        self._saliency_pending: str | None = None
        self._close_when_done: QMainWindow | None = None

        self.panel = TrainingPanel()
        self.panel.run_dir.setText(str(self.runs_folder / new_run_name()))
        self.curves = TrainingCurves()
        self.status = TrainingStatus()
        self.runs_list = RunsList()
        form = QScrollArea()
        form.setWidget(self.panel)
        form.setWidgetResizable(True)
        form.setMinimumWidth(500)
        form.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.status)
        side.addWidget(self.runs_list)
        self.widget = QSplitter(Qt.Orientation.Horizontal)
        for w in (form, self.curves, side):
            self.widget.addWidget(w)
        self.widget.setStretchFactor(1, 1)
        self.widget.setSizes([500, 420, 300])

        p = self.panel
        p.start_button.clicked.connect(self.start)
        p.pause_button.clicked.connect(self.pause)
        p.resume_button.clicked.connect(self.resume)
        p.cancel_button.clicked.connect(self.cancel)
        p.saliency_now.clicked.connect(self.saliency_now)
        p.import_csv_requested.connect(self.import_csv)
        p.save_csv_requested.connect(self.save_labels)
        p.model.first_popup.connect(self.load_model_names)
        self.labeller.labels_changed.connect(self._on_browser_labels)
        self.runs_list.refresh_requested.connect(self.refresh_runs)
        self.runs_list.folder_chosen.connect(self.set_runs_folder)
        self.runs_list.reopen_requested.connect(self.reopen)
        c = self.controller
        c.progress.connect(self._on_progress)
        c.metrics.connect(self._on_metrics)
        c.checkpoint_saved.connect(self._on_checkpoint)
        c.step_skipped.connect(self._on_skipped)
        c.finished.connect(self._on_finished)
        c.failed.connect(self._on_failed)
        live.card_loaded.connect(self._on_card_loaded)
        self.refresh_runs()

    # -- labels ---------------------------------------------------------------------------------
    def import_csv(self, path: str) -> None:
        self.background.submit(read_labels_rows, path, on_done=self._on_csv_read, on_error=self._on_csv_error)

    def _on_csv_read(self, result: tuple[str, dict[str, str], tuple[str, ...]]) -> None:
        path, rows, classes = result
        self.table.replace(rows)  # the browser shows the imported labels too
        self.labeller.refresh()
        self.panel.set_csv(path, labels_summary(Path(path).name, rows, classes))
        self.labels_imported.emit(path)

    def _on_csv_error(self, message: str) -> None:
        self.panel.labels_summary.setText(f"Labels not imported: {message}")
        self.report_error(f"Could not import the labels.\n\n{message}")

    def _on_browser_labels(self) -> None:
        self.panel.labels_source.setCurrentIndex(0)
        rows = dict(self.table.items())
        self.panel.labels_summary.setText(labels_summary("Slide browser", rows, self.table.classes))

    def save_labels(self, path: str) -> None:
        self.background.submit(write_labels_csv, path, self.table.items(), on_done=self.labels_saved.emit,
                               on_error=self._on_labels_write_error)

    def _on_labels_write_error(self, message: str) -> None:
        self.report_error(f"Could not write the labels file.\n\n{message}")

    # -- the spec ---------------------------------------------------------------------------------
    def _base_model(self) -> dict:
        """Architecture fields and initial weights from the "start from" choice."""
        p = self.panel
        base = p.base.currentIndex()
        if base == 2:
            card = self.live.model_panel.card
            if card is None or self.live.model_panel.model_path is None:
                raise ValueError("no model is loaded in the Model panel; load one or choose another starting point")
            return {"model": card.architecture, "split": card.split, "pool": card.pool,
                    "model_kwargs": dict(card.model_kwargs or {}),
                    "pretrained": checkpoint_weights(self.live.model_panel.model_path)}
        fields = {"model": p.model.currentText().strip()}
        if base == 1:
            if not p.weights.text().strip():
                raise ValueError("choose the ImageNet weights file (a torchvision or timm state dict)")
            fields["pretrained"] = p.weights.text().strip()
        return fields

    def build_spec(self, labels: str) -> TrainingSpec:
        p = self.panel
        level, mpp = p.level_and_mpp()
        fields = {"labels": labels, "out_dir": p.run_dir.text().strip(), "level": level, "mpp": mpp,
                  "input_size": p.input_size.value() or None, "tile_size": p.tile_size.value(),
                  "epochs": p.epochs.value(), "lr": p.lr.value(), "device": p.device.currentText()}
        fields.update(self.advanced)
        fields.update(self._base_model())  # the loaded model's architecture wins over advanced kwargs
        return TrainingSpec(**fields)

    # -- running --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a new run from the form (a CSV's labels, or the browser's written to the run folder)."""
        if self.controller.active:
            return
        p = self.panel
        if not p.run_dir.text().strip():
            p.run_dir.setText(str(self.runs_folder / new_run_name()))
        try:
            if p.use_csv:
                if not p.csv_path:
                    raise ValueError("import a labels CSV first (or label slides in the slide browser)")
                spec = self.build_spec(p.csv_path)
            else:
                if len(self.table.classes) < 2:
                    raise ValueError("label slides of at least two classes in the slide browser "
                                     "(right-click a slide), or import a labels CSV")
                spec = self.build_spec(str(Path(p.run_dir.text().strip()) / "labels.csv"))
        except ValueError as exc:
            self.report_error(f"Cannot start training: {exc}")
            return
        p.set_state("stopping")  # nothing may start twice while the labels are being written
        if p.use_csv:
            self._launch(spec)
        else:
            self.background.submit(write_labels_csv, spec.labels, self.table.items(),
                                   on_done=lambda _path, spec=spec: self._launch(spec),
                                   on_error=self._on_labels_write_error_at_start)

    def _on_labels_write_error_at_start(self, message: str) -> None:
        self.panel.set_state("idle")
        self._on_labels_write_error(message)

    def _launch(self, spec: TrainingSpec) -> None:
        self.curves.clear()
        self._begin(self.controller.start(spec), "Training")

    def _begin(self, run: TrainingRun, verb: str) -> None:
        self._steps_per_epoch = None
        self.panel.set_state("running")
        self.status.begin(f"{verb} {Path(run.spec.out_dir).name} ({run.spec.model}, {run.spec.device})",
                          run.spec.epochs, run.spec.input_size)
        self.run_started.emit(run)

    def pause(self) -> None:
        self.controller.pause()
        self.panel.set_state("stopping")
        self.status.state.setText("Pausing: saving the last checkpoint at the next step…")

    def resume(self) -> None:
        run = self.controller.resume()
        if run is not None:
            self._begin(run, "Resumed")

    def cancel(self) -> None:
        self.controller.cancel()
        self.panel.set_state("stopping")
        self.status.state.setText("Cancelling: saving the last checkpoint at the next step…")

    # -- events ----------------------------------------------------------------------------------
    def _on_progress(self, run: TrainingRun, progress: Progress) -> None:
        if progress.phase == "train":
            self._steps_per_epoch = progress.total
        self.status.show_progress(progress, run.spec.accumulate)

    def _on_metrics(self, run: TrainingRun, m: Metrics) -> None:
        if m.phase == "train":
            self.curves.add_train(m.step, m.values.get("loss", float("nan")))
            self.status.set_epoch(m.epoch)
            self.status.show_loss(m.values.get("loss", float("nan")), m.values.get("lr", float("nan")))
        else:
            self.curves.add_val(m.epoch, m.step, m.values)
            self.status.show_validation(m.values)

    def _on_checkpoint(self, run: TrainingRun, saved: CheckpointSaved) -> None:
        self.latest_checkpoint = saved.path
        # The epoch-end "last" (step == epochs done x steps per epoch) of a run still running;
        # a pause or cancel also saves "last", but then there is nothing new to look at.
        epoch_end = self._steps_per_epoch is not None and saved.step == saved.epoch * self._steps_per_epoch
        if saved.kind == "last" and epoch_end and run.state == "running" and self.panel.update_saliency.isChecked():
            self.show_saliency(saved.path)

    def _on_skipped(self, run: TrainingRun, skipped: StepSkipped) -> None:
        self.status.state.setText(f"Step {skipped.step} skipped: {skipped.reason}")

    def _on_finished(self, run: TrainingRun, finished: Finished) -> None:
        self.curves.flush()  # the redraw timer may still hold the run's last steps
        name = Path(run.spec.out_dir).name
        if run.state == "paused":
            self.status.end(f"Paused {name}: the last checkpoint is saved; Resume continues from it.", False)
        elif run.state == "cancelled":
            self.status.end(f"Cancelled {name}; the last checkpoint is saved in {finished.outputs.get('last', '—')}.", False)
        else:
            model = finished.outputs.get("best") or finished.outputs.get("last")
            self.status.end(f"Finished {name}; its {'best' if 'best' in finished.outputs else 'last'} model "
                            "is loaded in the Model panel.", True)
            if model:
                self.live.load_model(model)  # ready for the overlay workflow
            self.panel.run_dir.setText(str(self.runs_folder / new_run_name()))
        self.panel.set_state(run.state)
        self.refresh_runs()
        self.run_finished.emit(run, finished)
        self._close_if_asked()

    def _on_failed(self, run: TrainingRun, message: str) -> None:
        self.status.end(f"Failed: {Path(run.spec.out_dir).name}", False)
        self.panel.set_state("idle")
        self.report_error(f"Training failed.\n\n{message}")
        self.refresh_runs()
        self.run_failed.emit(run, message)
        self._close_if_asked()

    # -- saliency of the slide on screen -------------------------------------------------------
    def saliency_now(self) -> None:
        path = self.latest_checkpoint or self.live.model_panel.model_path
        if path is None:
            self.report_error("No checkpoint yet: the first one is saved at the end of the first epoch.")
            return
        self.show_saliency(path)

    def show_saliency(self, checkpoint: str) -> None:
        """Load ``checkpoint`` into the model panel, then run it with saliency on the view on screen."""
        if self.live.slide_path is None:
            self.status.state.setText("No slide on screen for the saliency map; open one to see it per epoch.")
            return
        self._saliency_pending = checkpoint
        self.live.load_model(checkpoint)

    def _on_card_loaded(self, path: str) -> None:
        if path == self._saliency_pending:
            self._saliency_pending = None
            self.live.model_panel.saliency.setChecked(True)
            job = self.live.run("view")
            if job is not None:
                self.live.reveal_when_ready(job.target, "saliency", job)  # what the model learns, not its forward map
                self.saliency_started.emit(path)

    # -- runs ------------------------------------------------------------------------------------
    def load_model_names(self) -> None:
        self.background.submit(list_model_names, on_done=self.panel.set_models, on_error=self._on_names_error)

    def _on_names_error(self, message: str) -> None:
        self.panel.labels_summary.setText(f"Model list unavailable: {message}")

    def set_runs_folder(self, folder: str) -> None:
        """New runs go into ``folder`` (remembered) and its runs are listed. A run folder the user
        typed stays as it is unless it was the default one under the previous runs folder."""
        previous = self.runs_folder
        self.runs_folder = Path(folder)
        self.settings.setValue("training/runs_folder", str(self.runs_folder))
        if Path(self.panel.run_dir.text()).parent == previous:
            self.panel.run_dir.setText(str(self.runs_folder / new_run_name()))
        self.refresh_runs()

    def refresh_runs(self) -> None:
        self.background.submit(scan_runs, str(self.runs_folder), on_done=self._on_runs, on_error=self.report_error)

    def _on_runs(self, result: tuple[str, list[RunSummary]]) -> None:
        folder, runs = result
        self.runs_list.set_runs(folder, runs)
        self.runs_listed.emit(runs)

    def reopen(self, run: RunSummary) -> None:
        """Show a finished run's curves and load its model (best, else last) into the model panel."""
        self.background.submit(read_curves, run.path, on_done=lambda curves, path=run.path: self._on_curves(path, curves),
                               on_error=self.report_error)
        if run.checkpoint is not None:
            self.live.load_model(run.checkpoint)

    def _on_curves(self, path: str, curves: Curves) -> None:
        self.curves.set_curves(curves.train, curves.val)
        self.status.state.setText(f"Reopened {Path(path).name}")
        self.curves_loaded.emit(path)

    # -- closing ---------------------------------------------------------------------------------
    def close_requested(self, window: QMainWindow) -> bool:
        """May ``window`` close now? While training, ask: cancel and save (close once saved), keep
        running with the window hidden (close when done), or don't close."""
        if not self.controller.active:
            return True
        answer = ask_close_while_training(window)
        if answer == CLOSE_CANCEL:
            self.cancel()
            self._close_when_done = window
        elif answer == CLOSE_BACKGROUND:
            self._close_when_done = window
            window.hide()
        return False

    def _close_if_asked(self) -> None:
        window, self._close_when_done = self._close_when_done, None
        if window is not None:
            window.close()

    def shutdown(self) -> None:
        self.controller.shutdown()
        self.background.shutdown()
