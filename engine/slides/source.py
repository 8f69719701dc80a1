"""Slide access shared by the viewer and the engine (torch-free, Qt-free).

``open_slide(path)`` returns a :class:`SlideSource`: an OpenSlide-backed slide for every
format OpenSlide reads, or an in-memory :class:`ArraySlide` for plain PNG/JPEG/BMP images
and for untiled TIFFs OpenSlide refuses. Every failure is an :mod:`engine.errors`
``SlideError`` subclass whose message names the file and says what to do.

Coordinates are named by plane: ``l0_x`` is in level-0 pixels, ``lv_w`` in the pixels of
the level being read.

Thread safety: one ``SlideSource`` may be read from several threads at once (OpenSlide
handles are thread-safe and release the GIL; ``ArraySlide`` only slices). ``close()`` must
only be called once no read is in flight; the viewer's tile loader guarantees this.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.errors import RegionError, SlideOpenError, SlideReadError

#: Largest region one ``read_region`` may return, in bytes of RGBA (64 Mpx). OpenSlide
#: allocates ``w*h*4`` up front and would happily try tens of gigabytes.
DEFAULT_MAX_REGION_BYTES = 256 * 1024 * 1024

#: Reopens one OpenSlide source may do before it gives up on the file altogether.
MAX_REOPENS = 64

#: Extensions opened with PIL, never with OpenSlide.
PLAIN_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
#: TIFFs OpenSlide refuses (untiled) fall back to PIL, loaded eagerly so truncation shows.
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
#: A plain image is decoded whole into memory: refuse ones that would not fit sensibly.
MAX_PLAIN_IMAGE_PIXELS = 16384 * 16384


class SlideSource:
    """A multi-resolution image: the interface both packages read slides through.

    Subclasses fill the metadata attributes in their constructor (plain values, so reading
    them never touches the file) and implement :meth:`_read` and :meth:`_close`.
    """

    path: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    vendor: str | None
    properties: dict[str, str]
    associated_image_names: tuple[str, ...]
    background_rgb: tuple[int, int, int] = (255, 255, 255)

    def __init__(self, *, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES) -> None:
        self.max_region_bytes = max_region_bytes
        self._closed = False

    # -- metadata ---------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The finest level whose downsample is not above ``downsample`` (OpenSlide's rule)."""
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            if level_ds <= downsample * (1 + 1e-9):
                best = level
        return best

    # -- reads ------------------------------------------------------------------------
    def read_region(self, l0_x: int, l0_y: int, level: int, lv_w: int, lv_h: int) -> np.ndarray:
        """Pixels of a ``lv_w`` x ``lv_h`` region of ``level`` whose top-left is ``(l0_x, l0_y)``.

        Returns a C-contiguous uint8 array of shape ``(lv_h, lv_w, C)``: RGBA (C=4,
        transparent where nothing was scanned) for OpenSlide slides, the stored channels
        (3 or 4) for array slides. Raises :class:`RegionError` for non-integer arguments, a
        level the slide lacks, a region outside the level or larger than
        ``max_region_bytes``; :class:`SlideReadError` when the file cannot be read.
        """
        self._check_region(l0_x, l0_y, level, lv_w, lv_h)
        return self._read(int(l0_x), int(l0_y), int(level), int(lv_w), int(lv_h))

    def _check_region(self, l0_x, l0_y, level, lv_w, lv_h) -> None:
        if self._closed:
            raise SlideReadError(f"{self.path}: the slide was closed; open it again to read from it")
        for label, value in (("l0_x", l0_x), ("l0_y", l0_y), ("level", level), ("lv_w", lv_w), ("lv_h", lv_h)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise RegionError(f"{self.path}: {label} must be an integer, got {value!r}")
        if not 0 <= level < self.level_count:
            raise RegionError(f"{self.path}: level {level} does not exist; the slide has levels 0..{self.level_count - 1}")
        if lv_w <= 0 or lv_h <= 0:
            raise RegionError(f"{self.path}: region size {lv_w}x{lv_h} must be positive")
        if lv_w * lv_h * 4 > self.max_region_bytes:
            raise RegionError(
                f"{self.path}: a {lv_w}x{lv_h} region needs {lv_w * lv_h * 4 / 2**20:.0f} MiB, over the "
                f"{self.max_region_bytes / 2**20:.0f} MiB cap; read it in tiles or at a coarser level"
            )
        l0_w, l0_h = self.dimensions
        lv_width, lv_height = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        # OpenSlide maps l0 -> level by dividing by the downsample; half a level pixel of
        # slack absorbs the rounding of level sizes (e.g. 1001 px -> 251 px at 4x).
        lv_x, lv_y = l0_x / ds, l0_y / ds
        if l0_x < 0 or l0_y < 0 or l0_x >= l0_w or l0_y >= l0_h or lv_x + lv_w > lv_width + 0.5 or lv_y + lv_h > lv_height + 0.5:
            raise RegionError(
                f"{self.path}: region at l0 ({l0_x}, {l0_y}) of {lv_w}x{lv_h} level-{level} pixels lies outside "
                f"level {level} ({lv_width}x{lv_height}; level 0 is {l0_w}x{l0_h})"
            )

    def _read(self, l0_x: int, l0_y: int, level: int, lv_w: int, lv_h: int) -> np.ndarray:
        raise NotImplementedError

    def thumbnail(self, max_size: int) -> np.ndarray:
        """An RGB uint8 image of the whole slide, at most ``max_size`` pixels on its long side.

        Read in capped chunks from the best level, so even a single-level 100k-pixel slide
        never allocates more than one chunk at a time.
        """
        l0_w, l0_h = self.dimensions
        ds = max(l0_w / max_size, l0_h / max_size, 1.0)
        out_w, out_h = max(1, round(l0_w / ds)), max(1, round(l0_h / ds))
        level = self.get_best_level_for_downsample(ds)
        lv_width, lv_height = self.level_dimensions[level]
        level_ds = self.level_downsamples[level]
        lv_per_out = (lv_width / out_w, lv_height / out_h)
        out = np.empty((out_h, out_w, 3), np.uint8)
        chunk = 2048
        for lv_y0 in range(0, lv_height, chunk):
            for lv_x0 in range(0, lv_width, chunk):
                lv_x1, lv_y1 = min(lv_x0 + chunk, lv_width), min(lv_y0 + chunk, lv_height)
                out_x0, out_x1 = round(lv_x0 / lv_per_out[0]), round(lv_x1 / lv_per_out[0])
                out_y0, out_y1 = round(lv_y0 / lv_per_out[1]), round(lv_y1 / lv_per_out[1])
                if out_x1 <= out_x0 or out_y1 <= out_y0:
                    continue
                l0_x = min(round(lv_x0 * level_ds), l0_w - 1)
                l0_y = min(round(lv_y0 * level_ds), l0_h - 1)
                region = to_rgb(self.read_region(l0_x, l0_y, level, lv_x1 - lv_x0, lv_y1 - lv_y0), self.background_rgb)
                out[out_y0:out_y1, out_x0:out_x1] = _resize_rgb(region, out_x1 - out_x0, out_y1 - out_y0)
        return out

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (``label``, ``macro``, ``thumbnail``...) as RGBA uint8."""
        raise SlideReadError(f"{self.path}: no associated image named {name!r}; the slide has {list(self.associated_image_names)}")

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Release the file. Only call once no read is in flight (see the module docstring)."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "SlideSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.dimensions[0]}x{self.dimensions[1]}, levels={self.level_count})"


def to_rgb(region: np.ndarray, background_rgb: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Composite an RGBA region over a background colour; RGB input is returned as is."""
    if region.shape[2] == 3:
        return region
    alpha = region[:, :, 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(region[:, :, :3])
    a = alpha.astype(np.uint16)
    bg = np.asarray(background_rgb, np.uint16)
    return ((region[:, :, :3].astype(np.uint16) * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def _resize_rgb(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    from PIL import Image

    if rgb.shape[1] == out_w and rgb.shape[0] == out_h:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BOX))


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


class ArraySlide(SlideSource):
    """An in-memory slide over numpy arrays, with the same interface as an OpenSlide slide.

    ``levels`` is one ``(H, W, 3|4)`` uint8 array (level 0) or a list of them, finest first;
    ``build_levels`` adds 2x box-filtered levels until the coarsest fits ``min_size`` pixels.
    """

    def __init__(
        self,
        levels: np.ndarray | Sequence[np.ndarray],
        *,
        mpp: float | tuple[float, float] | None = None,
        objective_power: float | None = None,
        path: str = "<array>",
        vendor: str | None = "array",
        properties: dict[str, str] | None = None,
        associated: dict[str, np.ndarray] | None = None,
        build_levels: bool = False,
        min_size: int = 512,
        max_region_bytes: int = DEFAULT_MAX_REGION_BYTES,
    ) -> None:
        super().__init__(max_region_bytes=max_region_bytes)
        arrays = [levels] if isinstance(levels, np.ndarray) else list(levels)
        for a in arrays:
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
                raise SlideOpenError(f"{path}: an array slide needs uint8 (H, W, 3|4) arrays, got {a.dtype} {a.shape}")
        if build_levels:
            while max(arrays[-1].shape[:2]) > min_size and min(arrays[-1].shape[:2]) >= 2:
                arrays.append(_halve(arrays[-1]))
        self._levels = [np.ascontiguousarray(a) for a in arrays]
        self.path = path
        h0, w0 = self._levels[0].shape[:2]
        self.dimensions = (w0, h0)
        self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in self._levels)
        self.level_downsamples = tuple((w0 / a.shape[1] + h0 / a.shape[0]) / 2 for a in self._levels)
        if isinstance(mpp, numbers.Real):
            mpp = (float(mpp), float(mpp))
        self.mpp = tuple(mpp) if mpp else None
        self.objective_power = objective_power
        self.vendor = vendor
        self._associated = dict(associated or {})
        self.associated_image_names = tuple(self._associated)
        self.properties = dict(properties or {})

    def _read(self, l0_x, l0_y, level, lv_w, lv_h) -> np.ndarray:
        ds = self.level_downsamples[level]
        lv_x, lv_y = int(round(l0_x / ds)), int(round(l0_y / ds))
        data = self._levels[level]
        out = data[lv_y : lv_y + lv_h, lv_x : lv_x + lv_w]
        if out.shape[:2] != (lv_h, lv_w):  # the half-pixel slack at the far edge
            padded = np.zeros((lv_h, lv_w, data.shape[2]), np.uint8)
            padded[: out.shape[0], : out.shape[1]] = out
            out = padded
        return np.ascontiguousarray(out)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._associated:
            super().associated_image(name)
        img = self._associated[name]
        if img.shape[2] == 4:
            return img
        return np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)

    def _close(self) -> None:
        self._levels = []


def _halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w].astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)


