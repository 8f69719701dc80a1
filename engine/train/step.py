"""One slide's forward pass, and one optimiser step over a group of slides.

A step runs trunk (streamed) -> head -> the task's loss -> backward for each slide of
this rank's share, gradients adding up, and is taken unless the loss or a gradient is not finite
on any rank (then it is skipped and the reason returned). Ranks decide together, so they stay in step.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import nn

from engine.specs import TrainingSpec
from engine.train import distributed, precision
from engine.train.data import Augmentation, input_source
from engine.train.distributed import DistContext
from engine.train.feed import Item
from engine.train.optim import step_scheduler
from engine.train.tasks import Task

#: The reason of a skipped step that does not count towards stopping the run: fp16's loss
#: scale starts high and halves on each overflow.
FP16_OVERFLOW = "fp16 gradient overflow; loss scale lowered"


class SlideForward:
    """Logits (1, classes) of one slide: its lazy normalised input through ``net``, under autocast."""

    def __init__(self, spec: TrainingSpec, dtype: torch.dtype, device: torch.device,
                 amp_dtype: torch.dtype | None):
        self.spec, self.dtype, self.device, self.amp_dtype = spec, dtype, device, amp_dtype

    def __call__(self, net: nn.Module, rgb: np.ndarray, aug: Augmentation, mask: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.spec
        src = input_source(rgb, aug, spec.normalization_mean, spec.normalization_std, dtype=self.dtype)
        x = src if spec.streaming else src.read((0, src.shape[2]), (0, src.shape[3])).to(self.device)
        with precision.autocast(self.device, self.amp_dtype):
            logits = net(x, mask)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))


class TrainStep:
    """Forward and backward every slide of this rank's share of a step; step unless non-finite."""

    def __init__(self, forward: SlideForward, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                 scaler: torch.amp.GradScaler, task: Task, ctx: DistContext, device: torch.device):
        self.forward, self.model, self.optimizer, self.scheduler = forward, model, optimizer, scheduler
        self.scaler, self.task, self.ctx, self.device = scaler, task, ctx, device

    def __call__(self, net: nn.Module, items: Sequence[Item]) -> tuple[float, str | None]:
        """(mean loss over all ranks, the reason the step was skipped or None)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, (rgb, aug, label, mask) in enumerate(items):
            last = i == len(items) - 1
            sync = net.no_sync() if self.ctx.active and not last else nullcontext()
            with sync:
                logits = self.forward(net, rgb, aug, mask)
                loss = self.task.loss(logits, label) / len(items)
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
                reason = FP16_OVERFLOW
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        step_scheduler(self.scheduler)
        return mean_loss, reason

    def drop(self) -> None:
        """Forget the gradients of a step that was interrupted (cancelled between tiles)."""
        self.optimizer.zero_grad(set_to_none=True)
