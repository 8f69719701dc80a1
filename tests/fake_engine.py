"""A stand-in for ``engine.api.run_inference`` with the same signature and events.

It maps a level-0 region onto a grid of cells and emits one ``MapPatch`` per block of cells
(prediction and saliency), with values that are a known function of the cell, so tests can
check what the viewer shows. A ``gate`` (threading.Event) holds the job after its first
patch until the test releases it; ``fail`` makes it raise an engine error instead.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from engine.errors import CheckpointError, SlideError
from engine.events import CancelToken, Finished, MapPatch, Prediction, Progress
from engine.geometry import Box
from engine.specs import InferenceSpec

CLASSES = ("normal", "tumour")


def cell_value(map_r: int, map_c: int) -> float:
    """The fake "tumour" probability of a map cell: a ramp across the map, in [0, 1]."""
    return ((map_r * 7 + map_c * 3) % 64) / 63.0


class FakeRunner:
    def __init__(self, *, l0_cell: int = 64, block_cells: int = 4, gate: threading.Event | None = None, fail: str | None = None,
                 l0_size: tuple[int, int] = (4096, 3072)) -> None:
        self.l0_cell, self.block_cells, self.l0_size = l0_cell, block_cells, l0_size
        self.gate, self.fail = gate, fail
        self.started = threading.Event()
        self.calls: list[InferenceSpec] = []
        self.patches_sent = 0

    def __call__(self, spec: InferenceSpec, on_event, cancel: CancelToken) -> Finished:
        self.calls.append(spec)
        self.started.set()
        if self.fail == "model":
            raise CheckpointError(f"{spec.model_path}: not a StreamSlide model (no model.json beside it); choose a checkpoint folder")
        if self.fail == "slide":
            raise SlideError(f"{spec.slide_path}: the slide could not be read (truncated file)")
        # The engine would use the tissue box without a region; a region may be a Box or a tuple.
        region = Box(0, 0, *self.l0_size) if spec.l0_region is None else Box.of(spec.l0_region)
        x0, y0, x1, y1 = (int(v) for v in region.as_tuple())
        cell = self.l0_cell
        map_h, map_w = (y1 - y0) // cell, (x1 - x0) // cell
        map_box = (x0, y0, x0 + map_w * cell, y0 + map_h * cell)
        blocks = [(r, c) for r in range(0, map_h, self.block_cells) for c in range(0, map_w, self.block_cells)]
        start = time.perf_counter()
        for i, (r0, c0) in enumerate(blocks):
            if cancel.cancelled:
                on_event(Finished(cancelled=True))
                return Finished(cancelled=True)
            r1, c1 = min(r0 + self.block_cells, map_h), min(c0 + self.block_cells, map_w)
            rows, cols = np.mgrid[r0:r1, c0:c1]
            tumour = ((rows * 7 + cols * 3) % 64 / 63.0).astype(np.float32)
            box = (x0 + c0 * cell, y0 + r0 * cell, x0 + c1 * cell, y0 + r1 * cell)
            on_event(MapPatch("prediction", box, np.stack([1 - tumour, tumour]), (r0, c0), (map_h, map_w), map_box, CLASSES))
            if spec.saliency:
                on_event(MapPatch("saliency", box, tumour * 2.0, (r0, c0), (map_h, map_w), map_box, CLASSES))
            self.patches_sent += 1
            on_event(Progress("forward", i + 1, len(blocks), time.perf_counter() - start, None))
            if i == 0 and self.gate is not None:
                self.gate.wait(timeout=30)
        prediction = Prediction(CLASSES, (0.25, 0.75))
        on_event(prediction)
        finished = Finished(cancelled=False, prediction=prediction)
        on_event(finished)
        return finished
