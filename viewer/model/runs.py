"""Training runs as the viewer lists them. The run-folder format is the engine's
(:mod:`engine.io.runs`, reached through :mod:`engine.api`); this module only adds the worker
job that scans a folder and the way a metric is shown."""

from __future__ import annotations

import math
from pathlib import Path

from engine import api
from engine.api import Curves, RunSummary


def read_curves(run_dir: str | Path) -> Curves:
    """Worker job: a run's curves (``Curves``: train and val rows; a torn last line is skipped)."""
    return api.read_run_curves(run_dir)


def scan_runs(folder: str | Path) -> tuple[str, list[RunSummary]]:
    """Worker job: ``(folder, every run directly inside it, newest first)``."""
    return str(folder), list(api.list_runs(folder))


def format_metric(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"
