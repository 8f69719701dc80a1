"""A training run's folder: the one description of its layout, for the trainer and the viewer.

``run_training`` writes into its ``out_dir``: ``spec.json`` (the spec it ran), ``metrics.jsonl``
(one JSON row per optimiser step, phase "train", and per validation, phase "val"; non-finite
values as null) and the ``last/`` and ``best/`` training checkpoints (each also a plain model
checkpoint, see :mod:`engine.io.checkpoints`). Torch-free: the viewer lists and plots runs
with it on a worker.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.io import atomic
from engine.io.checkpoints import card_path

LAST, BEST = "last", "best"
METRICS_LOG = "metrics.jsonl"
SPEC_JSON = "spec.json"
#: A row of ``metrics.jsonl`` that is not a curve point: something the run wants on record
#: (a resume that changed the epochs or the learning rate), ``{"phase": "note", ..., "note": text}``.
NOTE = "note"
#: A row that says which stage of a staged run an epoch trains (``engine.train.stages``):
#: ``{"phase": "stage", "epoch": e, "step": first step of the epoch, "stage": "head" | "full"}``.
STAGE = "stage"
_ROW_KEYS = ("phase", "epoch", "step")
#: What makes a folder hold a run: anything :func:`engine.api.run_training` writes there.
_RUN_NAMES = (SPEC_JSON, METRICS_LOG, LAST, BEST)


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
            return str(RunFolder(self.path).best)
        return str(RunFolder(self.path).last) if self.has_last else None


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _finite_or_null(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class RunFolder:
    """The files of one run folder, by name; reading and writing them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def last(self) -> Path:
        return self.path / LAST

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics_log(self) -> Path:
        return self.path / METRICS_LOG

    @property
    def spec_json(self) -> Path:
        return self.path / SPEC_JSON

    def checkpoint(self, kind: str) -> Path:
        """The folder of checkpoint ``kind`` ("last" or "best")."""
        if kind not in (LAST, BEST):
            raise ValueError(f"checkpoint kind must be '{LAST}' or '{BEST}', got {kind!r}")
        return self.path / kind

    def has_model(self, kind: str) -> bool:
        """Whether checkpoint ``kind`` holds a model card (a model the viewer can open)."""
        return card_path(self.checkpoint(kind)).exists() if self.checkpoint(kind).is_dir() else False

    # --- writing (the trainer, rank 0) ---------------------------------------------------------
    def run_files(self) -> list[str]:
        """The names of the run files already in the folder (another run's, before a run starts),
        counting a checkpoint a crash left at its hidden side name."""
        found = []
        for name in _RUN_NAMES:
            candidates = [self.path / name]
            if name in (LAST, BEST):
                candidates += [self.path / f".{name}.old"]
            if any(p.exists() for p in candidates):
                found.append(name + ("/" if name in (LAST, BEST) else ""))
        return found

    def clear(self) -> None:
        """Remove another run's files (``--overwrite``); other files in the folder are left alone."""
        try:
            for name in (LAST, BEST):
                for folder in (self.path / name, self.path / f".{name}.old", self.path / f".{name}.new"):
                    if folder.is_dir():
                        shutil.rmtree(folder)
            for name in (SPEC_JSON, METRICS_LOG):
                (self.path / name).unlink(missing_ok=True)
        except OSError as exc:
            raise atomic.write_error(self.path, exc) from exc

    def create(self) -> None:
        atomic.make_folder(self.path)

    def write_spec(self, spec: dict) -> None:
        atomic.write_json(self.spec_json, spec, indent=1)

    def append_metrics(self, phase: str, epoch: int, step: int, values: dict[str, float]) -> None:
        """One row of ``metrics.jsonl``."""
        row = {"phase": phase, "epoch": epoch, "step": step, **values}
        atomic.append_text(self.metrics_log, json.dumps({k: _finite_or_null(v) for k, v in row.items()}) + "\n")

    def append_note(self, epoch: int, step: int, note: str) -> None:
        """A :data:`NOTE` row of ``metrics.jsonl``."""
        atomic.append_text(self.metrics_log, json.dumps({"phase": NOTE, "epoch": epoch, "step": step,
                                                         "note": note}) + "\n")

    def append_stage(self, epoch: int, step: int, stage: str) -> None:
        """A :data:`STAGE` row of ``metrics.jsonl``."""
        atomic.append_text(self.metrics_log, json.dumps({"phase": STAGE, "epoch": epoch, "step": step,
                                                         "stage": stage}) + "\n")

    def read_notes(self) -> list[str]:
        """The notes of ``metrics.jsonl``, oldest first."""
        try:
            text = self.metrics_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        notes = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("phase") == NOTE:
                notes.append(str(row.get("note", "")))
        return notes

    def drop_metrics_after(self, epoch: int, global_step: int) -> None:
        """Keep only the rows of training steps before ``global_step`` and validations of epochs
        before ``epoch``: a killed run may have logged steps its checkpoint does not hold, and
        the resumed run logs them again. A torn last line (killed mid-append) goes too."""
        def saved(line: str) -> bool:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return False
            if row["phase"] in ("train", NOTE, STAGE):
                return row["step"] < global_step
            return row["epoch"] < epoch

        try:
            lines = self.metrics_log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        atomic.write_text(self.metrics_log, "".join(line + "\n" for line in lines if line.strip() and saved(line)))

    # --- reading (the viewer, on a worker) -----------------------------------------------------
    def read_spec(self) -> dict | None:
        """``spec.json`` as written, or None when it is missing or unreadable (not a run)."""
        try:
            spec = json.loads(self.spec_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return spec if isinstance(spec, dict) else None

    def read_metrics(self) -> Curves:
        """The rows of ``metrics.jsonl`` (missing file: no points). Torn lines are skipped: a run
        still writing may be read mid-line."""
        train, val = [], []
        try:
            text = self.metrics_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Curves()
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or row.get("phase") not in ("train", "val"):
                continue  # a note, or a row of a later format: not a curve point
            values = {k: _number(v) for k, v in row.items() if k not in _ROW_KEYS}
            point = {"epoch": int(row.get("epoch", 0)), "step": int(row.get("step", 0)), **values}
            (train if row["phase"] == "train" else val).append(point)
        return Curves(train, val)

    def summary(self) -> RunSummary | None:
        """The run's summary, or None when ``spec.json`` is missing or unreadable (not a run)."""
        spec = self.read_spec()
        if spec is None:
            return None
        curves = self.read_metrics()
        last_loss = curves.train[-1]["loss"] if curves.train else None
        val = {k: v for k, v in curves.val[-1].items() if k not in ("epoch", "step")} if curves.val else {}
        epochs_done = max([row["epoch"] + 1 for row in curves.val] or [0])
        return RunSummary(str(self.path), str(spec.get("model", "?")), int(spec.get("epochs", 0)), epochs_done,
                          len(curves.train), last_loss, val, self.has_model(BEST), self.has_model(LAST))


def list_runs(folder: str | os.PathLike) -> list[RunSummary]:
    """Every run directly inside ``folder`` (a missing folder has none), newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    runs = [s for p in folder.iterdir() if p.is_dir() and (s := RunFolder(p).summary()) is not None]
    runs.sort(key=lambda s: Path(s.path).stat().st_mtime, reverse=True)
    return runs
