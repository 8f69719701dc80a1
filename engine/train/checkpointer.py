"""Saving and resuming a run: the ``last`` and ``best`` training checkpoints of its run folder,
and the counters that say where in the run they were taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.errors import TrainingError
from engine.events import CheckpointSaved, Event
from engine.io.checkpoints import ModelCard
from engine.io.runs import LAST, RunFolder
from engine.io.training_state import find_checkpoint, load_training_state, save_training_state
from engine.train.distributed import DistContext


@dataclass
class Counters:
    """Where the run is: saved with every checkpoint, restored on resume."""

    steps_per_epoch: int
    epoch: int = 0
    step_in_epoch: int = 0
    best_value: float | None = None  # of the validation monitor
    nonfinite_run: int = 0  # skipped steps in a row

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def to_json(self, classes: tuple[str, ...]) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch, "best_value": self.best_value,
                "nonfinite_run": self.nonfinite_run, "classes": list(classes)}


class Checkpointer:
    """Writes (rank 0 only) and reads the run's training checkpoints, announcing each save."""

    def __init__(self, run: RunFolder, model: torch.nn.Module, card: ModelCard, *, optimizer, scheduler, scaler,
                 ctx: DistContext, emit: Callable[[Event], None]):
        self.run, self.model, self.card, self.ctx, self.emit = run, model, card, ctx, emit
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler

    def save(self, kind: str, counters: Counters) -> None:
        if not self.ctx.is_main:
            return
        path = save_training_state(self.run.checkpoint(kind), self.model, self.card, optimizer=self.optimizer,
                                   scheduler=self.scheduler, scaler=self.scaler,
                                   counters=counters.to_json(tuple(self.card.classes)))
        self.emit(CheckpointSaved(kind, str(path), counters.epoch, counters.global_step))

    def resume(self, counters: Counters) -> bool:
        """Restore the model, optimiser, schedule, scaler, RNG and ``counters`` from ``last``;
        False when there is none. A checkpoint of another data set is a TrainingError."""
        found = find_checkpoint(self.run.checkpoint(LAST))
        if found is None:
            return False
        saved = load_training_state(found, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                    scaler=self.scaler)
        if saved["steps_per_epoch"] != counters.steps_per_epoch or tuple(saved["classes"]) != tuple(self.card.classes):
            raise TrainingError(f"{found} was written for another data set ({saved['steps_per_epoch']} steps "
                                f"per epoch, classes {saved['classes']}); use a new out_dir or the same labels")
        counters.epoch, counters.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
        counters.best_value, counters.nonfinite_run = saved["best_value"], saved["nonfinite_run"]
        return True
