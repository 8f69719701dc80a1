"""Opening a slide file: which reader takes which file, and which files count as slides."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.errors import SlideOpenError
from engine.slides.array_slide import ArraySlide
from engine.slides.openslide_source import OpenSlideSource
from engine.slides.source import DEFAULT_MAX_REGION_BYTES, SlideSource

#: Extensions opened with PIL, never with OpenSlide.
PLAIN_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
#: TIFFs OpenSlide refuses (untiled) fall back to PIL, loaded eagerly so truncation shows.
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
#: What counts as a slide file (slide browsers, class folders of labels): OpenSlide's formats
#: plus the plain images above. Ordered, so messages can name the common ones first.
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
                  ".png", ".jpg", ".jpeg", ".bmp")
#: A plain image is decoded whole into memory: refuse ones that would not fit sensibly.
MAX_PLAIN_IMAGE_PIXELS = 16384 * 16384


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
