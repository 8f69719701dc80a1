"""The byte-capped cache of decoded tiles, on the UI thread only (no locks): an LRU of QImages
whose pinned entries (the coarsest display level) are never evicted."""

from __future__ import annotations

import os
from collections import OrderedDict

from PySide6.QtGui import QImage

from viewer.workers.tiles import TileKey


def default_cache_bytes() -> int:
    """min(25% of physical memory, 2 GiB)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        ram = 8 * 2**30
    return int(min(ram // 4, 2 * 2**30))


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
