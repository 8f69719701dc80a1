"""viewer.workers.tiles and viewer.render.tile_cache: the byte-capped cache, request ordering,
stale requests, thread shutdown."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtGui import QImage

from engine.slides import ArraySlide
from tests.conftest import leftover_worker_threads
from viewer.render.tile_cache import TileCache, default_cache_bytes
from viewer.workers.sources import SharedSource
from viewer.workers.tiles import TileKey, TileLoader, region_to_qimage


def _image(n_bytes_side=16):
    return QImage(n_bytes_side, n_bytes_side, QImage.Format.Format_RGB32)  # 16*16*4 = 1 KiB


def test_cache_evicts_least_recently_used_by_bytes_but_keeps_pinned():
    cache = TileCache(max_bytes=3 * 1024)
    pinned, a, b, c = (TileKey(1, lvl, 0, 0) for lvl in range(4))
    cache.put(pinned, _image(), pinned=True)
    cache.put(a, _image())
    cache.put(b, _image())
    assert cache.get(a) is not None  # a is now more recent than b
    cache.put(c, _image())
    assert b not in cache and a in cache and c in cache and pinned in cache
    assert cache.bytes_used == 3 * 1024
    cache.put(TileKey(1, 9, 0, 0), _image())
    assert pinned in cache  # never evicted, however old
    cache.drop_slide(1)
    assert len(cache) == 0 and cache.bytes_used == 0


def test_cache_counts_hits_and_misses():
    cache = TileCache(max_bytes=10_000)
    key = TileKey(1, 0, 0, 0)
    assert cache.get(key) is None
    cache.put(key, _image())
    cache.get(key)
    assert (cache.hits, cache.misses) == (1, 1)


def test_default_cache_is_a_quarter_of_ram_at_most_two_gib():
    assert 0 < default_cache_bytes() <= 2 * 2**30


def test_region_to_qimage_composites_transparency_over_the_background():
    region = np.zeros((2, 3, 4), np.uint8)
    region[0, 0] = (200, 10, 20, 255)  # opaque
    image = region_to_qimage(region, (255, 255, 255))
    assert image.format() == QImage.Format.Format_RGB32 and image.size().toTuple() == (3, 2)
    assert image.pixelColor(0, 0).getRgb()[:3] == (200, 10, 20)
    assert image.pixelColor(1, 1).getRgb()[:3] == (255, 255, 255)  # transparent -> background


class GatedSlide(ArraySlide):
    """An array slide whose reads wait for a gate and record their order."""

    def __init__(self):
        super().__init__(np.zeros((256, 256 * 8, 3), np.uint8))
        self.gate = threading.Event()
        self.read_cols: list[int] = []

    def _read(self, l0_x, l0_y, level, lv_w, lv_h):
        self.read_cols.append(l0_x // 256)
        assert self.gate.wait(10), "test gate never opened"
        return super()._read(l0_x, l0_y, level, lv_w, lv_h)


def test_requests_replace_stale_ones_and_run_most_urgent_first(qtbot):
    slide = GatedSlide()
    shared = SharedSource(slide)
    loader = TileLoader(workers=1)
    delivered = []
    loader.tile_ready.connect(lambda key, image: delivered.append(key.col))
    try:
        loader.request(shared, [TileKey(shared.slide_id, 0, c, 0) for c in (0, 1, 2, 3)])
        qtbot.waitUntil(lambda: slide.read_cols == [0])  # tile 0 is in flight, 1..3 queued
        loader.request(shared, [TileKey(shared.slide_id, 0, c, 0) for c in (7, 6, 0)])
        slide.gate.set()
        qtbot.waitUntil(lambda: len(delivered) == 3)
        assert slide.read_cols == [0, 7, 6]  # 1..3 were dropped; 0 was not read twice
        assert delivered == [0, 7, 6]
        assert loader.dropped == 3
    finally:
        slide.gate.set()
        loader.shutdown()


def test_shutdown_leaves_no_worker_thread():
    slide = ArraySlide(np.zeros((512, 512, 3), np.uint8))
    shared = SharedSource(slide)
    loader = TileLoader(workers=2)
    loader.request(shared, [TileKey(shared.slide_id, 0, c, r) for c in range(2) for r in range(2)])
    assert leftover_worker_threads()  # the fixture below would catch these...
    loader.shutdown()
    assert not leftover_worker_threads()  # ...and shutdown ends them


def test_shared_source_closes_only_when_the_last_reader_leaves():
    slide = ArraySlide(np.zeros((64, 64, 3), np.uint8))
    shared = SharedSource(slide)
    with shared as source:
        shared.close_when_idle()
        assert not source.closed  # a reader is inside: closing must wait
    assert slide.closed
    from engine.errors import SlideReadError

    with pytest.raises(SlideReadError, match="being closed"):
        with shared:
            pass
