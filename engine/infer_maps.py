"""The maps an inference run fills: progress with an ETA, a map filled patch by patch
(:class:`MapAccumulator`), and the saliency layer (:class:`SaliencyMap`)."""

from __future__ import annotations

import math
import time

import numpy as np

from engine.events import EventCallback, MapPatch, Progress
from engine.geometry import LevelRegion, MapGeometry
from engine.io.maps import MapLayer
from engine.streaming import InputGradientSink


class ProgressClock:
    """Turns the streaming module's per-block callbacks into Progress events with an ETA.

    The ETA is linear in blocks within a phase; the streamed backward (the saliency phase) is
    reported as its own phase.
    """

    NAMES = {"forward": "forward", "backward": "saliency"}

    def __init__(self, emit: EventCallback):
        self.emit = emit
        self.start = self.last = time.perf_counter()
        self.phase, self.phase_t0 = None, self.start

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self.phase:
            self.phase, self.phase_t0 = phase, self.last
        self.last = now
        eta = (now - self.phase_t0) / max(done, 1) * (total - done)
        self.emit(Progress(self.NAMES.get(phase, phase), done, total, now - self.start, eta))


class MapAccumulator:
    """One output map filled patch by patch: keeps the values (for the results file) and emits
    each patch as a :class:`~engine.events.MapPatch`.

    The map's cells are ``cell_hw`` level pixels of ``region``, counted from its origin. With
    ``clip``, cells reaching past the region's far edges are cut at the region, so the map ends
    where the region does.
    """

    def __init__(self, layer: str, region: LevelRegion, cell_hw: tuple[int, int], map_hw: tuple[int, int], *,
                 channels: tuple[int, ...], fill: float, clip: bool, classes: tuple[str, ...], emit: EventCallback):
        self.layer, self.region, self.cell_hw, self.map_hw = layer, region, cell_hw, map_hw
        self.clip, self.classes, self.emit = clip, classes, emit
        self.values = np.full((*channels, *map_hw), fill, np.float32)
        self.map_l0_box = self.cells_l0_box((0, map_hw[0]), (0, map_hw[1]))

    def cells_l0_box(self, map_rows: tuple[int, int], map_cols: tuple[int, int]):
        box = self.region.cells_to_l0(map_rows, map_cols, self.cell_hw)
        return box.intersect(self.region.l0_box) if self.clip else box

    def put(self, values: np.ndarray, map_rows: tuple[int, int], map_cols: tuple[int, int]) -> None:
        self.values[..., map_rows[0]:map_rows[1], map_cols[0]:map_cols[1]] = values
        self.emit(MapPatch(self.layer, self.cells_l0_box(map_rows, map_cols), values, (map_rows[0], map_cols[0]),
                           self.map_hw, self.map_l0_box, self.classes))

    def put_whole(self, values: np.ndarray) -> None:
        """Replace the whole map (one patch covering it)."""
        self.put(values, (0, self.map_hw[0]), (0, self.map_hw[1]))

    def map_layer(self) -> MapLayer:
        """The whole map for :func:`engine.io.maps.write_maps` (which stores the box as 4 numbers)."""
        return MapLayer(self.values, self.map_l0_box.as_tuple())


class SaliencyMap:
    """The saliency layer: per ``cell`` x ``cell`` input pixels, the magnitude of the mean input
    gradient in its strongest channel (where the class score is sensitive). ``keep_cells``, when
    the run is masked (regions, tissue), gives the computed cells of a grid; the others are NaN."""

    def __init__(self, region: LevelRegion, cell: int, classes: tuple[str, ...], emit: EventCallback,
                 keep_cells=None):
        map_hw = (-(-region.lv_h // cell), -(-region.lv_w // cell))
        # Cells start NaN: not computed yet (transparent), never 0, which would read as "no gradient".
        self.map = MapAccumulator("saliency", region, (cell, cell), map_hw, channels=(), fill=math.nan, clip=False,
                                  classes=classes, emit=emit)
        self.sink = InputGradientSink(self.add, reduce=cell)
        self.keep = None if keep_cells is None else keep_cells(MapGeometry(self.map.map_l0_box, map_hw))

    def add(self, reg) -> None:
        r0, r1, c0, c1 = reg.cells
        values = reg.values[0].abs().amax(dim=0).float().cpu().numpy()
        if self.keep is not None:
            values[~self.keep[r0:r1, c0:c1]] = math.nan
        self.map.put(values, (r0, r1), (c0, c1))
