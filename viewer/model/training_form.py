"""The training form: what the next fine-tuning run asks for, and the
:class:`~engine.specs.TrainingSpec` it makes; plus the run's state as the form shows it.

Pause has no engine counterpart: it saves the last checkpoint at the next step and stops, and
Resume starts again from that checkpoint (exactly: same data order, optimiser and RNG state).
"""

from __future__ import annotations

import time
from pathlib import Path

from engine import api
from engine.errors import SpecError
from engine.specs import DEVICES, HEADS, TrainingSpec, parse_bytes
from viewer.model.inference import ModelChoice
from viewer.model.labels import LabelTable
from viewer.model.notify import Fields

#: Where the labels come from: the slide browser's (right-click a slide) or an imported CSV.
LABEL_SOURCES = ("browser", "csv")
#: Where the initial weights come from: random, an ImageNet state dict, the Model panel's model.
BASES = ("random", "imagenet", "loaded")
#: How the input resolution is given.
INPUT_UNITS = ("µm/px", "level")
DEFAULT_MODELS = ("resnet18", "resnet34", "resnet50", "smallnet")
#: Run states: "running" and "stopping" are busy; "paused" and "cancelled" can be resumed.
BUSY_STATES = ("running", "stopping")
RESUMABLE_STATES = ("paused", "cancelled")
#: Answers to "training is running: close the window?"
CLOSE_CANCEL, CLOSE_BACKGROUND, CLOSE_STAY = "cancel", "background", "stay"
NO_LABELS = "No labels yet: right-click slides in the browser, or import a CSV"
TASKS = TrainingSpec.TASKS
#: The metric each task's run monitors (picks best/ and is drawn in the curves), as the CLI's
#: defaults (engine.train.cli.DEFAULT_MONITOR, which the viewer does not import).
MONITOR_FOR_TASK = {"classification": "auc", "multilabel": "macro_auc", "regression": "spearman"}
#: How the curves name a monitored metric.
MONITOR_NAMES = {"auc": "AUC", "macro_auc": "macro AUC", "accuracy": "accuracy", "loss": "loss",
                 "spearman": "Spearman ρ", "pearson": "Pearson r", "mae": "MAE", "r2": "R²"}


def new_run_name() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S")


def checkpoint_weights(model_path: str) -> str:
    """The weights file of a checkpoint given as its folder, ``model.json`` or ``model.safetensors``
    (the checkpoint layout is the engine's: :func:`engine.api.checkpoint_weights`)."""
    return str(api.checkpoint_weights(model_path))


def labels_summary(source: str, rows: dict[str, str], classes: tuple[str, ...] | list[str]) -> str:
    counts = {c: 0 for c in classes}
    for label in rows.values():
        counts[label] = counts.get(label, 0) + 1
    return f"{source}: {len(rows)} slides · " + ", ".join(f"{c} ({n})" for c, n in counts.items())


