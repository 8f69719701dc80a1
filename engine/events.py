"""The events a job emits, and the cooperative cancel token.

Events are plain frozen dataclasses with numpy payloads, so the engine stays free of Qt: the
viewer turns them into queued signals, the CLI into a progress bar. Every box here is an
:class:`~engine.geometry.Box` in the slide's level-0 pixel plane, half-open.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np

from engine.errors import Cancelled
from engine.geometry import Box

#: A level-0 box as 4 numbers ``(x0, y0, x1, y1)``, as files store it (:meth:`Box.as_tuple`).
L0Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` tiles of ``phase`` ("read", "forward", "head", "saliency") are finished."""

    phase: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class MapPatch:
    """A finished piece of a map.

    ``layer`` is "prediction" (``values`` is (classes, h, w) probabilities per output cell) or
    "saliency" (``values`` is (h, w), the magnitude of the mean input gradient per cell).
    ``l0_box`` is where ``values`` lies on the slide; the whole map covers ``map_l0_box`` with
    ``map_shape`` (h, w) cells, so a patch's cell offsets are exact integers.
    """

    layer: str
    l0_box: Box
    values: np.ndarray
    cell_offset: tuple[int, int]
    map_shape: tuple[int, int]
    map_l0_box: Box
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """The slide-level result: class probabilities from the head on the whole stitched map."""

    classes: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.classes[int(np.argmax(self.probabilities))]


@dataclass(frozen=True)
class Finished:
    """The job ended. ``cancelled``: it stopped early, keeping what was finished.
    ``outputs`` maps a kind ("maps_npz", "prediction_json", "saliency_tiff", ...) to a path.
    ``warnings``: what makes the result doubtful although the job ran (no tissue found, a
    region smaller than the model's receptive field), in words."""

    cancelled: bool
    outputs: dict[str, str] = field(default_factory=dict)
    prediction: Prediction | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Metrics:
    """Scalars of one point of a training curve.

    ``phase`` "train": one optimiser step (``values``: loss, lr); "val": the validation after an
    epoch (loss, accuracy, auc; NaN where undefined). ``step`` counts optimiser steps from 0.
    """

    phase: str
    epoch: int
    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class CheckpointSaved:
    """``kind`` "last" or "best" was written at ``path`` (a folder ``load_checkpoint`` reads)."""

    kind: str
    path: str
    epoch: int
    step: int


@dataclass(frozen=True)
class StepSkipped:
    """An optimiser step was skipped because the loss or a gradient was not finite."""

    epoch: int
    step: int
    reason: str


@dataclass(frozen=True)
class JobWarning:
    """Something the user should hear about that did not stop the job: labels that were merged,
    a slide that failed and was skipped. ``subject`` names what it is about (a file, a slide)."""

    message: str
    subject: str = ""


Event = Union[Progress, MapPatch, Prediction, Finished, Metrics, CheckpointSaved, StepSkipped, JobWarning]
EventCallback = Callable[[Event], None]


class CancelToken:
    """Set from any thread; the job checks it before every tile and stops there."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("job cancelled")