def _float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideOpenError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise SlideOpenError(f"{path}: is a folder, not a slide; open one of the slide files inside it")
    if not os.access(path, os.R_OK):
        raise SlideOpenError(f"{path}: permission denied; check the file's permissions")
    if path.stat().st_size == 0:
        raise SlideOpenError(f"{path}: the file is empty (0 bytes); it was probably not copied completely")


def _open_plain_image(path: Path, max_region_bytes: int) -> ArraySlide:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PLAIN_IMAGE_PIXELS:
                raise SlideOpenError(
                    f"{path}: a {img.width}x{img.height} plain image is too large to decode whole; "
                    f"convert it to a tiled pyramidal TIFF"
                )
            img.load()  # eager: a truncated file fails here, not later in a worker
            rgba = np.asarray(img.convert("RGBA"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise SlideOpenError(f"{path}: not an image this viewer can read ({exc})") from exc
    except OSError as exc:
        raise SlideOpenError(f"{path}: the image could not be decoded ({exc}); the file may be truncated") from exc
    rgb_or_rgba = rgba[:, :, :3].copy() if rgba[:, :, 3].min() == 255 else rgba
    return ArraySlide(
        rgb_or_rgba, path=str(path), vendor="image", build_levels=True, min_size=1024, max_region_bytes=max_region_bytes
    )


def open_slide(path: str | os.PathLike, *, max_region_bytes: int = DEFAULT_MAX_REGION_BYTES) -> SlideSource:
    """Open a slide or plain image; raises :class:`SlideOpenError` naming the file and the reason.

    Choice of reader: PNG/JPEG/BMP go to PIL (decoded whole, with a pyramid built in memory);
    everything else goes to ``openslide.OpenSlide``; a ``.tif``/``.tiff`` OpenSlide refuses
    (an untiled TIFF) falls back to PIL, decoded eagerly so a truncated file is an error.
    """
    p = Path(path)
    _check_path(p)
    suffix = p.suffix.lower()
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return _open_plain_image(p, max_region_bytes)
    try:
        return OpenSlideSource(p, max_region_bytes=max_region_bytes)
    except SlideOpenError as openslide_error:
        if suffix not in TIFF_SUFFIXES:
            raise
        try:
            return _open_plain_image(p, max_region_bytes)
        except SlideOpenError as pil_error:
            raise SlideOpenError(f"{openslide_error} (as a plain TIFF image: {pil_error})") from pil_error
