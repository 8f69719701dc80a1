"""Slides shared between worker threads, closed only when no thread is reading them.

Closing an OpenSlide handle while another thread is inside a read is a use-after-free in C,
so the UI thread never closes a source directly: it asks for a close, and the last reader to
leave (or the request itself, if none is reading) closes it.
"""

from __future__ import annotations

import itertools
import threading
from functools import cached_property

from engine.errors import SlideReadError
from engine.slides import SlideSource
from viewer.model.pyramid import DisplayPyramid

_ids = itertools.count(1)


class SharedSource:
    """A :class:`SlideSource` plus a reader count; ``with shared as source:`` to read."""

    def __init__(self, source: SlideSource) -> None:
        self.source = source
        self.slide_id = next(_ids)  # tile cache keys use this, never the path (a path can be reopened)
        self._lock = threading.Lock()
        self._readers = 0
        self._closing = False

    @cached_property
    def pyramid(self) -> DisplayPyramid:
        """The levels the view paints and the tile loader reads: the slide's own, then virtual
        ones (a pure function of the level sizes, so the view and the workers agree on it)."""
        return DisplayPyramid.of(self.source)

    @property
    def closing(self) -> bool:
        return self._closing

    def __enter__(self) -> SlideSource:
        with self._lock:
            if self._closing:
                raise SlideReadError(f"{self.source.path}: the slide is being closed")
            self._readers += 1
        return self.source

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._readers -= 1
            close_now = self._closing and self._readers == 0
        if close_now:
            self.source.close()

    def close_when_idle(self) -> None:
        """Close now if nobody reads, else when the last reader leaves. Never blocks."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            close_now = self._readers == 0
        if close_now:
            self.source.close()
