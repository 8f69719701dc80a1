"""The job panel: the running job's progress with its ETA, the queue, Cancel, and the
slide-level prediction when it comes."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from engine.events import Prediction, Progress


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min left"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s left"
    return f"{seconds} s left"


def format_prediction(prediction: Prediction) -> str:
    ranked = sorted(zip(prediction.classes, prediction.probabilities), key=lambda cp: -cp[1])
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

    def job_started(self, description: str) -> None:
        self.bar.setRange(0, 0)  # busy until the first Progress says how many tiles
        self.detail.setText(f"{description}: starting…")
        self.result.setText("")
        self.cancel_button.setEnabled(True)

    def show_progress(self, description: str, progress: Progress) -> None:
        self.bar.setRange(0, max(1, progress.total))
        self.bar.setValue(progress.done)
        self.detail.setText(f"{description}: {progress.phase} {progress.done}/{progress.total} · {format_eta(progress.eta_s)}")

    def set_queue(self, waiting: int) -> None:
        self.queue.setText(f"{waiting} job{'s' if waiting != 1 else ''} waiting" if waiting else "")

    def show_prediction(self, prediction: Prediction) -> None:
        self.result.setText(format_prediction(prediction))

    def job_ended(self, text: str) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if text.startswith("Done") else 0)
        self.detail.setText(text)
        self.cancel_button.setEnabled(False)
