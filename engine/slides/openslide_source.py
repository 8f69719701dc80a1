"""Slides read through OpenSlide, with one reopen per failed read (torch-free, Qt-free)."""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from engine.errors import SlideOpenError, SlideReadError
from engine.slides.source import DEFAULT_MAX_REGION_BYTES, SlideSource

#: Reopens one OpenSlide source may do before it gives up on the file altogether.
MAX_REOPENS = 64


class OpenSlideSource(SlideSource):
    """A slide read through ``openslide.OpenSlide`` (never ``openslide.open_slide``, which
    silently opens truncated files as PIL images).

    OpenSlide errors are sticky on a handle: after one failed read every later read fails,
    good regions included. A failed read therefore reopens the file once and retries; if the
    retry fails too, that read raises :class:`SlideReadError` (the region is corrupt) and the
    next read starts on a fresh handle again, so the rest of the slide stays readable.
    Retired handles stay open until :meth:`close`, because another thread may still be
    inside a read on them.
    """

    def __init__(self, path: str | os.PathLike, *, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES) -> None:
        super().__init__(max_region_bytes=max_region_bytes)
        import openslide

        self._openslide = openslide
        self.path = str(path)
        self._lock = threading.Lock()
        self._handle = self._open_handle()
        self._retired: list = []
        self.reopen_count = 0
        self._failed_message: str | None = None
        h = self._handle
        props = dict(h.properties)
        self.properties = props
        self.dimensions = tuple(h.dimensions)
        self.level_dimensions = tuple(tuple(d) for d in h.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in h.level_downsamples)
        self.vendor = props.get("openslide.vendor")
        mpp_x, mpp_y = _float_or_none(props.get("openslide.mpp-x")), _float_or_none(props.get("openslide.mpp-y"))
        self.mpp = (mpp_x, mpp_y) if mpp_x and mpp_y else None
        self.objective_power = _float_or_none(props.get("openslide.objective-power"))
        self.associated_image_names = tuple(h.associated_images.keys())
        bg = props.get("openslide.background-color")
        if bg and len(bg) == 6:
            self.background_rgb = (int(bg[0:2], 16), int(bg[2:4], 16), int(bg[4:6], 16))

    def _open_handle(self):
        try:
            return self._openslide.OpenSlide(self.path)
        except self._openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(
                f"{self.path}: not a slide OpenSlide can read (unsupported format, truncated or corrupt); "
                f"check the file is complete and in a supported format"
            ) from exc
        except self._openslide.OpenSlideError as exc:
            raise SlideOpenError(f"{self.path}: OpenSlide could not open it: {exc}") from exc

    def _read(self, l0_x, l0_y, level, lv_w, lv_h) -> np.ndarray:
        with self._lock:
            if self._failed_message:
                raise SlideReadError(self._failed_message)
            handle = self._handle
        try:
            return np.asarray(handle.read_region((l0_x, l0_y), level, (lv_w, lv_h)))
        except self._openslide.OpenSlideError as first:
            handle = self._reopen_after(handle, first)
        try:
            return np.asarray(handle.read_region((l0_x, l0_y), level, (lv_w, lv_h)))
        except self._openslide.OpenSlideError as second:
            raise SlideReadError(
                f"{self.path}: reading level {level} at l0 ({l0_x}, {l0_y}) failed again after reopening "
                f"the file ({second}); the file is probably corrupt there. Other regions stay readable."
            ) from second

    def _reopen_after(self, failed_handle, error: Exception):
        """Swap in a fresh handle (the failed one is poisoned for every later read).

        Threads that failed on the same handle share one reopen. After ``MAX_REOPENS`` the
        file is given up on: something worse than one bad tile is wrong with it.
        """
        with self._lock:
            if self._handle is not failed_handle:  # another thread already reopened
                return self._handle
            if self.reopen_count >= MAX_REOPENS:
                self._failed_message = f"{self.path}: reads keep failing ({error}); giving up on this file"
                raise SlideReadError(self._failed_message) from error
            try:
                fresh = self._open_handle()
            except SlideOpenError as exc:
                self._failed_message = f"{self.path}: a read failed ({error}) and the file could not be reopened: {exc}"
                raise SlideReadError(self._failed_message) from exc
            self.reopen_count += 1
            self._retired.append(self._handle)
            self._handle = fresh
            return fresh

    def associated_image(self, name: str) -> np.ndarray:
        if self._closed:
            raise SlideReadError(f"{self.path}: the slide was closed; open it again to read from it")
        if name not in self.associated_image_names:
            super().associated_image(name)
        try:
            return np.asarray(self._handle.associated_images[name].convert("RGBA"))
        except self._openslide.OpenSlideError as exc:
            raise SlideReadError(f"{self.path}: reading the associated image {name!r} failed: {exc}") from exc

    def _close(self) -> None:
        for handle in [*self._retired, self._handle]:
            handle.close()
        self._retired.clear()


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None
