"""The job panel: the running job's progress with its ETA, the queue, Cancel, and the
slide-level prediction when it comes. It follows a live-maps controller's job signals
(:meth:`JobPanel.bind`)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.events import Finished, Prediction, Progress


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min left"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s left"
    return f"{seconds} s left"


def describe_job(job) -> str:
    """What a job is, for people: its label, else its slide's file name."""
    return job.label or Path(job.spec.slide_path).name


def format_prediction(prediction: Prediction) -> str:
    ranked = sorted(zip(prediction.classes, prediction.probabilities, strict=True), key=lambda cp: -cp[1])
    return f"Prediction: {prediction.label}  (" + ", ".join(f"{c} {p:.2f}" for c, p in ranked) + ")"


class JobPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.detail = QLabel("No job running")
        self.queue = QLabel("")
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(row)
        layout.addWidget(self.detail)
        layout.addWidget(self.queue)
        layout.addWidget(self.result)

    def bind(self, live) -> None:
        """Follow ``live``'s jobs (a :class:`viewer.controllers.live_maps.LiveMaps`); Cancel cancels them."""
        live.job_started.connect(self.on_job_started)
        live.job_progress.connect(self.on_progress)
        live.prediction_ready.connect(self.on_prediction)
        live.job_finished.connect(self.on_finished)
        live.job_failed.connect(self.on_failed)
        live.queue_changed.connect(self.set_queue)
        self.cancel_button.clicked.connect(live.cancel)

    def on_job_started(self, job) -> None:
        self.bar.setRange(0, 0)  # busy until the first Progress says how many tiles
        self.detail.setText(f"{describe_job(job)}: starting…")
        self.result.setText("")
        self.cancel_button.setEnabled(True)

    def on_progress(self, job, progress: Progress) -> None:
        self.bar.setRange(0, max(1, progress.total))
        self.bar.setValue(progress.done)
        self.detail.setText(f"{describe_job(job)}: {progress.phase} {progress.done}/{progress.total} · {format_eta(progress.eta_s)}")

    def set_queue(self, waiting: int) -> None:
        self.queue.setText(f"{waiting} job{'s' if waiting != 1 else ''} waiting" if waiting else "")

    def on_prediction(self, _job, prediction: Prediction) -> None:
        self.result.setText(format_prediction(prediction))

    def on_finished(self, job, finished: Finished) -> None:
        text = "Cancelled (finished tiles kept)" if finished.cancelled else "Done"
        self._ended(f"{text}: {describe_job(job)}", complete=not finished.cancelled)

    def on_failed(self, job, _message: str) -> None:
        self._ended(f"Failed: {describe_job(job)}", complete=False)

    def _ended(self, text: str, complete: bool) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if complete else 0)
        self.detail.setText(text)
        self.cancel_button.setEnabled(False)
