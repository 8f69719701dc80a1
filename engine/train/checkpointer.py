"""Saving and resuming a run: the ``last`` and ``best`` training checkpoints of its run folder,
and the counters that say where in the run they were taken."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from engine.errors import RunFolderError
from engine.events import CheckpointSaved, Event
from engine.io.checkpoints import ModelCard, read_model_card
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


#: Spec fields a resumed run may change: how long it goes on, how fast it learns from here, and
#: how it is run, none of which changes what the checkpoint holds. The learning rate and the
#: epochs are applied to the restored schedule (:meth:`Checkpointer.apply_changes`).
RESUME_MAY_CHANGE = ("epochs", "lr", "checkpoint_every", "max_nonfinite", "prefetch", "device", "low_memory",
                     "mixed_precision", "channels_last", "calibrate_norms", "resume", "overwrite")


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def spec_changes(saved: dict, new: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """``(allowed, refused)``: the fields whose value differs between a run's saved ``spec.json``
    and the spec resuming it, each ``name: (saved value, new value)``. Fields the saved spec
    lacks (written by an older StreamSlide) are not compared."""
    allowed, refused = {}, {}
    for name, value in new.items():
        if name not in saved or _plain(saved[name]) == _plain(value):
            continue
        (allowed if name in RESUME_MAY_CHANGE else refused)[name] = (saved[name], value)
    return allowed, refused


def describe_changes(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())


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
        theirs = read_model_card(found)
        differ = {name: (getattr(theirs, name), getattr(self.card, name))
                  for name in ("architecture", "split", "pool", "model_kwargs", "classes")
                  if _plain(getattr(theirs, name)) != _plain(getattr(self.card, name))}
        if differ:
            raise RunFolderError(f"cannot resume from {found}: it holds another model ({describe_changes(differ)}); "
                                "resume with the same model, or start a new run in another folder (or with --overwrite)")
        options = [sorted(group) for group in self.optimizer.param_groups]
        try:
            saved = load_training_state(found, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                        scaler=self.scaler)
            # torch loads another optimiser's hyper-parameters without a word (AdamW's into SGD),
            # and the first step then fails on a missing one
            if [sorted(group) for group in self.optimizer.param_groups] != options:
                raise KeyError(f"its optimiser has the options {', '.join(sorted(self.optimizer.param_groups[0]))}")
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # another optimiser's or schedule's state
            raise RunFolderError(f"cannot resume from {found}: its optimiser state does not fit this run "
                                f"({type(exc).__name__}: {exc}); resume with the same optimizer, or start a new "
                                "run in another folder (or with --overwrite)") from exc
        if saved["steps_per_epoch"] != counters.steps_per_epoch or tuple(saved["classes"]) != tuple(self.card.classes):
            raise RunFolderError(f"{found} was written for another data set ({saved['steps_per_epoch']} steps "
                                f"per epoch, classes {saved['classes']}); use a new out_dir or the same labels")
        counters.epoch, counters.step_in_epoch = saved["epoch"], saved["step_in_epoch"]
        counters.best_value, counters.nonfinite_run = saved["best_value"], saved["nonfinite_run"]
        return True

    def apply_schedule(self, lr: float | Sequence[float]) -> None:
        """After :meth:`resume` with another learning rate or number of epochs: the restored
        optimiser and schedule continue from base rate ``lr`` (one, or one per param group) on the
        new schedule (the schedule's length comes from the spec that built it, its position from
        the checkpoint)."""
        scheduler = self.scheduler
        lrs = [lr] * len(scheduler.base_lrs) if isinstance(lr, (int, float)) else list(lr)
        scheduler.base_lrs = lrs
        for group, factor, base in zip(self.optimizer.param_groups, scheduler.lr_lambdas, lrs, strict=True):
            group["initial_lr"] = base
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
