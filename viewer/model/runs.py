"""Training runs on disk: find them in a runs folder, summarise them, and read their curves.

A run folder is what ``engine.api.run_training`` writes: ``spec.json``, ``metrics.jsonl`` (one
JSON row per optimiser step, phase "train", and per validation, phase "val") and the ``last/``
and ``best/`` checkpoints. Everything here reads files, so it runs on a worker.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Curves:
    """The points of a run's curves: train (step, loss, lr) rows and val (epoch, step, metrics) rows."""

    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class RunSummary:
    path: str
    model: str
    epochs: int  # asked for
    epochs_done: int
    steps: int
    last_loss: float | None
    val: dict  # the last validation's metrics (loss, accuracy, auc); empty without validation
    has_best: bool
    has_last: bool

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint to reopen: ``best/`` when validation chose one, else ``last/``."""
        if self.has_best:
            return str(Path(self.path) / "best")
        return str(Path(self.path) / "last") if self.has_last else None


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def read_curves(run_dir: str | Path) -> Curves:
    """The rows of ``metrics.jsonl`` (missing file: no points). Torn last lines are skipped: a run
    still writing may be read mid-line."""
    log = Path(run_dir) / "metrics.jsonl"
    train, val = [], []
    if not log.exists():
        return Curves()
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        values = {k: _number(v) for k, v in row.items() if k not in ("phase", "epoch", "step")}
        point = {"epoch": int(row.get("epoch", 0)), "step": int(row.get("step", 0)), **values}
        (train if row.get("phase") == "train" else val).append(point)
    return Curves(train, val)


def summarise_run(run_dir: str | Path) -> RunSummary | None:
    """A run folder's summary, or None when ``spec.json`` is missing or unreadable (not a run)."""
    run_dir = Path(run_dir)
    try:
        spec = json.loads((run_dir / "spec.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    curves = read_curves(run_dir)
    last_loss = curves.train[-1]["loss"] if curves.train else None
    val = {k: v for k, v in curves.val[-1].items() if k not in ("epoch", "step")} if curves.val else {}
    epochs_done = max([row["epoch"] + 1 for row in curves.val] or [0])
    return RunSummary(str(run_dir), str(spec.get("model", "?")), int(spec.get("epochs", 0)), epochs_done,
                      len(curves.train), last_loss, val, (run_dir / "best" / "model.json").exists(),
                      (run_dir / "last" / "model.json").exists())


def scan_runs(folder: str | Path) -> tuple[str, list[RunSummary]]:
    """Worker job: every run directly inside ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return str(folder), []
    runs = [s for p in folder.iterdir() if p.is_dir() and (s := summarise_run(p)) is not None]
    runs.sort(key=lambda s: Path(s.path).stat().st_mtime, reverse=True)
    return str(folder), runs


def format_metric(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"