class TrainingForm(Fields):
    """The form's fields (changed through :meth:`~viewer.model.notify.Fields.set`, which notifies
    ``changed(name)``). ``advanced`` holds spec fields the form does not show (normalisation,
    augmentation, model kwargs, ...); the architecture of a loaded starting model overrides them."""

    FIELDS = ("labels_source", "csv_path", "labels_summary", "model", "architectures", "base", "weights",
              "input_by", "input_value", "input_size", "tile_size", "epochs", "lr", "device", "run_dir",
              "update_saliency", "state", "graph_budget", "plan_text",
              "task", "columns", "targets", "head", "tissue_mask", "freeze_trunk_epochs", "finetune_lr", "finetune_tile",
              "spec_problem")

    def __init__(self) -> None:
        super().__init__()
        self.labels_source, self.csv_path, self.labels_summary = "browser", None, NO_LABELS
        self.model, self.architectures = "resnet34", DEFAULT_MODELS
        self.base, self.weights = "random", ""
        self.input_by, self.input_value, self.input_size, self.tile_size = "µm/px", 1.0, 4096, 1024
        self.epochs, self.lr, self.device = 10, 1e-4, DEVICES[0]
        self.run_dir = ""
        self.update_saliency = False
        self.state = "idle"
        # Graph budget as typed ("" none, "2G", "auto"), and the plan it gives (computed on a worker).
        self.graph_budget, self.plan_text = "", NO_PLAN
        # The research-loop fields: the task and its target columns (``columns``: the imported
        # CSV's), the head, the tissue mask, the head-only epochs on a frozen trunk (then the
        # trunk's learning rate and tile, 0: the same lr and tile); ``spec_problem``: why the form
        # cannot start.
        self.task, self.columns, self.targets = "classification", (), ()
        self.head, self.tissue_mask = "max", True
        self.freeze_trunk_epochs, self.finetune_lr, self.finetune_tile = 0, 0.0, 0
        self.spec_problem = ""
        self.advanced: dict = {}

    @property
    def use_csv(self) -> bool:
        return self.labels_source == "csv"

    @property
    def busy(self) -> bool:
        return self.state in BUSY_STATES

    @property
    def monitor(self) -> str:
        return MONITOR_FOR_TASK[self.task]

    def set_columns(self, columns: tuple[str, ...] | list[str]) -> None:
        """An imported CSV's target columns; the targets default to what the task takes from
        them (classification: ``label`` or the first column; otherwise every column)."""
        columns = tuple(columns)
        kept = tuple(t for t in self.targets if t in columns)
        self.set(columns=columns, targets=kept or self.default_targets(columns))

    def default_targets(self, columns: tuple[str, ...]) -> tuple[str, ...]:
        if not columns:
            return ()
        if self.task == "classification":
            return ("label",) if "label" in columns else columns[:1]
        return columns

    def research_fields(self) -> dict:
        """The TrainingSpec fields of the task, targets, head, tissue mask and staged training
        (the trunk's learning rate and tile only with frozen epochs: they apply after them)."""
        staged = int(self.freeze_trunk_epochs) > 0
        return {"task": self.task, "targets": tuple(self.targets) or None, "monitor": self.monitor,
                "head": self.head, "tissue_mask": "auto" if self.tissue_mask else "none",
                "freeze_trunk_epochs": int(self.freeze_trunk_epochs),
                "finetune_lr": float(self.finetune_lr) if staged and self.finetune_lr else None,
                "finetune_tile": int(self.finetune_tile) if staged and self.finetune_tile else None}

    def check(self, loaded: ModelChoice) -> str:
        """What stops this form from making a spec (the SpecError's text), or "" when nothing does.
        Labels are not opened here: the spec's own fields and their combinations are checked."""
        try:
            self.build_spec("labels.csv", loaded)
        except SpecError as exc:
            return str(exc)
        except ValueError:
            return ""  # a missing choice (weights, a loaded model) is reported at Start, with what to do
        return ""

    def set_architectures(self, names: list[str]) -> None:
        """The registry's architectures; the chosen one stays when it is listed."""
        current = self.model
        self.set(architectures=tuple(names), model=current if current in names else (names[0] if names else current))

    def level_and_mpp(self) -> tuple[int | None, float | None]:
        if self.input_by == "level":
            return int(self.input_value), None
        return None, (self.input_value or None)

    def labels_file(self, table: LabelTable) -> str:
        """The labels the run trains on: the imported CSV, or the browser's labels, which are
        written to ``labels.csv`` in the run folder. ValueError saying what is missing."""
        if self.use_csv:
            if not self.csv_path:
                raise ValueError("import a labels CSV first (or label slides in the slide browser)")
            return self.csv_path
        if len(table.classes) < 2:
            raise ValueError("label slides of at least two classes in the slide browser "
                             "(right-click a slide), or import a labels CSV")
        return str(Path(self.run_dir.strip()) / "labels.csv")

    def base_model_fields(self, loaded: ModelChoice) -> dict:
        """Architecture fields and initial weights from the "start from" choice."""
        if self.base == "loaded":
            card = loaded.card
            if card is None or loaded.path is None:
                raise ValueError("no model is loaded in the Model panel; load one or choose another starting point")
            head = getattr(card, "head", None) or card.pool
            # The loaded model's head, with its arguments, so its trained head carries over (the
            # panel shows it and locks the head choice while starting from the loaded model).
            return {"model": card.architecture, "split": card.split, "pool": card.pool,
                    "head": head if head in HEADS else None, "head_kwargs": dict(getattr(card, "head_kwargs", None) or {}),
                    "model_kwargs": dict(card.model_kwargs or {}), "pretrained": checkpoint_weights(loaded.path)}
        fields = {"model": self.model.strip()}
        if self.base == "imagenet":
            if not self.weights.strip():
                raise ValueError("choose the ImageNet weights file (a torchvision or timm state dict)")
            fields["pretrained"] = self.weights.strip()
        return fields

    def graph_budget_value(self) -> int | str | None:
        """The typed graph budget as the spec takes it (SpecError, a ValueError, when unreadable)."""
        text = self.graph_budget.strip()
        return parse_bytes(text) if text else None

    def build_spec(self, labels: str, loaded: ModelChoice) -> TrainingSpec:
        level, mpp = self.level_and_mpp()
        fields = {"labels": labels, "out_dir": self.run_dir.strip(), "level": level, "mpp": mpp,
                  "input_size": self.input_size or None, "tile_size": self.tile_size,
                  "epochs": self.epochs, "lr": self.lr, "device": self.device,
                  "graph_budget": self.graph_budget_value(), **self.research_fields()}
        fields.update(self.advanced)
        fields.update(self.base_model_fields(loaded))  # the loaded model's architecture wins over advanced kwargs
        return TrainingSpec(**fields)


NO_PLAN = "Plan: press Plan to see the tiles and what the graph budget keeps"


def _mib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan_text(plan: dict) -> str:
    """One line for :func:`engine.api.plan_training`'s plan: tile, blocks, kept, estimated peak."""
    h, w = plan["in_hw"]
    if not plan.get("streaming", True):
        return f"Plan: {w}×{h} px input, trunk not streamed (conventional back-propagation)"
    budget = plan.get("graph_budget")
    kept = "whole input as one block" if plan.get("whole_image") else f"{plan['kept']} of {plan['blocks']} kept"
    tile = plan["tile"]
    return (f"Plan ({plan['device']}): {w}×{h} px input, tile {tile[1]}×{tile[0]}, {plan['blocks']} blocks, "
            f"{kept} ({plan['recomputed']} recomputed), budget {_mib(budget) if budget is not None else 'none'}, "
            f"estimated peak {_mib(plan['estimated_peak_bytes'])}")
