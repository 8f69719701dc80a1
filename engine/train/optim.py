"""The optimiser, the learning-rate schedule and the loss weights a training spec asks for."""

from __future__ import annotations

import math
import warnings

import torch

from engine.errors import SpecError
from engine.specs import TrainingSpec


def build_optimizer(spec: TrainingSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters (``spec.optimizer``)."""
    return optimizer_over(spec, [p for p in model.parameters() if p.requires_grad])


def optimizer_over(spec: TrainingSpec, params: list) -> torch.optim.Optimizer:
    """``spec.optimizer`` over ``params``: tensors, or param groups (dicts, e.g. with their own ``lr``)."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then cosine to 0 or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(spec: TrainingSpec, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps=total_steps, warmup_steps=spec.warmup_steps,
                                       schedule=spec.schedule))


def step_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Advance the schedule by one optimiser step, taken or skipped."""
    with warnings.catch_warnings():
        # A skipped first step makes torch warn that the schedule steps before the optimiser;
        # skipped steps advance the schedule on purpose (a resumed run counts them the same).
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        scheduler.step()


def class_weights(spec: TrainingSpec, counts: list[int]) -> list[float] | None:
    """The cross-entropy weight of each class, given the training slides per class (``counts``)."""
    if spec.class_weights is None:
        return None
    if spec.class_weights == "balanced":
        n = sum(counts)
        # n / (classes * n_c): every class contributes equally; an absent class gets weight 0.
        return [n / (len(counts) * c) if c else 0.0 for c in counts]
    weights = [float(w) for w in spec.class_weights]
    if len(weights) != len(counts):
        raise SpecError(f"class_weights has {len(weights)} values for {len(counts)} classes")
    return weights
