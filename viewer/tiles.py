"""Tile reads off the UI thread, and the byte-capped cache of decoded tiles.

* :class:`TileLoader` keeps one queue of wanted tiles, replaced wholesale by each request
  (so tiles the view no longer needs are dropped before they are read), and a fixed number
  of drain jobs on a thread pool that pop the most urgent tile, read it (a virtual level's
  tile is area-averaged from its real level, see :mod:`viewer.pyramid`), convert it to a
  ``QImage`` (on the worker) and deliver it by queued signal. OpenSlide releases the GIL,
  so two readers overlap file I/O and JPEG decoding.
* :class:`TileCache` lives on the UI thread only (no locks): an LRU of QImages capped by
  bytes, whose pinned entries (the coarsest display level) are never evicted.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from engine.errors import SlideError
from engine.geometry import TileGrid
from engine.slides import SlideSource, to_rgb
from viewer.pyramid import DisplayLevel, read_virtual_region
from viewer.sources import SharedSource

log = logging.getLogger(__name__)

THREAD_PREFIX = "streamslide-tiles"
TILE_SIZE = 256


#: Niceness added to worker threads: on a 2-core machine two decoders and the UI thread
#: compete for CPU, and a paint must not wait for a JPEG decode.
WORKER_NICENESS = 10


def lower_thread_priority() -> None:
    """Pool initializer: make the calling worker thread yield CPU to the UI thread (Linux
    schedules threads individually; elsewhere this is a no-op)."""
    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except OSError as exc:  # e.g. a sandbox forbids it: run at normal priority
            log.warning("could not lower tile worker priority: %s", exc)


def default_tile_workers() -> int:
    """Readers for the tile pool: leave one core to the UI thread (1 on a 2-core machine,
    where a second reader made paints during loading several times slower; measured)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def default_cache_bytes() -> int:
    """min(25% of physical memory, 2 GiB)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        ram = 8 * 2**30
    return int(min(ram // 4, 2 * 2**30))


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


def read_tile(source: SlideSource, level: DisplayLevel, col: int, row: int, tile: int = TILE_SIZE) -> QImage:
    """Read one tile of a display level, real or virtual, as a QImage (worker threads only)."""
    lv_box = level_grid(level, tile).tile_box(col, row)
    if level.is_virtual:
        return region_to_qimage(read_virtual_region(source, level, lv_box), source.background_rgb)
    l0_x = min(round(lv_box.x0 * level.downsample), source.dimensions[0] - 1)
    l0_y = min(round(lv_box.y0 * level.downsample), source.dimensions[1] - 1)
    region = source.read_region(l0_x, l0_y, level.source_level, int(lv_box.width), int(lv_box.height))
    return region_to_qimage(region, source.background_rgb)


class TileCache:
    """LRU of decoded tiles capped by bytes. UI thread only."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[TileKey, QImage] = OrderedDict()
        self._pinned: set[TileKey] = set()
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: TileKey) -> bool:
        return key in self._tiles

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, key: TileKey) -> QImage | None:
        image = self._tiles.get(key)
        if image is None:
            self.misses += 1
            return None
        self.hits += 1
        self._tiles.move_to_end(key)
        return image

    def peek(self, key: TileKey) -> QImage | None:
        """Look up without counting a hit or touching the LRU order (for painting fallbacks)."""
        return self._tiles.get(key)

    def put(self, key: TileKey, image: QImage, *, pinned: bool = False) -> None:
        old = self._tiles.pop(key, None)
        if old is not None:
            self.bytes_used -= old.sizeInBytes()
        self._tiles[key] = image
        self.bytes_used += image.sizeInBytes()
        if pinned:
            self._pinned.add(key)
        self._evict()

    def _evict(self) -> None:
        if self.bytes_used <= self.max_bytes:
            return
        for key in list(self._tiles):
            if self.bytes_used <= self.max_bytes:
                break
            if key in self._pinned:
                continue
            self.bytes_used -= self._tiles.pop(key).sizeInBytes()

    def drop_slide(self, slide_id: int) -> None:
        for key in [k for k in self._tiles if k.slide_id == slide_id]:
            self.bytes_used -= self._tiles.pop(key).sizeInBytes()
            self._pinned.discard(key)

    @property
    def pinned_bytes(self) -> int:
        return sum(self._tiles[k].sizeInBytes() for k in self._pinned)

    def reset_stats(self) -> None:
        self.hits = self.misses = 0


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
