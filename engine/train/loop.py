"""The training loop: whole slides, one slide-level label each, the trunk streamed tile by tile.

Per optimiser step a group of slides (``accumulate`` per rank) is read by a background thread,
each slide runs trunk (streamed) -> head -> weighted cross-entropy -> backward, gradients add
up, and the step is taken unless the loss or a gradient is not finite (then it is skipped and
reported; ``max_nonfinite`` in a row stop the run). The data order and augmentation of a slide
depend only on (seed, epoch, slide index), so a run resumed from a checkpoint sees exactly the
slides an uninterrupted run would, and a fixed-seed CPU run is reproducible bit for bit.
Everything is reported through events; only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.devices import resolve_device
from engine.train import distributed
from engine.io.checkpoints import ModelCard, load_pretrained_backbone
from engine.train.data import (Augmentation, InputSpec, Prefetcher, SlideRecord, draw_augmentation, input_source,
                         read_labels, read_slide_input, split_records)
from engine.errors import Cancelled, TrainingError
from engine.events import CancelToken, CheckpointSaved, EventCallback, Finished, Metrics, Progress, StepSkipped
from engine.specs import TrainingSpec
from engine.metrics import classification_metrics
from engine.models import SplitNet, create_model
from engine.streaming import StreamingModule
from engine.streaming.graph import FROZEN_MODULES
from engine.train.state import find_checkpoint, load_training_state, save_training_state

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
MONITORS = {"auc": 1.0, "accuracy": 1.0, "loss": -1.0}  # sign: +1 higher is better
DTYPES = {"float32": torch.float32, "float64": torch.float64}
METRICS_LOG = "metrics.jsonl"
CALIBRATION_CROP = 1024  # input pixels per side of the crops that set BatchNorm statistics


def check_spec(spec: TrainingSpec) -> None:
    """Raise ValueError naming the field for a spec that cannot run."""
    if spec.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer '{spec.optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if spec.schedule not in SCHEDULES:
        raise ValueError(f"schedule '{spec.schedule}' is not one of {', '.join(SCHEDULES)}")
    if spec.monitor not in MONITORS:
        raise ValueError(f"monitor '{spec.monitor}' is not one of {', '.join(MONITORS)}")
    if spec.dtype not in DTYPES:
        raise ValueError(f"dtype '{spec.dtype}' is not one of {', '.join(DTYPES)}")
    for name in ("epochs", "accumulate", "tile_size", "max_nonfinite"):
        if getattr(spec, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(spec, name)}")
    if not 0 <= spec.val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {spec.val_fraction}")
    if isinstance(spec.class_weights, str) and spec.class_weights != "balanced":
        raise ValueError(f"class_weights must be None, 'balanced' or one number per class, got '{spec.class_weights}'")


def freeze_norms(trunk: nn.Module) -> None:
    """BatchNorm (running statistics) and Dropout in eval mode: what makes the trunk local."""
    for m in trunk.modules():
        if isinstance(m, FROZEN_MODULES):
            m.eval()


class Classifier(nn.Module):
    """Trunk (streamed, or conventional for comparison) then head, as one module.

    Only ``model`` is registered, so DDP and the optimiser see each parameter once; the trunk
    and head are views of it sharing its modules.
    """

    def __init__(self, model: SplitNet, *, streaming: bool, tile_size: int, channels_last: bool = False,
                 low_memory: bool = False):
        super().__init__()
        self.model = model
        self.streaming = streaming
        self.channels_last = channels_last
        trunk = model.trunk()
        runner = (StreamingModule(trunk, tile_size, freeze_batchnorm=True, channels_last=channels_last)
                  if streaming else trunk)
        if streaming:
            runner.release_every = 1 if low_memory else 0
        object.__setattr__(self, "trunk", trunk)
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "head", model.head())
        # Pool and linear only after the trunk: streamed, the map is pooled block by block and
        # never held (StreamingModule.pooled), so memory does not grow with the slide.
        self.pooled_head = streaming and len(list(self.head.stages.children())) == 0

    def train(self, mode: bool = True):
        super().train(mode)
        freeze_norms(self.trunk)  # a training loop's .train() must not bring back batch statistics
        return self

    def forward(self, x) -> torch.Tensor:
        """Logits (1, classes) for ``x``: a lazy source when streaming, else an NCHW tensor."""
        if self.pooled_head:
            return self.head.classify(self.runner.pooled(x, self.head.pool))
        if self.channels_last and isinstance(x, torch.Tensor) and x.is_cuda:
            # Not on CPU: a whole-slide NHWC tensor sent oneDNN's weight gradient to its reference
            # kernel (a 4096² ResNet-34 step had not finished in 9 minutes); streamed tiles are small.
            x = x.contiguous(memory_format=torch.channels_last)
        fmap = self.runner(x)
        if self.channels_last:
            fmap = fmap.contiguous(memory_format=torch.channels_last)
        return self.head(fmap)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then cosine to 0 or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _class_weights(spec: TrainingSpec, counts: list[int]) -> list[float] | None:
    if spec.class_weights is None:
        return None
    if spec.class_weights == "balanced":
        n = sum(counts)
        # n / (classes * n_c): every class contributes equally; an absent class gets weight 0.
        return [n / (len(counts) * c) if c else 0.0 for c in counts]
    weights = [float(w) for w in spec.class_weights]
    if len(weights) != len(counts):
        raise ValueError(f"class_weights has {len(weights)} values for {len(counts)} classes")
    return weights


def autocast_dtype(spec: TrainingSpec, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """Mixed precision on GPU for float32 runs: bf16 where supported, else fp16 (with loss
    scaling). None (full precision) on CPU, where autocast is slower than float32 here."""
    if device.type != "cuda" or not spec.mixed_precision or dtype != torch.float32:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_channels_last(spec: TrainingSpec, device: torch.device) -> bool:
    """NHWC tiles: faster convolutions with cuDNN on GPUs and with oneDNN on CPUs (a streamed
    smallnet training step 1.63x, ResNet-34 to layer2 1.03x on 2 CPU cores; see StreamingModule).
    The conventional (non-streamed) path converts whole inputs on GPU only (see Classifier)."""
    return spec.channels_last


class Trainer:
    """One training run; :func:`run_training` builds it and calls :meth:`run`."""

    def __init__(self, spec: TrainingSpec, on_event: EventCallback, cancel: CancelToken):
        check_spec(spec)
        self.spec, self.on_event, self.cancel = spec, on_event, cancel
        device = resolve_device(spec.device)
        self.ctx = distributed.init_from_env(device)
        try:
            self._build(device)
        except BaseException:
            distributed.shutdown(self.ctx)
            raise

    def _build(self, device: torch.device) -> None:
        spec = self.spec
        self.device = distributed.device_for_rank(device, self.ctx)
        self.dtype = DTYPES[spec.dtype]
        self.out = Path(spec.out_dir)

        labels = read_labels(spec.labels, spec.classes)
        self.classes = labels.classes
        self.train_set, self.val_set = split_records(labels, spec.val_fraction, spec.seed)
        self.input = InputSpec(level=spec.level, mpp=spec.mpp, size=spec.input_size, tissue_crop=spec.tissue_crop)

        torch.manual_seed(spec.seed)
        kwargs = dict(spec.model_kwargs)
        if spec.split is not None:
            kwargs["split"] = spec.split
        self.model: SplitNet = create_model(spec.model, num_classes=len(self.classes), pool=spec.pool, **kwargs)
        if spec.pretrained:
            load_pretrained_backbone(self.model, spec.pretrained)
        self.model.to(self.device, self.dtype)
        self.classifier = Classifier(self.model, streaming=spec.streaming, tile_size=spec.tile_size,
                                     channels_last=use_channels_last(spec, self.device),
                                     low_memory=spec.low_memory)
        self.card = ModelCard(
            architecture=spec.model, classes=self.classes, split=self.model.split, pool=spec.pool,
            model_kwargs={k: v for k, v in spec.model_kwargs.items() if k not in ("split", "pool", "num_classes")},
            input_mpp=spec.mpp, input_level=spec.level, normalization_mean=tuple(spec.normalization_mean),
            normalization_std=tuple(spec.normalization_std), tile_size=spec.tile_size,
            provenance={"made_by": "engine.train", "labels": str(spec.labels), "pretrained": spec.pretrained})

        self.amp_dtype = autocast_dtype(spec, self.device, self.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        weights = _class_weights(spec, labels.counts(self.train_set))
        self.class_weights = torch.tensor(weights, dtype=self.dtype, device=self.device) if weights else None

        params = [p for p in self.model.parameters() if p.requires_grad]
        if spec.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.steps_per_epoch = len(self._epoch_groups(0))
        total = spec.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, total_steps=total, warmup_steps=spec.warmup_steps,
                                                schedule=spec.schedule))
        self.epoch, self.step_in_epoch, self.best_value, self.nonfinite_run = 0, 0, None, 0
        self.net = self.classifier  # replaced by the DDP wrapper in run()

    # --------------------------------------------------------------------------- bookkeeping
    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    def _emit(self, event) -> None:
        if self.ctx.is_main:
            self.on_event(event)

    def _log(self, m: Metrics) -> None:
        self._emit(m)
        if self.ctx.is_main:
            row = {"phase": m.phase, "epoch": m.epoch, "step": m.step, **m.values}
            with open(self.out / METRICS_LOG, "a", encoding="utf-8") as f:
                f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in row.items()}) + "\n")

    def _counters(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch, "best_value": self.best_value,
                "nonfinite_run": self.nonfinite_run, "classes": list(self.classes)}

    def _save(self, kind: str) -> None:
        if not self.ctx.is_main:
            return
        path = save_training_state(self.out / kind, self.model, self.card, optimizer=self.optimizer,
                                   scheduler=self.scheduler, scaler=self.scaler, counters=self._counters())
        self.on_event(CheckpointSaved(kind, str(path), self.epoch, self.global_step))

    def _resume(self) -> None:
        found = find_checkpoint(self.out / "last")
        if found is None:
            return False
        counters = load_training_state(found, self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                       scaler=self.scaler)
        if counters["steps_per_epoch"] != self.steps_per_epoch or tuple(counters["classes"]) != self.classes:
            raise TrainingError(f"{found} was written for another data set ({counters['steps_per_epoch']} steps "
                                f"per epoch, classes {counters['classes']}); use a new out_dir or the same labels")
        self.epoch, self.step_in_epoch = counters["epoch"], counters["step_in_epoch"]
        self.best_value, self.nonfinite_run = counters["best_value"], counters["nonfinite_run"]
        if self.ctx.is_main:
            self._trim_log()
        return True

    def _calibrate_norms(self) -> None:
        """Set the trunk's BatchNorm statistics from data before they are frozen.

        From scratch, frozen norms keep running mean 0 and variance 1, which fit no layer:
        activations shrink layer after layer and the head sees nearly constant features
        (measured on 1024² demo slides: max-pooled features about 0.1, loss stuck at ln 2 for
        10 epochs; about 4 after calibration). A conventional forward in training mode over centred crops of the first few
        training slides (the same slides on every rank) gives each norm the cumulative mean and
        variance of its input; then the norms are frozen again.
        """
        norms = [m for m in self.classifier.trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration crops
            m.train()
        with torch.no_grad():
            for record in self.train_set[:self.spec.calibrate_norms]:
                rgb, aug, _ = self._load(record, None)
                h, w = rgb.shape[:2]
                crop = min(h, w, CALIBRATION_CROP)
                y0, x0 = (h - crop) // 2, (w - crop) // 2
                src = input_source(np.ascontiguousarray(rgb[y0:y0 + crop, x0:x0 + crop]), aug,
                                   self.spec.normalization_mean, self.spec.normalization_std, dtype=self.dtype)
                self.classifier.trunk(src.read((0, crop), (0, crop)).to(self.device))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        freeze_norms(self.classifier.trunk)

    def _trim_log(self) -> None:
        """Drop log rows after the checkpoint (a killed run may have logged steps it never saved)."""
        log = self.out / METRICS_LOG
        if not log.exists():
            return
        def saved(row: dict) -> bool:
            return row["step"] < self.global_step if row["phase"] == "train" else row["epoch"] < self.epoch

        keep = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip() and saved(json.loads(line))]
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, log)

    # --------------------------------------------------------------------------- data
    def _epoch_groups(self, epoch: int) -> list[np.ndarray]:
        """Training-set indices of each optimiser step of ``epoch`` (all ranks together)."""
        n, world = len(self.train_set), self.ctx.world_size
        order = np.random.default_rng([self.spec.seed, epoch, 1]).permutation(n)
        if world > 1 and n % world:
            # Every rank needs the same number of backward passes per step, or DDP would wait.
            order = np.concatenate([order, order[:world - n % world]])
        size = self.spec.accumulate * world
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _load(self, record: SlideRecord, rng: np.random.Generator | None):
        rgb = read_slide_input(record.path, self.input, rng)
        aug = draw_augmentation(rng, self.spec.colour_jitter) if rng is not None else Augmentation()
        return rgb, aug, record.label

    def _train_jobs(self, epoch: int, groups: list[np.ndarray]):
        for group in groups[self.step_in_epoch:]:
            for idx in group[self.ctx.rank::self.ctx.world_size]:
                rng = np.random.default_rng([self.spec.seed, epoch, int(idx), 2]) if self.spec.augment else None
                yield lambda rec=self.train_set[int(idx)], rng=rng: self._load(rec, rng)

    # --------------------------------------------------------------------------- one step
    def _logits(self, net: nn.Module, rgb: np.ndarray, aug: Augmentation) -> torch.Tensor:
        src = input_source(rgb, aug, self.spec.normalization_mean, self.spec.normalization_std, dtype=self.dtype)
        x = src if self.spec.streaming else src.read((0, src.shape[2]), (0, src.shape[3])).to(self.device)
        amp = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with amp:
            logits = net(x)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def _train_step(self, items: list) -> tuple[float, str | None]:
        """Forward and backward every slide of this rank's share; step unless non-finite.
        Returns (mean loss over all ranks, reason the step was skipped or None)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, (rgb, aug, label) in enumerate(items):
            last = i == len(items) - 1
            sync = self.net.no_sync() if self.ctx.active and not last else nullcontext()
            with sync:
                logits = self._logits(self.net, rgb, aug)
                target = torch.tensor([label], device=logits.device)
                # reduction="sum" on one slide is w[y] * CE: a weighted mean over one sample would cancel w.
                loss = F.cross_entropy(logits, target, weight=self.class_weights, reduction="sum") / len(items)
                self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        loss_ok = math.isfinite(total)
        grads_ok = all(bool(torch.isfinite(p.grad).all()) for p in self.model.parameters() if p.grad is not None)
        loss_bad = distributed.any_rank(not loss_ok, self.ctx, self.device)
        grads_bad = distributed.any_rank(not grads_ok, self.ctx, self.device)
        mean_loss = distributed.mean_over_ranks(total if loss_ok else math.nan, self.ctx, self.device)
        reason = None
        if loss_bad or grads_bad:
            reason = "non-finite loss" if loss_bad else "non-finite gradient"
            if self.scaler.is_enabled() and not loss_bad:
                reason = "fp16 gradient overflow; loss scale lowered"
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():
            # A skipped first step makes torch warn that the schedule steps before the optimiser;
            # skipped steps advance the schedule on purpose (a resumed run counts them the same).
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()
        return mean_loss, reason

    # --------------------------------------------------------------------------- epochs
    def _stop_requested(self) -> bool:
        return distributed.any_rank(self.cancel.cancelled, self.ctx, self.device)

    def _run_epoch(self) -> bool:
        """Train one epoch from ``step_in_epoch``; False when cancelled (after saving ``last``)."""
        spec, epoch = self.spec, self.epoch
        groups = self._epoch_groups(epoch)
        t0 = time.perf_counter()
        first = self.step_in_epoch
        self.net.train()
        with Prefetcher(self._train_jobs(epoch, groups), depth=spec.prefetch) as slides:
            stream = iter(slides)
            while self.step_in_epoch < len(groups):
                if self._stop_requested():
                    self._save("last")
                    return False
                share = len(groups[self.step_in_epoch][self.ctx.rank::self.ctx.world_size])
                items = [next(stream) for _ in range(share)]
                try:
                    loss, skipped = self._train_step(items)
                except Cancelled:  # a single-process run stopped between tiles: the step is dropped
                    self.optimizer.zero_grad(set_to_none=True)
                    self._save("last")
                    return False
                step = self.global_step
                if skipped:
                    counts = skipped != "fp16 gradient overflow; loss scale lowered"
                    self.nonfinite_run += 1 if counts else 0
                    self._emit(StepSkipped(epoch, step, skipped))
                    if self.nonfinite_run >= spec.max_nonfinite:
                        raise TrainingError(f"{self.nonfinite_run} steps in a row had a non-finite loss or gradient "
                                            f"(last at step {step}); lower the learning rate or check the data. "
                                            "The last checkpoint holds the weights from before.")
                else:
                    self.nonfinite_run = 0
                self.step_in_epoch += 1
                self._log(Metrics("train", epoch, step, {"loss": loss, "lr": self.scheduler.get_last_lr()[0]}))
                done, total = self.step_in_epoch, len(groups)
                elapsed = time.perf_counter() - t0
                self._emit(Progress("train", done, total, elapsed, elapsed / (done - first) * (total - done)))
                if spec.checkpoint_every and self.step_in_epoch % spec.checkpoint_every == 0 \
                        and self.step_in_epoch < len(groups):
                    self._save("last")
        return True

    def _validate(self) -> dict[str, float] | None:
        if not self.val_set:
            return None
        mine = self.val_set[self.ctx.rank::self.ctx.world_size]
        rows = []
        self.classifier.eval()
        t0 = time.perf_counter()
        jobs = [lambda rec=rec: self._load(rec, None) for rec in mine]
        with torch.no_grad(), Prefetcher(jobs, depth=self.spec.prefetch) as slides:
            for k, (rgb, aug, label) in enumerate(slides):
                if self.cancel.cancelled and not self.ctx.active:
                    raise Cancelled("validation cancelled")
                logits = self._logits(self.classifier, rgb, aug)
                loss = F.cross_entropy(logits, torch.tensor([label], device=logits.device))
                rows.append((torch.softmax(logits, 1)[0].tolist(), label, float(loss)))
                elapsed = time.perf_counter() - t0
                self._emit(Progress("val", k + 1, len(mine), elapsed, elapsed / (k + 1) * (len(mine) - k - 1)))
        self.classifier.train()
        rows = distributed.gather_lists(rows, self.ctx)
        return classification_metrics(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                                      np.array([r[2] for r in rows]))

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return self.best_value is None or MONITORS[self.spec.monitor] * (value - self.best_value) > 0

    def run(self) -> Finished:
        spec = self.spec
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        resumed = spec.resume and self._resume()
        if not resumed and spec.pretrained is None and spec.calibrate_norms > 0:
            self._calibrate_norms()
        if self.ctx.is_main:
            spec_json = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()}
            (self.out / "spec.json").write_text(json.dumps(spec_json, indent=1) + "\n", encoding="utf-8")
        if spec.streaming and not self.ctx.active:
            # One process may stop between tiles; ranks must agree, so they stop between steps only.
            self.classifier.runner.should_stop = lambda: self.cancel.cancelled
        self.net = distributed.wrap(self.classifier, self.ctx, self.device)
        outputs = {"last": str(self.out / "last"), "metrics": str(self.out / METRICS_LOG)}
        in_step = False  # every rank reached the same point: the end, or an agreed cancel
        try:
            while self.epoch < spec.epochs:
                if not self._run_epoch():
                    in_step = True
                    return self._finish(True, outputs)
                try:
                    metrics = self._validate()
                except Cancelled:
                    self._save("last")
                    in_step = True
                    return self._finish(True, outputs)
                epoch_done = self.epoch
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if metrics is not None:
                    self._log(Metrics("val", epoch_done, self.global_step, metrics))
                    if self._better(metrics[spec.monitor]):
                        self.best_value = metrics[spec.monitor]
                        self._save("best")
                        outputs["best"] = str(self.out / "best")
                self._save("last")
            in_step = True
        finally:
            # DDP's reducer holds the process group: release it first, so the group's gloo threads
            # are joined by destroy_process_group here, not by a destructor at interpreter exit
            # (which aborts the process, "terminate called without an active exception").
            self.net = self.classifier
            distributed.shutdown(self.ctx, in_step=in_step)
        if (self.out / "best").exists():
            outputs["best"] = str(self.out / "best")
        return self._finish(False, outputs)

    def _finish(self, cancelled: bool, outputs: dict) -> Finished:
        done = Finished(cancelled, outputs)
        self._emit(done)
        return done
