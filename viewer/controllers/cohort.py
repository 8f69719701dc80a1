"""Cohort evaluation from the GUI: the loaded model on the slide browser's labelled slides (or an
imported CSV) as one queued job, its progress and cancel, the table and plot of its results,
and a double-clicked row's slide opened with the maps the job kept (no new inference).

The browser's labels are written to ``<evaluation>/labels.csv`` on a background worker first;
the evaluation itself is :class:`viewer.workers.evaluation.EvaluationJobs` on the live maps'
engine worker, so it waits behind (and holds back) the model's other jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Signal

from engine.errors import SpecError
from engine.events import JobWarning, Progress
from engine.specs import EvaluationSpec
from viewer.controllers.live_maps import LiveMaps
from viewer.model.cohort import CohortForm, CohortTable, eta_text, new_evaluation_name, summary_text
from viewer.model.labels import LabelTable
from viewer.model.workspace import OpenSlide, Workspace, resolved
from viewer.workers.background import BackgroundRunner
from viewer.workers.engine_worker import EngineWorker
from viewer.workers.evaluation import EvaluationJobs, EvaluationOutcome, EvaluationRunner, engine_evaluation_runner
from viewer.workers.training_files import write_labels_csv


class CohortEvaluation(QObject):
    progress = Signal(int, int)  # slides done, total
    results_shown = Signal(object)  # EvaluationFiles
    maps_opened = Signal(str, str)  # slide, maps.npz

    def __init__(self, form: CohortForm, table: CohortTable, labels: LabelTable, live: LiveMaps, workspace: Workspace,
                 open_slide: Callable[[str], None], report_error: Callable[[str], None],
                 runner: EvaluationRunner = engine_evaluation_runner, worker: EngineWorker | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.form, self.table, self.labels, self.live = form, table, labels, live
        self.workspace, self.open_slide, self.report_error = workspace, open_slide, report_error
        self.jobs = EvaluationJobs(worker or live.jobs.worker, runner, parent=self)
        self.background = BackgroundRunner(workers=1, parent=self)
        self.files = None
        self._warnings: list[str] = []
        self._pending_maps: tuple[str, str] | None = None  # (resolved slide, maps.npz) to show when it is current
        self._preparing = False  # the cohort's labels CSV is being written; the job starts after
        self.jobs.started.connect(lambda _job: self.form.set(state="running", progress_text="Evaluating…"))
        self.jobs.progress.connect(self._on_progress)
        self.jobs.warning.connect(self._on_warning)
        self.jobs.finished.connect(self._on_finished)
        self.jobs.failed.connect(self._on_failed)
        workspace.current_changed.connect(self._on_current)

    # -- labels ---------------------------------------------------------------------------------
    def use_csv(self, path: str) -> None:
        self.form.set(source="csv", csv_path=path)

    def use_browser(self) -> None:
        self.form.set(source="browser")

    # -- the job ---------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Evaluate the Model panel's model on the chosen labels, into a new folder."""
        if self.form.busy or self.jobs.active:
            return
        model = self.live.model.path
        if model is None:
            self.report_error("Cannot evaluate: load a model in the Model panel first.")
            return
        out = Path(self.form.out_root) / new_evaluation_name()
        if self.form.source == "csv":
            if not self.form.csv_path:
                self.report_error("Cannot evaluate: import a labels CSV first (or label slides in the browser).")
                return
            labels = self.form.csv_path
        else:
            if not len(self.labels):
                self.report_error("Cannot evaluate: label slides in the slide browser (right-click) "
                                  "or import a labels CSV.")
                return
            labels = str(out / "labels.csv")
        try:
            spec = EvaluationSpec(model=model, labels=labels, out_dir=str(out), device=self.live.settings.device,
                                  keep_maps=True)
        except SpecError as exc:
            self.report_error(f"Cannot evaluate: {exc}")
            return
        self._warnings = []
        self._preparing = False
        self.form.set(state="running", progress_text="Queued…", summary="", failed_text="")
        if self.form.source == "csv":
            self._submit(spec)
        else:
            self._preparing = True  # the labels are written first; Cancel meanwhile means do not start
            self.background.submit(write_labels_csv, labels, self.labels.items(),
                                   on_done=lambda _path: self._submit(spec), on_error=self._on_labels_error)

    def _submit(self, spec: EvaluationSpec) -> None:
        if self._preparing and self.form.state == "cancelled":
            self._preparing = False
            return  # cancelled while the cohort's labels were being written
        self._preparing = False
        self.jobs.start(spec)

    def _on_labels_error(self, message: str) -> None:
        self.form.set(state="failed", progress_text="")
        self.report_error(f"Could not write the cohort's labels.\n\n{message}")

    def cancel(self) -> None:
        if self.jobs.active:
            self.jobs.cancel()
            self.form.set(state="stopping", progress_text="Cancelling at the next tile…")
        elif self._preparing:
            self.form.set(state="cancelled", progress_text="Cancelled before it started")

    def _on_progress(self, _job, progress: Progress) -> None:
        self.form.set(progress_text=eta_text(progress.done, progress.total, progress.eta_s))
        self.progress.emit(progress.done, progress.total)

    def _on_warning(self, _job, warning: JobWarning) -> None:
        self._warnings.append(warning.message)
        self.form.set(failed_text="\n".join(self._warnings))

    def _on_finished(self, job, outcome: EvaluationOutcome) -> None:
        files = outcome.files
        cancelled = outcome.finished.cancelled
        failed = [f"{Path(f['slide']).name}: {f['error']}" for f in (files.failed if files is not None else ())]
        # The state first: whoever the results reach sees a finished job (Evaluate enabled again).
        self.form.set(state="cancelled" if cancelled else "done",
                      progress_text=("Cancelled: the slides evaluated so far are shown" if cancelled
                                     else f"Done: {job.spec.out_dir}"),
                      failed_text="\n".join(f"Skipped {f}" for f in failed) if failed else self.form.failed_text)
        if files is not None:
            self.show_results(files)

    def _on_failed(self, _job, message: str) -> None:
        self.form.set(state="failed", progress_text="")
        self.report_error(f"The evaluation failed.\n\n{message}")

    def show_results(self, files) -> None:
        self.files = files
        self.table.set_rows(files.rows)
        self.form.set(summary=summary_text(files.task, files.metrics) if files.rows else "no slide was evaluated")
        self.results_shown.emit(files)

    # -- opening a row ---------------------------------------------------------------------------
    def open_row(self, index: int) -> None:
        """Show the row's slide; once it is on screen, its kept maps (read from disk, no inference)."""
        row = self.table.rows[index]
        key = resolved(row.slide)
        self._pending_maps = (key, row.maps) if row.maps else None
        current = self.workspace.current
        if current is not None and current.key == key:
            self._on_current(current)
        else:
            self.open_slide(row.slide)

    def _on_current(self, entry: OpenSlide | None) -> None:
        pending = self._pending_maps
        if entry is None or pending is None or entry.key != pending[0]:
            return
        self._pending_maps = None
        self.live.load_maps(pending[1])
        self.maps_opened.emit(entry.key, pending[1])

    def shutdown(self) -> None:
        self.jobs.cancel()
        self.background.shutdown()
