"""k-fold cross-validation: ``spec.folds`` runs, each holding out one fold of patients.

Slides are grouped by patient (a slide without a patient is its own group), so a patient's
slides never straddle training and held-out data. Groups are shuffled with ``spec.seed`` and
dealt, largest first, to the fold with the fewest slides (for classification: the fewest of that
group's class first), so folds are near equal in size and class mix. Rows whose split is
``test`` stay out of every fold (a final held-out set). Fold ``k`` is an ordinary run in
``out_dir/fold-<k>`` trained on its own ``labels.csv`` (the other folds as ``train``, fold ``k``
as ``val``), so each fold can be inspected, resumed and evaluated like any run. ``folds.json``
summarises the last validation of each fold: mean and standard deviation (n - 1) of every metric.
Under the held-out fold the ``best`` checkpoint is chosen on that fold, so the summary uses the
last epoch's metrics, not the best ones.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import LabelsError
from engine.events import CancelToken, EventCallback, Finished, Metrics
from engine.io import atomic
from engine.io.labels import LabelSet, SlideRecord, read_labels
from engine.specs import TrainingSpec
from engine.train.loop import Trainer

SUMMARY = "folds.json"


def assign_folds(labels: LabelSet, k: int, seed: int) -> list[int | None]:
    """The fold of each record (None for ``test`` rows); a patient's slides share one fold."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(labels.records):
        if r.split != "test":
            groups.setdefault(r.patient if r.patient is not None else f"slide:{r.path}", []).append(i)
    if len(groups) < k:
        raise LabelsError(f"{k} folds need at least {k} patients (or slides without a patient), "
                          f"the labels have {len(groups)}")
    rng = np.random.default_rng([seed, 11])
    order = [list(groups.values())[j] for j in rng.permutation(len(groups))]
    order.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    n_classes = len(labels.classes) if labels.task == "classification" else 1
    per_class = np.zeros((k, n_classes), np.int64)
    out: list[int | None] = [None] * len(labels.records)
    for members in order:
        c = labels.records[members[0]].label if labels.task == "classification" else 0
        fold = min(range(k), key=lambda f: (per_class[f, c], per_class[f].sum(), f))
        per_class[fold, c] += len(members)
        for i in members:
            out[i] = fold
    return out


def _value_text(labels: LabelSet, record: SlideRecord) -> list[str]:
    if labels.task == "classification":
        return [labels.classes[record.label]]
    if labels.task == "multilabel":
        return [str(int(v)) for v in record.values]
    return [repr(float(v)) for v in record.values]


def fold_labels_text(labels: LabelSet, folds: Sequence[int | None], fold: int, folder: Path) -> str:
    """The labels CSV of one fold: slide paths relative to ``folder``, its own split column."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    with_patient = labels.has_patients
    w.writerow(["slide", *labels.targets, "split"] + (["patient"] if with_patient else []))
    for r, f in zip(labels.records, folds, strict=True):
        if f is None:
            continue
        w.writerow([os.path.relpath(r.path, folder), *_value_text(labels, r), "val" if f == fold else "train"]
                   + ([r.patient or ""] if with_patient else []))
    return out.getvalue()


def run_folds(spec: TrainingSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """Train every fold in turn, then write ``out_dir/folds.json``; a cancel stops after saving
    the current fold (rerun with the fold's own spec and ``resume`` to continue it)."""
    cancel = cancel or CancelToken()
    labels = read_labels(spec.labels, spec.classes, task=spec.task, targets=spec.targets)
    folds = assign_folds(labels, spec.folds, spec.seed)
    root = Path(spec.out_dir)
    outputs, last_val = {}, []
    for k in range(spec.folds):
        folder = root / f"fold-{k}"
        atomic.make_folder(folder)
        csv_path = atomic.write_text(folder / "labels.csv", fold_labels_text(labels, folds, k, folder))
        fold_spec = dataclasses.replace(spec, labels=str(csv_path), out_dir=str(folder), folds=1,
                                        classes=labels.classes if spec.task == "classification" else None,
                                        targets=labels.targets)
        seen: list[dict] = []

        def on_fold_event(event, seen=seen):
            if isinstance(event, Metrics) and event.phase == "val":
                seen.append(dict(event.values))
            if not isinstance(event, Finished):  # one Finished, for the whole cross-validation
                on_event(event)

        done = Trainer(fold_spec, on_fold_event, cancel).run()
        outputs[f"fold-{k}"] = str(folder)
        if done.cancelled:
            return _finish(on_event, True, outputs)
        last_val.append(seen[-1] if seen else {})
    summary = summarise(last_val)
    summary.update({"folds": spec.folds, "seed": spec.seed, "grouping": "patient" if labels.has_patients else "slide",
                    "metrics_of": "the last epoch's validation on each held-out fold"})
    outputs["summary"] = str(atomic.write_json(root / SUMMARY, summary, allow_nan=False))
    return _finish(on_event, False, outputs)


def summarise(per_fold: Sequence[dict]) -> dict:
    """``{"metrics": {name: {"mean", "std", "values"}}}`` over folds (non-finite values left out)."""
    names = sorted({k for values in per_fold for k in values})
    out = {}
    for name in names:
        values = [float(v[name]) for v in per_fold if name in v and v[name] is not None and math.isfinite(v[name])]
        mean = float(np.mean(values)) if values else None
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        out[name] = {"mean": mean, "std": std, "values": values}
    return {"metrics": out}


def _finish(on_event: EventCallback, cancelled: bool, outputs: dict) -> Finished:
    done = Finished(cancelled, outputs)
    on_event(done)
    return done


def train(spec: TrainingSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """One run, or ``spec.folds`` of them (what :func:`engine.api.run_training` calls)."""
    if spec.folds > 1:
        return run_folds(spec, on_event, cancel)
    return Trainer(spec, on_event, cancel or CancelToken()).run()
