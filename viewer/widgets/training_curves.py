"""Live training curves (pyqtgraph): loss per optimiser step and per epoch, validation metrics per
epoch. Points are appended in O(1) and the plots redrawn at most every ``REDRAW_MS``, so a run
reporting many steps a second costs one ``setData`` per plot per redraw, not per step."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

from viewer.model.training_form import MONITOR_NAMES

#: Each redraw repaints the loss plot (10-20 ms); at 100 ms one sometimes met a burst of events in
#: the same turn of the event loop and stalled it past 50 ms; at 250 ms it did not (measured).
REDRAW_MS = 250
TRAIN_PEN = pg.mkPen((120, 120, 120), width=1)
SMOOTH_PEN = pg.mkPen((31, 119, 180), width=2)
VAL_PEN = pg.mkPen((214, 39, 40), width=2)
GRID_PEN = pg.mkPen(0, 0, 0, 50)
#: The y range of a monitored metric bounded by its definition (others: the values' own range).
BOUNDED = {"auc": (0.0, 1.02), "macro_auc": (0.0, 1.02), "accuracy": (0.0, 1.02),
           "spearman": (-1.02, 1.02), "pearson": (-1.02, 1.02)}
#: Keys a validation row has when its run monitored them, most telling first (a reopened run's
#: monitor is not in its metrics rows; its rows say which task it was).
MONITOR_GUESSES = ("spearman", "macro_auc", "auc")
#: Steps in the running mean drawn over the noisy per-step loss (one slide per step is noisy).
SMOOTH_STEPS = 10


def running_mean(values: np.ndarray, n: int) -> np.ndarray:
    if len(values) == 0:
        return values
    finite = np.where(np.isfinite(values), values, 0.0)
    csum = np.cumsum(np.concatenate([[0.0], finite]))
    counts = np.cumsum(np.concatenate([[0], np.isfinite(values).astype(int)]))
    lo = np.maximum(np.arange(1, len(values) + 1) - n, 0)
    hi = np.arange(1, len(values) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (csum[hi] - csum[lo]) / (counts[hi] - counts[lo])


def nice_ceiling(x: float) -> float:
    """The smallest of ..., 0.1, 0.2, 0.5, 1, 2, 5, 10, ... at or above ``x`` (> 0)."""
    decade = 10.0 ** np.floor(np.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * decade >= x * (1 - 1e-12):
            return float(m * decade)
    return float(10.0 * decade)


def roomy_limit(x: float) -> float:
    """The next of 10, 20, 50, 100, 200, ... at or above ``1.25 * x``: the step axis grows in
    jumps, so a new step rarely changes its range (which repaints the whole plot)."""
    return nice_ceiling(max(10.0, 1.25 * x))


def add_light_grid(plot: pg.PlotWidget) -> None:
    """A grid at the two coarsest tick levels. Not ``showGrid``: its grid is part of the axes'
    picture, and replaying it made painting both plots 44 ms here instead of 5 ms (measured
    offscreen at 800x400), a stall on every redraw during a run."""
    grid = pg.GridItem(pen=GRID_PEN, textPen=None)
    grid.setTickSpacing(x=[None, None], y=[None, None])
    plot.addItem(grid, ignoreBounds=True)


class TrainingCurves(QWidget):
    """Two plots: loss (train per step, its running mean, validation per epoch) against the
    optimiser step, and validation accuracy and the run's monitored metric (``monitor``: AUC for
    classification, Spearman for regression, ...) against the epoch, the metric named on the axis."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train_steps: list[int] = []
        self.train_loss: list[float] = []
        self.val_rows: list[dict] = []  # epoch, step, loss, accuracy, auc

        self.loss_plot = pg.PlotWidget(background="w")
        self.loss_plot.setTitle("Loss", color="k")
        self.loss_plot.setLabel("bottom", "optimiser step")
        self.loss_plot.enableAutoRange(x=False, y=False)
        self._step_limit = 0.0
        self._loss_limit = 0.0
        add_light_grid(self.loss_plot)
        legend = self.loss_plot.addLegend(offset=(-10, 10), labelTextColor="k", labelTextSize="8pt")
        legend.setBrush(pg.mkBrush(255, 255, 255, 150))
        self.train_item = self.loss_plot.plot([], [], pen=TRAIN_PEN, name="train (per step)")
        self.smooth_item = self.loss_plot.plot([], [], pen=SMOOTH_PEN, name=f"train (mean of {SMOOTH_STEPS})")
        self.val_loss_item = self.loss_plot.plot([], [], pen=VAL_PEN, symbol="o", symbolSize=7,
                                                 symbolBrush=(214, 39, 40), name="validation (per epoch)")

        self.metric_plot = pg.PlotWidget(background="w")
        self.metric_plot.setTitle("Validation", color="k")
        self.metric_plot.setLabel("bottom", "epoch")
        self.metric_plot.setYRange(0, 1.02)
        add_light_grid(self.metric_plot)
        legend = self.metric_plot.addLegend(offset=(-10, -10), labelTextColor="k", colCount=2)
        legend.setBrush(pg.mkBrush(255, 255, 255, 200))
        self.accuracy_item = self.metric_plot.plot([], [], pen=pg.mkPen((44, 160, 44), width=2), symbol="s",
                                                   symbolSize=7, symbolBrush=(44, 160, 44), name="accuracy")
        self.monitor_item = self.metric_plot.plot([], [], pen=pg.mkPen((148, 103, 189), width=2), symbol="t",
                                                  symbolSize=8, symbolBrush=(148, 103, 189), name="AUC")
        self.metric_legend = legend
        self.monitor = ""
        for plot in (self.loss_plot, self.metric_plot):
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setTextPen("k")
                plot.getAxis(axis).setPen("k")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.loss_plot, 1)
        layout.addWidget(self.metric_plot, 1)
        self._dirty = False
        self._val_dirty = False  # validation points change once an epoch: redraw their plot only then
        self._timer = QTimer(self, singleShot=True, interval=REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self.set_monitor("auc")

    # -- points ---------------------------------------------------------------------------------
    def set_monitor(self, key: str) -> None:
        """Plot validation ``key`` (a ``metrics.jsonl`` value, the run's ``monitor``) named on the axis."""
        if key == self.monitor:
            return
        self.monitor = key
        name = MONITOR_NAMES.get(key, key)
        self.metric_legend.removeItem(self.monitor_item)
        self.metric_legend.addItem(self.monitor_item, name)
        self.metric_plot.setLabel("left", f"validation {name}", color="k")
        lo_hi = BOUNDED.get(key)
        if lo_hi is None:
            self.metric_plot.enableAutoRange(y=True)
        else:
            self.metric_plot.setYRange(*lo_hi, padding=0)
        self._val_dirty = True
        self.redraw()

    def clear(self) -> None:
        self.train_steps.clear()
        self.train_loss.clear()
        self.val_rows.clear()
        self._val_dirty = True
        self.redraw()

    def add_train(self, step: int, loss: float) -> None:
        """One optimiser step. A step at or before the last one means a resumed run re-reports
        from its checkpoint: the points after it are dropped, as the engine drops them from its log."""
        while self.train_steps and self.train_steps[-1] >= step:
            self.train_steps.pop()
            self.train_loss.pop()
        self.train_steps.append(step)
        self.train_loss.append(loss)
        self._schedule()

    def add_val(self, epoch: int, step: int, values: dict) -> None:
        self.val_rows = [r for r in self.val_rows if r["epoch"] < epoch]
        self.val_rows.append({"epoch": epoch, "step": step, **values})
        self._val_dirty = True
        self._schedule()

    def set_curves(self, train: list[dict], val: list[dict]) -> None:
        """Replace every point (a reopened run's ``metrics.jsonl``)."""
        self.train_steps = [r["step"] for r in train]
        self.train_loss = [r.get("loss", float("nan")) for r in train]
        self.val_rows = list(val)
        keys = {k for r in self.val_rows for k in r}
        self.set_monitor(next((k for k in MONITOR_GUESSES if k in keys), self.monitor))
        self._val_dirty = True
        self.redraw()

    @property
    def point_count(self) -> int:
        return len(self.train_steps) + len(self.val_rows)

    # -- drawing --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Draw what is pending now (at the end of a run, so its last steps are on screen)."""
        if self._dirty:
            self._timer.stop()
            self.redraw()

    def _schedule(self) -> None:
        self._dirty = True
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        self._dirty = False
        steps = np.asarray(self.train_steps, float)
        loss = np.asarray(self.train_loss, float)
        # connect="finite": a skipped (NaN) step leaves a gap rather than breaking the line.
        self.train_item.setData(steps, loss, connect="finite")
        self.smooth_item.setData(steps, running_mean(loss, SMOOTH_STEPS), connect="finite")
        all_steps = [*self.train_steps, *(r["step"] for r in self.val_rows)]
        last_step = float(max(all_steps)) if all_steps else 0.0
        if last_step > self._step_limit or last_step < self._step_limit / 4:  # outgrown, or a new run
            self._step_limit = roomy_limit(last_step)
            self.loss_plot.setXRange(0, self._step_limit, padding=0.02)
        # The loss axis likewise: 0 to a round value above the highest loss, changed only when
        # outgrown or four times too high (each change re-draws the axis and the whole plot).
        losses = np.asarray([*self.train_loss, *(r.get("loss", np.nan) for r in self.val_rows)], float)
        losses = losses[np.isfinite(losses)]
        top = float(losses.max()) if losses.size else 1.0
        if top > 0 and (top > self._loss_limit or top < self._loss_limit / 4):
            self._loss_limit = nice_ceiling(top)
            self.loss_plot.setYRange(0, self._loss_limit, padding=0.02)
        if not self._val_dirty:  # an unchanged plot is not repainted
            return
        self._val_dirty = False
        val_steps = np.asarray([r["step"] for r in self.val_rows], float)
        epochs = np.asarray([r["epoch"] + 1 for r in self.val_rows], float)  # "after epoch 1" is 1

        def column(name: str) -> np.ndarray:
            return np.asarray([r.get(name, np.nan) for r in self.val_rows], float)

        self.val_loss_item.setData(val_steps, column("loss"), connect="finite")
        self.accuracy_item.setData(epochs, column("accuracy"), connect="finite")
        self.monitor_item.setData(epochs, column(self.monitor), connect="finite")
