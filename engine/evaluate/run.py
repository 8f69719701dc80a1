"""Cohort evaluation: a trained model on every slide of a labels CSV, scored with intervals.

Each slide is read as training reads it (:func:`engine.train.data.read_slide_input`, at the
card's MPP or level and, by default, the input size the model was trained at) and streamed
through the trunk as the trainer's validator does (:class:`engine.train.classifier.Classifier`).
A slide that fails is reported (a :class:`~engine.events.JobWarning` and a row of
``metrics.json``'s ``failed``) and skipped. Under ``torchrun`` each rank evaluates its share of
the slides and rank 0 writes the results. A cancelled evaluation writes what it has, marked
``"cancelled": true``. With ``keep_maps`` each slide's prediction map is written as it is
scored (:mod:`engine.evaluate.maps`) and ``metrics.json``'s ``maps`` names each file.
Cancellation is checked between slides and, through the streamed trunk's ``should_stop``, between tiles.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.devices import resolve_device
from engine.errors import Cancelled, LabelsError
from engine.evaluate import files
from engine.evaluate.maps import CellMap, input_region, maps_folders, write_slide_maps
from engine.evaluate.plot import plot_svg
from engine.evaluate.report import Predictions, cohort_metrics, format_table
from engine.events import CancelToken, EventCallback, Finished, JobWarning, Progress
from engine.geometry import head_cell_hw
from engine.io import atomic
from engine.io.checkpoints import load_checkpoint
from engine.io.labels import read_labels
from engine.metrics import predicted_classes
from engine.specs import EvaluationSpec
from engine.train import distributed
from engine.train.classifier import Classifier
from engine.train.data import Augmentation, InputSpec, Prefetcher, input_source, read_slide_placed
from engine.train.masks import SlideMasks
from engine.train.tasks import task_from_card


@dataclass(frozen=True)
class EvaluationResult:
    cancelled: bool
    outputs: dict[str, str]
    metrics: dict
    table: str
    failed: list[dict] = field(default_factory=list)


def _ignore(event) -> None:
    """Where the events of ranks other than 0 go."""


def evaluate(spec: EvaluationSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> EvaluationResult:
    cancel = cancel or CancelToken()
    device = resolve_device(spec.device)
    ctx = distributed.init_from_env(device)
    try:
        return _evaluate(spec, on_event if ctx.is_main else _ignore, cancel, ctx,
                         distributed.device_for_rank(device, ctx))
    finally:
        distributed.shutdown(ctx, in_step=False)


def _evaluate(spec: EvaluationSpec, emit, cancel: CancelToken, ctx, device: torch.device) -> EvaluationResult:
    model, card = load_checkpoint(spec.model, device="cpu")
    task = task_from_card(card)
    targets = spec.targets or card.targets or None
    labels = read_labels(spec.labels, card.classes if card.task == "classification" else None, task=card.task,
                         targets=targets)
    if card.task != "classification" and labels.classes != card.classes:
        raise LabelsError(f"{spec.labels}: the target columns {', '.join(labels.classes)} are not the model's "
                          f"{', '.join(card.classes)}; name them with --targets")
    for warning in labels.warnings:
        emit(JobWarning(warning, str(spec.labels)))
    dtype = torch.float64 if spec.dtype == "float64" else torch.float32
    net = Classifier(model.to(device, dtype), streaming=True, tile_size=spec.tile_size or card.tile_size).eval()
    if not ctx.active:
        net.set_should_stop(lambda: cancel.cancelled)
    size = spec.input_size if spec.input_size is not None else card.provenance.get("input_size")
    inputs = InputSpec(level=spec.level if spec.level is not None or spec.mpp is not None else card.input_level,
                       mpp=spec.mpp if spec.level is not None or spec.mpp is not None else card.input_mpp,
                       size=size, tissue_crop=spec.tissue_crop)

    records = list(labels.records)
    mine = list(range(len(records)))[ctx.rank::ctx.world_size]
    folders = maps_folders(spec.out_dir, [str(r.path) for r in records]) if spec.keep_maps else {}
    # The masks the model was trained with (the spec may override the tissue detection).
    masks = SlideMasks(spec.tissue_mask or card.tissue_mask or "none", card.tissue_params, net.trunk_grid,
                       include=card.provenance.get("include_classes", ()),
                       exclude=card.provenance.get("exclude_classes", ()), emit=emit)

    def job(i: int):
        try:
            region = input_region(records[i].path, inputs) if spec.keep_maps else None
            rgb, placement = read_slide_placed(records[i].path, inputs)
            return i, (rgb, masks(records[i], rgb, placement, Augmentation()), region), None
        except Exception as exc:  # reported and skipped: one bad slide must not stop a cohort  # noqa: BLE001
            return i, None, exc

    def forward(src, mask) -> tuple[torch.Tensor, CellMap | None]:
        if not spec.keep_maps:
            return net(src, mask), None
        cells = CellMap(task, net.head, mask)
        if net.pooled_head:  # the cells come block by block, from the pass that pools them
            hooks, net.hooks = net.hooks, dataclasses.replace(net.hooks, on_block=cells.on_block)
            try:
                return net(src, mask), cells
            finally:
                net.hooks = hooks
        fmap = net.trunk_map(src, mask)  # blocks without tissue stay NaN in the kept map
        cells.put_all(fmap)
        return net.head(fmap, mask), cells

    rows, failed, cancelled, kept = [], [], False, []
    t0 = time.perf_counter()
    with torch.no_grad(), Prefetcher([lambda i=i: job(i) for i in mine], depth=spec.prefetch) as slides:
        for k, (i, read, error) in enumerate(slides):
            if cancel.cancelled and not ctx.active:
                cancelled = True
                break
            record = records[i]
            try:
                if error is not None:
                    raise error
                rgb, mask, region = read
                src = input_source(rgb, Augmentation(), card.normalization_mean, card.normalization_std, dtype=dtype)
                logits, cells = forward(src, mask)
                outputs = task.outputs(logits.to(torch.float64))
                if cells is not None and (values := cells.values()) is not None:
                    npz = write_slide_maps(folders[str(record.path)], str(record.path), region, values,
                                           head_cell_hw(net.runner.stride, net.head.stride), card.classes,
                                           outputs, card.task)
                    kept.append((str(record.path), str(Path(npz).relative_to(spec.out_dir))))
                rows.append((i, outputs))
            except Cancelled:
                cancelled = True
                break
            except Exception as exc:  # noqa: BLE001 - as above
                failed.append({"slide": str(record.path), "where": record.where, "error": f"{type(exc).__name__}: {exc}"})
                emit(JobWarning(f"{record.path.name} failed and was skipped: {exc}", str(record.path)))
            elapsed = time.perf_counter() - t0
            emit(Progress("evaluate", k + 1, len(mine), elapsed, elapsed / (k + 1) * (len(mine) - k - 1)))
    rows = sorted(distributed.gather_lists(rows, ctx))
    failed = distributed.gather_lists(failed, ctx)
    kept = distributed.gather_lists(kept, ctx)
    if not ctx.is_main:
        return EvaluationResult(cancelled, {}, {}, "", failed)
    return _write(spec, card, labels, records, rows, failed, cancelled, emit, dict(kept))


def _write(spec, card, labels, records, rows, failed, cancelled, emit, kept: dict[str, str]) -> EvaluationResult:
    done = [records[i] for i, _ in rows]
    outputs = np.array([o for _, o in rows], np.float64).reshape(len(rows), len(card.classes))
    truths = (np.array([r.label for r in done], np.int64) if card.task == "classification"
              else np.array([r.values for r in done], np.float64).reshape(len(done), len(card.classes)))
    pred = Predictions(card.task, card.classes, tuple(str(r.path) for r in done), truths, outputs,
                       tuple(r.patient for r in done) if labels.has_patients else None)
    if rows:
        result = cohort_metrics(pred, threshold=spec.threshold, patient_aggregate=spec.patient_aggregate,
                                n_boot=spec.bootstrap, seed=spec.seed)
    else:
        result = {"task": card.task, "names": list(card.classes)}
    result.update({"model": str(spec.model), "labels": str(spec.labels), "cancelled": cancelled,
                   "evaluated": len(rows), "failed": failed, "spec": spec.as_json()})
    if spec.keep_maps:
        result["maps"] = kept  # slide -> its maps.npz, relative to out_dir
    out = Path(spec.out_dir)
    atomic.make_folder(out)
    predicted = predicted_classes(outputs, spec.threshold) if card.task == "classification" and rows else None
    paths = {"predictions": str(files.write_predictions(out, pred, labels.targets, predicted))}
    if rows:
        paths["plot"] = str(atomic.write_text(out / files.PLOT, plot_svg(pred)))
    paths["metrics"] = str(files.write_metrics(out, result))
    table = format_table(result) if rows else "no slide was evaluated"
    if cancelled:
        table = "CANCELLED: only the slides evaluated so far are scored\n" + table
    emit(Finished(cancelled, paths))
    return EvaluationResult(cancelled, paths, result, table, failed)
