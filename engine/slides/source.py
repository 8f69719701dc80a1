"""The slide interface shared by the viewer and the engine (torch-free, Qt-free).

:func:`engine.slides.open_slide` returns a :class:`SlideSource`: an OpenSlide-backed slide
(:mod:`engine.slides.openslide_source`) for every format OpenSlide reads, or an in-memory
:class:`~engine.slides.array_slide.ArraySlide` for plain PNG/JPEG/BMP images and for untiled
TIFFs OpenSlide refuses. Every failure is an :mod:`engine.errors` ``SlideError`` subclass whose
message names the file and says what to do.

Coordinates are named by plane: ``l0_x`` is in level-0 pixels, ``lv_w`` in the pixels of
the level being read.

Thread safety: one ``SlideSource`` may be read from several threads at once (OpenSlide
handles are thread-safe and release the GIL; ``ArraySlide`` only slices). ``close()`` must
only be called once no read is in flight; the viewer's tile loader guarantees this.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from engine.errors import RegionError, SlideReadError
from engine.geometry import l0_to_lv_point, lv_to_l0_origin

#: Largest region one ``read_region`` may return, in bytes of RGBA (64 Mpx). OpenSlide
#: allocates ``w*h*4`` up front and would happily try tens of gigabytes.
DEFAULT_MAX_REGION_BYTES = 256 * 1024 * 1024


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
        lv_x, lv_y = l0_to_lv_point(l0_x, l0_y, ds)
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
                l0_x, l0_y = lv_to_l0_origin(lv_x0, lv_y0, level_ds)
                l0_x, l0_y = min(l0_x, l0_w - 1), min(l0_y, l0_h - 1)
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
