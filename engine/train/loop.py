"""The training loop: whole slides, one slide-level label each, the trunk streamed tile by tile.

Per optimiser step a group of slides (``accumulate`` per rank) is read by a background thread
and trained on (:class:`~engine.train.step.TrainStep`); a step whose loss or gradient is not
finite is skipped and reported, and ``max_nonfinite`` in a row stop the run. After each epoch
the validation slides are scored (:class:`~engine.train.validator.Validator`) and ``last``
(and, when the monitor improves, ``best``) saved (:class:`~engine.train.checkpointer.Checkpointer`).
The slides of a step depend only on (seed, epoch, slide index) (:class:`~engine.train.feed.SlideFeed`),
so a resumed run sees exactly what an uninterrupted one would. Everything is reported through
events; only rank 0 emits them and writes files.
"""

from __future__ import annotations

import time

import torch

from engine.devices import resolve_device
from engine.errors import Cancelled, RunFolderError, SlideError, SpecError, TrainingError
from engine.events import CancelToken, Event, EventCallback, Finished, JobWarning, Metrics, Progress, StepSkipped
from engine.io.labels import read_labels
from engine.io.runs import BEST, LAST, RunFolder
from engine.specs import TrainingSpec
from engine.train import distributed, precision
from engine.train.checkpointer import RESUME_MAY_CHANGE, Checkpointer, Counters, describe_changes, spec_changes
from engine.train.classifier import Classifier, build_model, calibrate_norms
from engine.train.data import Prefetcher, split_records
from engine.train.feed import SlideFeed
from engine.train.masks import SlideMasks
from engine.train.metrics_log import MetricsLogger
from engine.train.stages import Stages, base_lrs, build_staged_optimizer, build_staged_scheduler
from engine.train.step import FP16_OVERFLOW, SlideForward, TrainStep
from engine.train.tasks import build_task
from engine.train.validator import Validator, improves


def _ignore(event: Event) -> None:
    """Where the events of ranks other than 0 go: one rank reports for all."""


