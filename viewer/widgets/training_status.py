"""What a running training job is doing: state, epoch and step, ETA, throughput and memory.

Throughput comes from the Progress events' own clock (steps done against the engine's elapsed
time), so UI lag does not distort it. Memory is this process's resident set, read from
``/proc/self/statm`` once a second: a single small read, cheap enough for the UI thread.
"""

from __future__ import annotations

import os
import resource

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QFormLayout, QLabel, QProgressBar, QSizePolicy, QVBoxLayout, QWidget

from engine.events import Progress
from viewer.widgets.job_panel import format_eta

MEMORY_POLL_MS = 1000


def process_rss_bytes() -> int:
    """Resident memory of this process (Linux: current; elsewhere: the peak, which is all we have)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024  # macOS bytes, Linux KiB


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class Throughput:
    """Slides per second of a phase, from consecutive Progress events of the same epoch."""

    def __init__(self) -> None:
        self.last: Progress | None = None
        self.rate: float | None = None  # steps (train) or slides (val) per second

    def add(self, p: Progress) -> float | None:
        prev, self.last = self.last, p
        if p.phase == "val":  # validation's clock starts at its first slide
            self.rate = p.done / p.elapsed_s if p.elapsed_s > 0 else self.rate
        elif prev is not None and prev.phase == p.phase and p.done > prev.done and p.elapsed_s > prev.elapsed_s:
            step_rate = (p.done - prev.done) / (p.elapsed_s - prev.elapsed_s)
            # Smoothed: one slide per step makes a single step's time noisy.
            self.rate = step_rate if self.rate is None else 0.7 * self.rate + 0.3 * step_rate
        elif p.elapsed_s > 0 and p.done > 0 and self.rate is None:
            self.rate = p.done / p.elapsed_s
        return self.rate


class TrainingStatus(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = QLabel("No training run")
        self.state.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.fields = {name: QLabel("—") for name in ("Epoch", "ETA", "Throughput", "Memory", "Last loss", "Validation")}
        form = QFormLayout()
        form.setVerticalSpacing(2)
        self.fields["Memory"].setToolTip("Resident memory of the viewer process, training included")
        for name, label in self.fields.items():
            # Values change every step; if their text width moved the splitter, the curves beside
            # would be resized and fully repainted on each step (a measured 40 ms stall).
            # They wrap rather than clip when the panel is narrow.
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.setWordWrap(True)
            form.addRow(name, label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.state)
        layout.addWidget(self.bar)
        layout.addLayout(form)
        self.throughput = Throughput()
        self.epochs = 0
        self.epoch = 0
        self.pixels_per_slide: int | None = None
        self._timer = QTimer(self, interval=MEMORY_POLL_MS)
        self._timer.timeout.connect(self.show_memory)
        self._timer.start()
        self.show_memory()

    def begin(self, text: str, epochs: int, input_size: int | None) -> None:
        self.state.setText(text)
        self.epochs, self.epoch = epochs, 0
        self.pixels_per_slide = input_size * input_size if input_size else None
        self.throughput = Throughput()
        self.bar.setRange(0, 0)  # busy until the first Progress
        for name in ("Epoch", "ETA", "Throughput"):
            self.fields[name].setText("starting…")

    def show_memory(self) -> None:
        self.fields["Memory"].setText(f"{format_bytes(process_rss_bytes())} RSS")

    def show_progress(self, p: Progress, accumulate: int = 1) -> None:
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(p.done)
        what = "step" if p.phase == "train" else "validation slide"
        self.fields["Epoch"].setText(f"{self.epoch + 1} of {self.epochs} · {what} {p.done}/{p.total}")
        rate = self.throughput.add(p)
        if rate is not None:
            slides = rate * (accumulate if p.phase == "train" else 1)
            text = f"{slides:.2f} slides/s"
            if self.pixels_per_slide:
                text += f" · {slides * self.pixels_per_slide / 1e6:.1f} MP/s"
            self.fields["Throughput"].setText(f"{text} ({'training' if p.phase == 'train' else 'validation'})")
        eta = p.eta_s
        if p.phase == "train" and rate and eta is not None:
            # Later epochs at the current pace (validation time not included).
            eta += (self.epochs - self.epoch - 1) * p.total / rate
        self.fields["ETA"].setText(f"{format_eta(eta)} ({'rest of the run' if p.phase == 'train' else 'validation'})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def show_loss(self, loss: float, lr: float) -> None:
        self.fields["Last loss"].setText(f"{loss:.4g} (lr {lr:.3g})")

    def show_validation(self, values: dict) -> None:
        self.fields["Validation"].setText(" · ".join(f"{k} {v:.3g}" for k, v in values.items()))

    def end(self, text: str, complete: bool) -> None:
        self.state.setText(text)
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if complete else 0)
        self.fields["ETA"].setText("—")
