"""What a network's outputs mean, per task: their number, the loss, the reported values, the metrics.

``classification``: one logit per class, softmax, cross-entropy with optional class weights.
``multilabel``: one logit per label, sigmoid, binary cross-entropy with optional per-label
positive weights. ``regression``: one output per target, trained against targets standardised
with the training split's mean and standard deviation (so the loss does not depend on the
targets' units), reported back in the targets' units.

A slide's target (the third element of a training item) is its class index, or its tuple of
target values in the targets' own units; only the loss sees standardised values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from engine.errors import SpecError
from engine.io.labels import LabelSet, SlideRecord
from engine.metrics import classification_metrics, multilabel_metrics, regression_metrics
from engine.specs import TrainingSpec
from engine.train.optim import class_weights


class ClassificationTask:
    name = "classification"

    def __init__(self, classes: tuple[str, ...], weights: list[float] | None):
        self.names, self.weights = classes, weights

    @property
    def output_size(self) -> int:
        return len(self.names)

    def target(self, record: SlideRecord):
        return record.label

    def loss(self, logits: torch.Tensor, target, *, weighted: bool = True) -> torch.Tensor:
        """The loss of one slide (logits (1, K)). Weighted: ``w[y] * CE`` (reduction "sum" on one
        slide; a weighted mean over one sample would cancel ``w``); unweighted: plain CE."""
        t = torch.tensor([target], device=logits.device)
        if weighted and self.weights is not None:
            w = torch.tensor(self.weights, dtype=logits.dtype, device=logits.device)
            return F.cross_entropy(logits, t, weight=w, reduction="sum")
        return F.cross_entropy(logits, t)

    def outputs(self, logits: torch.Tensor) -> list[float]:
        """Class probabilities of one slide (in the logits' precision, as validation always was)."""
        return torch.softmax(logits.detach(), 1)[0].tolist()

    def metrics(self, outputs: np.ndarray, truths: Sequence, losses: np.ndarray) -> dict[str, float]:
        return classification_metrics(np.asarray(outputs), np.asarray(truths, np.int64), np.asarray(losses))

    def card_fields(self) -> dict:
        return {}


class MultilabelTask(ClassificationTask):
    name = "multilabel"

    def __init__(self, labels: tuple[str, ...], pos_weights: list[float] | None):
        super().__init__(labels, pos_weights)

    def target(self, record: SlideRecord):
        return record.values

    def loss(self, logits: torch.Tensor, target, *, weighted: bool = True) -> torch.Tensor:
        """Binary cross-entropy averaged over the labels; weighted, a positive of label i counts
        ``pos_weight[i]`` times (balanced: negatives / positives in the training split)."""
        t = torch.tensor([target], dtype=logits.dtype, device=logits.device)
        pos_weight = None
        if weighted and self.weights is not None:
            pos_weight = torch.tensor(self.weights, dtype=logits.dtype, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, t, pos_weight=pos_weight)

    def outputs(self, logits: torch.Tensor) -> list[float]:
        """Each label's probability."""
        return torch.sigmoid(logits.detach())[0].tolist()

    def metrics(self, outputs: np.ndarray, truths: Sequence, losses: np.ndarray) -> dict[str, float]:
        return multilabel_metrics(np.asarray(outputs), np.asarray(truths), np.asarray(losses), self.names)

    def card_fields(self) -> dict:
        return {"task": self.name, "targets": self.names}


class RegressionTask:
    name = "regression"

    def __init__(self, targets: tuple[str, ...], mean: Sequence[float], std: Sequence[float], loss: str = "mse"):
        self.names, self.loss_name = targets, loss
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def from_training(cls, targets: tuple[str, ...], train_set: Sequence[SlideRecord], loss: str) -> RegressionTask:
        """Standardisation from the training slides only: validation and test stay unseen. A
        constant target keeps scale 1 (its standardised value is then 0 everywhere)."""
        values = np.array([r.values for r in train_set], np.float64).reshape(len(train_set), len(targets))
        std = values.std(axis=0)
        return cls(targets, values.mean(axis=0), np.where(std > 0, std, 1.0), loss)

    @property
    def output_size(self) -> int:
        return len(self.names)

    def target(self, record: SlideRecord):
        return record.values

    def loss(self, logits: torch.Tensor, target, *, weighted: bool = True) -> torch.Tensor:
        """MSE or Huber (delta 1, in standard deviations) between the outputs and the
        standardised targets, averaged over the targets."""
        mean = torch.tensor(self.mean, dtype=logits.dtype, device=logits.device)
        std = torch.tensor(self.std, dtype=logits.dtype, device=logits.device)
        t = (torch.tensor([target], dtype=logits.dtype, device=logits.device) - mean) / std
        if self.loss_name == "huber":
            return F.huber_loss(logits, t, delta=1.0)
        return F.mse_loss(logits, t)

    def outputs(self, logits: torch.Tensor) -> list[float]:
        """The predicted targets in their own units."""
        out = logits.detach().double()[0].cpu().numpy() * np.asarray(self.std) + np.asarray(self.mean)
        return out.tolist()

    def metrics(self, outputs: np.ndarray, truths: Sequence, losses: np.ndarray) -> dict[str, float]:
        return regression_metrics(np.asarray(outputs), np.asarray(truths), np.asarray(losses), self.names)

    def card_fields(self) -> dict:
        return {"task": self.name, "targets": self.names, "target_mean": self.mean, "target_std": self.std}


Task = ClassificationTask | MultilabelTask | RegressionTask


def build_task(spec: TrainingSpec, labels: LabelSet, train_set: Sequence[SlideRecord]) -> Task:
    """The spec's task over ``labels``, with weights and standardisation from ``train_set``."""
    if labels.task != spec.task:
        raise SpecError(f"the labels were read for {labels.task}, the spec trains {spec.task}")
    if spec.task == "classification":
        return ClassificationTask(labels.classes, class_weights(spec, labels.counts(train_set)))
    if spec.task == "multilabel":
        return MultilabelTask(labels.classes, positive_weights(spec, labels, train_set))
    return RegressionTask.from_training(labels.classes, train_set, spec.loss)


def positive_weights(spec: TrainingSpec, labels: LabelSet, train_set: Sequence[SlideRecord]) -> list[float] | None:
    """Per-label weight of a positive: balanced, negatives / positives of the training split (a
    label without positives gets 1); or one weight per label as given."""
    if spec.class_weights is None:
        return None
    positives = labels.counts(train_set)
    if spec.class_weights == "balanced":
        n = len(train_set)
        return [(n - p) / p if p else 1.0 for p in positives]
    weights = [float(w) for w in spec.class_weights]
    if len(weights) != len(positives):
        raise SpecError(f"class_weights has {len(weights)} values for {len(positives)} labels")
    return weights


def task_from_card(card) -> Task:
    """The task a saved model was trained for (no weights: evaluation's losses are unweighted)."""
    if card.task == "regression":
        return RegressionTask(card.classes, card.target_mean, card.target_std)
    if card.task == "multilabel":
        return MultilabelTask(card.classes, None)
    return ClassificationTask(card.classes, None)