class Trainer:
    """One training run; :func:`engine.api.run_training` builds it and calls :meth:`run`."""

    def __init__(self, spec: TrainingSpec, on_event: EventCallback, cancel: CancelToken):
        if spec.folds > 1:
            raise SpecError(f"folds={spec.folds} is a cross-validation of several runs: "
                            "run it with engine.train.folds.run_folds")
        self.spec, self.cancel = spec, cancel
        device = resolve_device(spec.device)
        self.ctx = distributed.init_from_env(device)
        self.emit = on_event if self.ctx.is_main else _ignore
        try:
            self._build(device)
        except BaseException:
            distributed.shutdown(self.ctx)
            raise

    def _build(self, device: torch.device) -> None:
        spec, ctx = self.spec, self.ctx
        self.device = distributed.device_for_rank(device, ctx)
        self.dtype = precision.parameter_dtype(spec)
        self.run_folder = RunFolder(spec.out_dir)
        # What the folder held before this run: read by every rank before any rank writes (the
        # first collective of run() comes before the first write).
        self.found = self.run_folder.run_files(), self.run_folder.read_spec()

        labels = read_labels(spec.labels, spec.classes, task=spec.task, targets=spec.targets)
        for warning in labels.warnings:
            self.emit(JobWarning(warning, str(spec.labels)))
        self.classes = labels.classes
        train_set, val_set = split_records(labels, spec.val_fraction, spec.seed)
        self.task = build_task(spec, labels, train_set)
        self.feed = SlideFeed(spec, train_set, ctx, self.task.target)

        self.model, card = build_model(spec, self.classes, self.task.card_fields())
        self.model.to(self.device, self.dtype)
        self.classifier = Classifier(self.model, streaming=spec.streaming, tile_size=spec.tile_size,
                                     channels_last=precision.use_channels_last(spec, self.device),
                                     low_memory=spec.low_memory, masked=SlideMasks.used_by(spec, labels.records),
                                     graph_budget=spec.graph_budget)
        self.net: torch.nn.Module = self.classifier  # replaced by the DDP wrapper in run()
        self.feed.masks = SlideMasks(spec.tissue_mask, spec.tissue_params, self.classifier.trunk_grid,
                                     include=spec.include_classes, exclude=spec.exclude_classes, emit=self.emit)

        amp_dtype = precision.autocast_dtype(spec, self.device, self.dtype)
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        optimizer = build_staged_optimizer(spec, self.model, self.classifier.trunk)
        self.counters = Counters(steps_per_epoch=len(self.feed.epoch_groups(0)))
        scheduler = build_staged_scheduler(spec, optimizer, self.counters.steps_per_epoch)

        forward = SlideForward(spec, self.dtype, self.device, amp_dtype)
        self.step = TrainStep(forward, self.model, optimizer, scheduler, scaler, self.task, ctx, self.device)
        self.scheduler = scheduler
        self.validate = Validator(val_set, self.feed, forward, self.task, ctx, self.emit, self.cancel, spec.prefetch)
        # Head epochs on the frozen trunk first when spec.freeze_trunk_epochs > 0 (engine.train.stages).
        self.stages = Stages(spec, self.classifier, self.feed, val_set, self.run_folder, ctx, self.device,
                             forward, self.validate)
        self.metrics = MetricsLogger(self.run_folder, ctx, self.emit)
        self.checkpoints = Checkpointer(self.run_folder, self.model, card, optimizer=optimizer, scheduler=scheduler,
                                        scaler=scaler, ctx=ctx, emit=self.emit)

    def run(self) -> Finished:
        spec, run, counters = self.spec, self.run_folder, self.counters
        refusal, changes = self._check_folder()
        if distributed.any_rank(refusal is not None, self.ctx, self.device):
            distributed.shutdown(self.ctx)
            raise RunFolderError(refusal or "another rank refused the run folder (see its message)")
        if self.ctx.is_main:
            if spec.overwrite:
                run.clear()
            run.create()
        resumed = spec.resume and self.checkpoints.resume(counters)
        if resumed:
            self.metrics.resumed_at(counters.epoch, counters.global_step)
            if changes:
                if "lr" in changes or "epochs" in changes:
                    self.checkpoints.apply_schedule(base_lrs(spec))
                if self.ctx.is_main:
                    run.append_note(counters.epoch, counters.global_step,
                                    f"resumed at step {counters.global_step} with {describe_changes(changes)}")
        elif spec.resume and self.ctx.is_main:
            self.metrics.resumed_at(0, 0)  # nothing saved to resume from: the old rows would be logged again
        if not resumed and spec.pretrained is None and spec.calibrate_norms > 0:
            calibrate_norms(self.classifier, self.feed.calibration_slides(), spec, self.dtype, self.device)
        if self.ctx.is_main:
            run.write_spec(spec.as_json())
        if spec.streaming and not self.ctx.active:
            # One process may stop between tiles; ranks must agree, so they stop between steps only.
            self.classifier.set_should_stop(lambda: self.cancel.cancelled)
        outputs = {"last": str(run.last), "metrics": str(run.metrics_log)}
        self._in_step = False
        try:
            cancelled = self._train(outputs)
            if cancelled is not None:
                return cancelled
        except SlideError as exc:
            # A slide deleted or damaged mid-run: what was saved stays, and the run can go on.
            saved = "the last checkpoint is kept in " + str(run.last) if run.has_model(LAST) else "nothing was saved yet"
            raise type(exc)(f"{exc}; {saved}: restore the slide (or remove it from the labels) and run again "
                            "with --resume (resume=True) to continue the run") from exc
        finally:
            # DDP's reducer holds the process group: release it first, so the group's gloo threads
            # are joined by destroy_process_group here, not by a destructor at interpreter exit
            # (which aborts the process, "terminate called without an active exception").
            self.net = self.classifier
            distributed.shutdown(self.ctx, in_step=self._in_step)
        if run.best.exists():
            outputs["best"] = str(run.best)
        return self._finish(False, outputs)

    def _check_folder(self) -> tuple[str | None, dict]:
        """Why this run may not write into its folder (None: it may), and the spec changes a
        resume applies."""
        spec, (found, saved) = self.spec, self.found
        if not found or spec.overwrite:
            return None, {}
        if not spec.resume:
            return (f"{spec.out_dir} holds another training run ({', '.join(found)}); continue it with --resume "
                    "(resume=True), replace it with --overwrite (overwrite=True), or choose a new folder"), {}
        if saved is None:
            return None, {}
        allowed, refused = spec_changes(saved, spec.as_json())
        if refused:
            return (f"--resume cannot change {describe_changes(refused)} of the run in {spec.out_dir} "
                    f"(a resume may change only {', '.join(RESUME_MAY_CHANGE)}); use the saved values, "
                    "or start a new run in another folder (or with --overwrite)"), {}
        return None, allowed

    def _train(self, outputs: dict) -> Finished | None:
        """The epochs; the cancelled run's Finished, or None at the end. ``self._in_step`` tells
        the shutdown whether every rank got to the same point (the end, or an agreed cancel)."""
        spec, run, counters = self.spec, self.run_folder, self.counters
        self._in_step = False
        while counters.epoch < spec.epochs:
            stage = self.stages.enter(counters.epoch, counters.global_step, counters.step_in_epoch)
            if stage is not None:
                self.net, self.step.forward, self.validate = stage
            if not self._run_epoch():
                self._in_step = True
                return self._finish(True, outputs)
            try:
                metrics = self.validate(self.classifier)
            except Cancelled:
                self.checkpoints.save(LAST, counters)
                self._in_step = True
                return self._finish(True, outputs)
            epoch_done = counters.epoch
            counters.epoch, counters.step_in_epoch = counters.epoch + 1, 0
            if metrics is not None:
                self.metrics.log(Metrics("val", epoch_done, counters.global_step, metrics))
                if improves(spec.monitor, metrics[spec.monitor], counters.best_value):
                    counters.best_value = metrics[spec.monitor]
                    self.checkpoints.save(BEST, counters)
                    outputs["best"] = str(run.best)
            self.checkpoints.save(LAST, counters)
        self._in_step = True
        return None

    def _run_epoch(self) -> bool:
        """Train one epoch from ``step_in_epoch``; False when cancelled (after saving ``last``)."""
        spec, counters, epoch = self.spec, self.counters, self.counters.epoch
        groups = self.feed.epoch_groups(epoch)
        t0 = time.perf_counter()
        first = counters.step_in_epoch
        self.net.train()
        with Prefetcher(self.stages.train_jobs(epoch, groups, first), depth=spec.prefetch) as slides:
            stream = iter(slides)
            while counters.step_in_epoch < len(groups):
                if distributed.any_rank(self.cancel.cancelled, self.ctx, self.device):
                    self.checkpoints.save(LAST, counters)
                    return False
                items = [next(stream) for _ in self.feed.share(groups[counters.step_in_epoch])]
                try:
                    loss, skipped = self.step(self.net, items)
                except Cancelled:  # a single-process run stopped between tiles: the step is dropped
                    self.step.drop()
                    self.checkpoints.save(LAST, counters)
                    return False
                step = counters.global_step
                self._count(skipped, step)
                counters.step_in_epoch += 1
                self.metrics.log(Metrics("train", epoch, step, self.stages.train_values(loss, self.scheduler)))
                done, total = counters.step_in_epoch, len(groups)
                elapsed = time.perf_counter() - t0
                self.emit(Progress("train", done, total, elapsed, elapsed / (done - first) * (total - done)))
                if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < total:
                    self.checkpoints.save(LAST, counters)
        return True

    def _count(self, skipped: str | None, step: int) -> None:
        """Report a skipped step; too many in a row (fp16 overflows aside) stop the run."""
        counters = self.counters
        if not skipped:
            counters.nonfinite_run = 0
            return
        counters.nonfinite_run += 0 if skipped == FP16_OVERFLOW else 1
        self.emit(StepSkipped(counters.epoch, step, skipped))
        if counters.nonfinite_run >= self.spec.max_nonfinite:
            raise TrainingError(f"{counters.nonfinite_run} steps in a row had a non-finite loss or gradient "
                                f"(last at step {step}); lower the learning rate or check the data. "
                                "The last checkpoint holds the weights from before.")

    def _finish(self, cancelled: bool, outputs: dict) -> Finished:
        self.stages.close()  # the trunk-map cache goes at the end and on a clean cancel
        done = Finished(cancelled, outputs)
        self.emit(done)
        return done
