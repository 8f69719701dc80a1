"""Tile reads off the UI thread.

:class:`TileLoader` keeps one queue of wanted tiles, replaced wholesale by each request (so
tiles the view no longer needs are dropped before they are read), and a fixed number of drain
jobs on a thread pool that pop the most urgent tile, read it (a virtual level's tile is
area-averaged from its real level, see :mod:`viewer.model.pyramid`), convert it to a ``QImage``
(on the worker) and deliver it by queued signal. OpenSlide releases the GIL, so two readers
overlap file I/O and JPEG decoding. The UI thread keeps the delivered tiles in
:class:`viewer.render.tile_cache.TileCache`.

Planes: ``l0_`` level-0 pixels, ``lv_`` pixels of a display level, ``src_`` pixels of the
real level a virtual level is made from.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from engine.errors import SlideError
from engine.geometry import Box, TileGrid, lv_to_l0_read_origin
from engine.slides import SlideSource, to_rgb
from viewer.model.pyramid import DisplayLevel
from viewer.workers.priority import lower_thread_priority
from viewer.workers.sources import SharedSource

THREAD_PREFIX = "streamslide-tiles"
TILE_SIZE = 256
#: Source rows read per chunk when making a virtual tile, so a large factor never asks the
#: slide for one huge region (``read_region`` caps bytes, and OpenSlide allocates up front).
CHUNK_ROWS = 1024


def default_tile_workers() -> int:
    """Readers for the tile pool: leave one core to the UI thread (1 on a 2-core machine,
    where a second reader made paints during loading several times slower; measured)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class TileKey(NamedTuple):
    slide_id: int
    level: int  # an index into the slide's DisplayPyramid: past its real levels, a virtual one
    col: int
    row: int


def level_grid(level: DisplayLevel, tile: int = TILE_SIZE) -> TileGrid:
    return TileGrid(level.lv_width, level.lv_height, tile)


def region_to_qimage(region: np.ndarray, background_rgb: tuple[int, int, int]) -> QImage:
    """An RGB32 QImage (the raster engine's fast path) owning a copy of the pixels.

    Call it on a worker: it is the per-tile pixel conversion the UI thread must not do.
    """
    h, w = region.shape[:2]
    if region.shape[2] == 4 and region[:, :, 3].min() == 255:
        view = QImage(region.data, w, h, 4 * w, QImage.Format.Format_RGBX8888)
    else:
        rgb = np.ascontiguousarray(to_rgb(region, background_rgb))
        view = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    # convertToFormat makes an image that owns its pixels; ``view`` only borrows the array.
    return view.convertToFormat(QImage.Format.Format_RGB32)


def area_average(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block of an (H, W, 3) uint8 image; a partial block
    at the right or bottom edge is the mean of the pixels it has. Returns
    (ceil(H / factor), ceil(W / factor), 3) uint8.

    PIL's ``reduce`` is this box filter in C, several times faster than numpy sums here.
    """
    return np.asarray(Image.fromarray(rgb).reduce(factor))


def read_virtual_region(source: SlideSource, level: DisplayLevel, lv_box: Box) -> np.ndarray:
    """The RGB uint8 pixels of ``lv_box`` (integer corners, inside ``level``) of a virtual
    level: the matching region of its source level, read in row chunks and area-averaged.

    Call it on a worker: it reads ``factor**2`` times the pixels it returns."""
    src_w, src_h = source.level_dimensions[level.source_level]
    src_ds = source.level_downsamples[level.source_level]
    f = level.factor
    src_box = lv_box.outer_int().scale(f).intersect(Box(0, 0, src_w, src_h))  # a virtual pixel is f x f source pixels
    src_x0, src_y0, src_x1, src_y1 = (int(v) for v in src_box.as_tuple())
    rows_per_chunk = max(1, CHUNK_ROWS // f) * f  # whole blocks per chunk: no block is split
    parts = []
    for src_y in range(src_y0, src_y1, rows_per_chunk):
        rows = min(rows_per_chunk, src_y1 - src_y)
        l0_x, l0_y = lv_to_l0_read_origin(src_x0, src_y, src_ds, source.dimensions)
        region = source.read_region(l0_x, l0_y, level.source_level, src_x1 - src_x0, rows)
        parts.append(area_average(to_rgb(region, source.background_rgb), f))
    return np.ascontiguousarray(np.concatenate(parts)) if len(parts) > 1 else parts[0]


def read_tile(source: SlideSource, level: DisplayLevel, col: int, row: int, tile: int = TILE_SIZE) -> QImage:
    """Read one tile of a display level, real or virtual, as a QImage (worker threads only)."""
    lv_box = level_grid(level, tile).tile_box(col, row)
    if level.is_virtual:
        return region_to_qimage(read_virtual_region(source, level, lv_box), source.background_rgb)
    l0_x, l0_y = lv_to_l0_read_origin(lv_box.x0, lv_box.y0, level.downsample, source.dimensions)
    region = source.read_region(l0_x, l0_y, level.source_level, int(lv_box.width), int(lv_box.height))
    return region_to_qimage(region, source.background_rgb)


class TileLoader(QObject):
    """Reads requested tiles on a thread pool, most urgent first, dropping stale requests."""

    #: (TileKey, QImage): a tile is decoded. Emitted on a worker; connect to UI-thread slots.
    tile_ready = Signal(object, object)
    #: (TileKey, message): this tile cannot be read (after the source's reopen-and-retry).
    tile_failed = Signal(object, str)

    def __init__(self, workers: int | None = None, tile: int = TILE_SIZE, parent: QObject | None = None) -> None:
        super().__init__(parent)
        workers = workers or default_tile_workers()
        self.tile = tile
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=THREAD_PREFIX, initializer=lower_thread_priority)
        self._lock = threading.Lock()
        self._queue: list[tuple[SharedSource, TileKey]] = []  # most urgent last (pop() is O(1))
        self._in_flight: set[TileKey] = set()
        self._draining = 0
        self._shut = False
        self.generation = 0
        self.dropped = 0  # requests replaced before they were read (stale)
        self.reads = 0

    def request(self, shared: SharedSource, keys_most_urgent_first: list[TileKey]) -> None:
        """Replace every pending request with these (tiles already in flight are not repeated)."""
        with self._lock:
            if self._shut:
                return
            self.generation += 1
            wanted = [k for k in keys_most_urgent_first if k not in self._in_flight]
            self.dropped += len({k for _, k in self._queue} - set(wanted))
            self._queue = [(shared, k) for k in reversed(wanted)]
            to_start = min(self._workers - self._draining, len(self._queue))
            self._draining += max(0, to_start)
        for _ in range(max(0, to_start)):
            self._pool.submit(self._drain)

    def cancel_slide(self, slide_id: int) -> None:
        with self._lock:
            self._queue = [(s, k) for s, k in self._queue if k.slide_id != slide_id]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._in_flight)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._shut or not self._queue:
                    self._draining -= 1
                    return
                shared, key = self._queue.pop()
                self._in_flight.add(key)
            try:
                with shared as source:
                    image = read_tile(source, shared.pyramid[key.level], key.col, key.row, self.tile)
            except SlideError as exc:
                # The source already reopened and retried; the view paints this tile from a
                # coarser level and stops asking for it. Other tiles keep loading.
                if not shared.closing:
                    self.tile_failed.emit(key, str(exc))
            else:
                self.reads += 1
                self.tile_ready.emit(key, image)
            finally:
                with self._lock:
                    self._in_flight.discard(key)

    def shutdown(self) -> None:
        """Cancel everything queued and wait for reads in flight (call only at shutdown)."""
        with self._lock:
            self._shut = True
            self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
