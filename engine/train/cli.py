"""The training command's task and cross-validation options (``python -m engine train``):
``add_task_arguments`` adds them to its parser, ``task_fields`` turns them into TrainingSpec
fields. The defaults and choices are the spec's."""

from __future__ import annotations

import argparse

from engine.specs import TrainingSpec

#: The monitor a task validates on when --monitor is not given.
DEFAULT_MONITOR = {"classification": "auc", "multilabel": "macro_auc", "regression": "spearman"}


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainingSpec(labels="", out_dir="")
    p.add_argument("--task", default=d.task, choices=TrainingSpec.TASKS,
                   help="classification (one label column of classes), multilabel (several 0/1 columns) or "
                        f"regression (numeric columns) (default {d.task})")
    p.add_argument("--targets", help="the labels CSV's target column(s), comma-separated (default: every column "
                                     "but slide, split and patient)")
    p.add_argument("--loss", default=d.loss, choices=TrainingSpec.LOSSES, help="regression loss (default mse)")
    p.add_argument("--folds", type=int, default=d.folds,
                   help="k-fold cross-validation by patient: OUT/fold-<k> per fold and OUT/folds.json (default 1)")
    p.add_argument("--monitor", choices=TrainingSpec.MONITORS,
                   help="validation metric that picks best/ (default: auc, macro_auc for multilabel, spearman for "
                        "regression)")


def task_fields(args: argparse.Namespace) -> dict:
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else None
    return {"task": args.task, "targets": targets, "loss": args.loss, "folds": args.folds,
            "monitor": args.monitor or DEFAULT_MONITOR[args.task]}
