"""Fine-tuning from the GUI: runs from the training form, labels from the slide browser or a CSV,
the runs folder, and the link to the live maps (finished models, per-epoch saliency).

The controller reads the :class:`~viewer.model.training_form.TrainingForm` and the
:class:`~viewer.model.labels.LabelTable`, writes what the form shows back into it (state, labels
summary, run folder), and reports the rest through Qt signals that the training dock binds to.
Training runs through :class:`viewer.workers.training.TrainingJobs` (the only door to
``run_training``); file work (labels, runs, curves, the model registry) runs on a background
worker; inference and saliency go through :class:`viewer.controllers.live_maps.LiveMaps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engine.events import CheckpointSaved, Finished, Metrics, Progress, StepSkipped
from engine.specs import HEADS, TrainingSpec
from viewer.controllers.live_maps import LiveMaps
from viewer.model.labels import LabelTable
from viewer.model.layers import SALIENCY
from viewer.model.runs import Curves, RunSummary, read_curves, scan_runs
from viewer.model.training_form import (
    CLOSE_BACKGROUND,
    CLOSE_CANCEL,
    TrainingForm,
    labels_summary,
    new_run_name,
    plan_text,
)
from viewer.model.workspace import SettingsStore
from viewer.workers.background import BackgroundRunner
from viewer.workers.training import TrainingJobs, TrainingRun, TrainRunner, engine_train_runner
from viewer.workers.training_files import list_model_names, plan_run, read_labels_for_form, write_labels_csv

DEFAULT_RUNS_FOLDER = Path.home() / "StreamSlide" / "runs"


class FineTuning(QObject):
    run_started = Signal(object)  # TrainingRun (a start or a resume)
    run_begun = Signal(object, str)  # TrainingRun, what the status says about it
    curves_reset = Signal()  # a new run (not a resume): its curves start empty
    progress = Signal(object, object)  # TrainingRun, Progress
    metrics = Signal(object, object)  # TrainingRun, Metrics
    status_text = Signal(str)
    run_ended = Signal(object, str, bool)  # TrainingRun, what the status says, whether it completed
    run_finished = Signal(object, object)  # TrainingRun, Finished
    run_failed = Signal(object, str)
    labels_imported = Signal(str)
    labels_saved = Signal(str)
    runs_listed = Signal(str, list)  # folder, [RunSummary]
    curves_read = Signal(str, object)  # run folder, Curves
    curves_loaded = Signal(str)
    saliency_started = Signal(str)  # the checkpoint whose saliency map is being computed

    def __init__(self, form: TrainingForm, table: LabelTable, live: LiveMaps, report_error: Callable[[str], None],
                 settings: SettingsStore, runner: TrainRunner = engine_train_runner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.form, self.table, self.live = form, table, live
        self.report_error, self.settings = report_error, settings
        self.jobs = TrainingJobs(runner, parent=self)
        self.background = BackgroundRunner(workers=1, parent=self)
        self.runs_folder = Path(str(settings.value("training/runs_folder", str(DEFAULT_RUNS_FOLDER))))
        self.latest_checkpoint: str | None = None
        self._steps_per_epoch: int | None = None
        self._saliency_pending: str | None = None
        self._close_when_done: Callable[[], None] | None = None
        form.set(run_dir=str(self.runs_folder / new_run_name()))

        self.jobs.progress.connect(self._on_progress)
        self.jobs.metrics.connect(self._on_metrics)
        self.jobs.checkpoint_saved.connect(self._on_checkpoint)
        self.jobs.step_skipped.connect(self._on_skipped)
        self.jobs.finished.connect(self._on_finished)
        self.jobs.failed.connect(self._on_failed)
        live.card_loaded.connect(self._on_card_loaded)
        form.changed.connect(self._recheck)
        live.card_loaded.connect(lambda _path: self._recheck("base"))
        self.refresh_runs()

    @property
    def active(self) -> bool:
        return self.jobs.active

    def warm_up(self) -> None:
        """The engine's import, on the training worker, ahead of Start (see viewer.workers.gc_pauses)."""
        self.jobs.warm_up()

    # -- labels ---------------------------------------------------------------------------------
    def import_csv(self, path: str) -> None:
        self.background.submit(read_labels_for_form, path, on_done=self._on_csv_read, on_error=self._on_csv_error)

    def _on_csv_read(self, result: tuple[str, dict[str, str], tuple[str, ...], tuple[str, ...], str]) -> None:
        path, rows, classes, columns, note = result
        if rows:
            self.table.replace(rows)  # the browser shows the imported labels too
        summary = labels_summary(Path(path).name, rows, classes) if rows else f"{Path(path).name}: {note}"
        self.form.set(csv_path=path, labels_source="csv", labels_summary=summary)
        self.form.set_columns(columns)
        self.labels_imported.emit(path)

    def _recheck(self, name: str) -> None:
        """Show what stops the form's spec (its SpecError) as soon as a field makes it impossible."""
        card = self.live.model.card
        if name == "base" and self.form.base == "loaded" and card is not None:
            # Starting from the loaded model: the form shows the head it will keep.
            head = getattr(card, "head", None) or card.pool
            if head in HEADS and head != self.form.head:
                self.form.set(head=head)
        if name not in ("spec_problem", "state", "plan_text", "labels_summary"):
            self.form.set(spec_problem=self.form.check(self.live.model))

    def _on_csv_error(self, message: str) -> None:
        self.form.set(labels_summary=f"Labels not imported: {message}")
        self.report_error(f"Could not import the labels.\n\n{message}")

    def on_browser_labels(self) -> None:
        """The user labelled slides in the browser: train on those."""
        rows = dict(self.table.items())
        self.form.set(labels_source="browser", labels_summary=labels_summary("Slide browser", rows, self.table.classes))

    def save_labels(self, path: str) -> None:
        self.background.submit(write_labels_csv, path, self.table.items(), on_done=self.labels_saved.emit,
                               on_error=self._on_labels_write_error)

    def _on_labels_write_error(self, message: str) -> None:
        self.report_error(f"Could not write the labels file.\n\n{message}")

    # -- running --------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a new run from the form (a CSV's labels, or the browser's written to the run folder)."""
        if self.jobs.active:
            return
        form = self.form
        if not form.run_dir.strip():
            form.set(run_dir=str(self.runs_folder / new_run_name()))
        try:
            spec = form.build_spec(form.labels_file(self.table), self.live.model)
        except ValueError as exc:
            self.report_error(f"Cannot start training: {exc}")
            return
        form.set(state="stopping")  # nothing may start twice while the labels are being written
        if form.use_csv:
            self._launch(spec)
        else:
            self.background.submit(write_labels_csv, spec.labels, self.table.items(),
                                   on_done=lambda _path, spec=spec: self._launch(spec),
                                   on_error=self._on_labels_write_error_at_start)

    def show_plan(self) -> None:
        """Compute the form's training plan (tile, blocks kept by the graph budget, estimated peak)
        on a worker (it imports torch and reads the slides' sizes) and show it in the form."""
        form = self.form
        try:
            labels = form.csv_path if form.use_csv else None
            if labels is None and not form.input_size:
                form.set(plan_text="Plan: give an input size (or import a labels CSV) to size the input")
                return
            spec = form.build_spec(labels or "", self.live.model)
        except ValueError as exc:
            form.set(plan_text=f"Plan: {exc}")
            return
        form.set(plan_text="Plan: computing…")
        self.background.submit(plan_run, spec, on_done=lambda plan: form.set(plan_text=plan_text(plan)),
                               on_error=lambda message: form.set(plan_text=f"Plan failed: {message}"))

    def _on_labels_write_error_at_start(self, message: str) -> None:
        self.form.set(state="idle")
        self._on_labels_write_error(message)

    def _launch(self, spec: TrainingSpec) -> None:
        self.curves_reset.emit()
        self._begin(self.jobs.start(spec), "Training")

    def _begin(self, run: TrainingRun, verb: str) -> None:
        self._steps_per_epoch = None
        self.form.set(state="running")
        self.run_begun.emit(run, f"{verb} {Path(run.spec.out_dir).name} ({run.spec.model}, {run.spec.device})")
        self.run_started.emit(run)

    def pause(self) -> None:
        self.jobs.pause()
        self.form.set(state="stopping")
        self.status_text.emit("Pausing: saving the last checkpoint at the next step…")

    def resume(self) -> None:
        run = self.jobs.resume()
        if run is not None:
            self._begin(run, "Resumed")

    def cancel(self) -> None:
        self.jobs.cancel()
        self.form.set(state="stopping")
        self.status_text.emit("Cancelling: saving the last checkpoint at the next step…")

    # -- events ----------------------------------------------------------------------------------
    def _on_progress(self, run: TrainingRun, progress: Progress) -> None:
        if progress.phase == "train":
            self._steps_per_epoch = progress.total
        self.progress.emit(run, progress)

    def _on_metrics(self, run: TrainingRun, metrics: Metrics) -> None:
        self.metrics.emit(run, metrics)

    def _on_checkpoint(self, run: TrainingRun, saved: CheckpointSaved) -> None:
        self.latest_checkpoint = saved.path
        # The epoch-end "last" (step == epochs done x steps per epoch) of a run still running;
        # a pause or cancel also saves "last", but then there is nothing new to look at.
        epoch_end = self._steps_per_epoch is not None and saved.step == saved.epoch * self._steps_per_epoch
        if saved.kind == "last" and epoch_end and run.state == "running" and self.form.update_saliency:
            self.show_saliency(saved.path)

    def _on_skipped(self, run: TrainingRun, skipped: StepSkipped) -> None:
        self.status_text.emit(f"Step {skipped.step} skipped: {skipped.reason}")

    def _on_finished(self, run: TrainingRun, finished: Finished) -> None:
        name = Path(run.spec.out_dir).name
        if run.state == "paused":
            self.run_ended.emit(run, f"Paused {name}: the last checkpoint is saved; Resume continues from it.", False)
        elif run.state == "cancelled":
            self.run_ended.emit(run, f"Cancelled {name}; the last checkpoint is saved in {finished.outputs.get('last', '—')}.", False)
        else:
            model = finished.outputs.get("best") or finished.outputs.get("last")
            self.run_ended.emit(run, f"Finished {name}; its {'best' if 'best' in finished.outputs else 'last'} model "
                                     "is loaded in the Model panel.", True)
            if model:
                self.live.load_model(model)  # ready for the overlay workflow
            self.form.set(run_dir=str(self.runs_folder / new_run_name()))
        self.form.set(state=run.state)
        self.refresh_runs()
        self.run_finished.emit(run, finished)
        self._close_if_asked()

    def _on_failed(self, run: TrainingRun, message: str) -> None:
        self.run_ended.emit(run, f"Failed: {Path(run.spec.out_dir).name}", False)
        self.form.set(state="idle")
        self.report_error(f"Training failed.\n\n{message}")
        self.refresh_runs()
        self.run_failed.emit(run, message)
        self._close_if_asked()

    # -- saliency of the slide on screen -------------------------------------------------------
    def saliency_now(self) -> None:
        path = self.latest_checkpoint or self.live.model.path
        if path is None:
            self.report_error("No checkpoint yet: the first one is saved at the end of the first epoch.")
            return
        self.show_saliency(path)

    def show_saliency(self, checkpoint: str) -> None:
        """Load ``checkpoint`` as the model, then run it with saliency on the view on screen."""
        if self.live.slide_path is None:
            self.status_text.emit("No slide on screen for the saliency map; open one to see it per epoch.")
            return
        self._saliency_pending = checkpoint
        self.live.load_model(checkpoint)

    def _on_card_loaded(self, path: str) -> None:
        if path == self._saliency_pending:
            self._saliency_pending = None
            self.live.settings.set(saliency=True)
            job = self.live.run("view")
            if job is not None:
                self.live.reveal_when_ready(job.target, SALIENCY, job)  # what the model learns, not its forward map
                self.saliency_started.emit(path)

    # -- runs ------------------------------------------------------------------------------------
    def load_model_names(self) -> None:
        self.background.submit(list_model_names, on_done=self.form.set_architectures, on_error=self._on_names_error)

    def _on_names_error(self, message: str) -> None:
        self.form.set(labels_summary=f"Model list unavailable: {message}")

    def set_runs_folder(self, folder: str) -> None:
        """New runs go into ``folder`` (remembered) and its runs are listed. A run folder the user
        typed stays as it is unless it was the default one under the previous runs folder."""
        previous = self.runs_folder
        self.runs_folder = Path(folder)
        self.settings.setValue("training/runs_folder", str(self.runs_folder))
        if Path(self.form.run_dir).parent == previous:
            self.form.set(run_dir=str(self.runs_folder / new_run_name()))
        self.refresh_runs()

    def refresh_runs(self) -> None:
        self.background.submit(scan_runs, str(self.runs_folder), on_done=self._on_runs, on_error=self.report_error)

    def _on_runs(self, result: tuple[str, list[RunSummary]]) -> None:
        self.runs_listed.emit(*result)

    def reopen(self, run: RunSummary) -> None:
        """Show a finished run's curves and load its model (best, else last) for the live maps."""
        self.background.submit(read_curves, run.path, on_done=lambda curves, path=run.path: self._on_curves(path, curves),
                               on_error=self.report_error)
        if run.checkpoint is not None:
            self.live.load_model(run.checkpoint)

    def _on_curves(self, path: str, curves: Curves) -> None:
        self.curves_read.emit(path, curves)
        self.status_text.emit(f"Reopened {Path(path).name}")
        self.curves_loaded.emit(path)

    # -- closing ---------------------------------------------------------------------------------
    def close_requested(self, ask: Callable[[], str], hide: Callable[[], None], close: Callable[[], None]) -> bool:
        """May the window close now? While training, ``ask`` the user: cancel and save (``close``
        once saved), keep running with the window hidden (``close`` when done), or don't close."""
        if not self.jobs.active:
            return True
        answer = ask()
        if answer == CLOSE_CANCEL:
            self.cancel()
            self._close_when_done = close
        elif answer == CLOSE_BACKGROUND:
            self._close_when_done = close
            hide()
        return False

    def _close_if_asked(self) -> None:
        close, self._close_when_done = self._close_when_done, None
        if close is not None:
            close()

    def shutdown(self) -> None:
        self.jobs.shutdown()
        self.background.shutdown()
