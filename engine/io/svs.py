"""Write tiled, multi-level Aperio SVS files that OpenSlide reads as vendor ``aperio``.

Pixels come from a callable asked for one tile at a time, so a 40k x 40k slide never sits
in memory. The layout follows what OpenSlide's Aperio reader expects: level 0 (tiled) with
``MPP`` and ``AppMag`` in its ImageDescription, then a stripped thumbnail as the second
directory, then the coarser tiled levels, then stripped ``label`` / ``macro`` images whose
NewSubfileType marks them (1 for the label, 9 for the macro).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.geometry import Box, TileGrid, l0_to_lv_covering, lv_to_l0
from engine.io import atomic

#: ``render(downsample, lv_box) -> (h, w, 3) uint8``: the pixels of ``lv_box`` (in the plane
#: of a level with that downsample, integer corners) at that downsample.
RegionRenderer = Callable[[float, Box], np.ndarray]

_APERIO_HEADER = "Aperio Image Library v10.0.50"
#: OpenSlide 4 tells label from macro by NewSubfileType (reduced=1, reduced|macro=9), as
#: Aperio scanners write them; measured with openslide-bin 4.0.1.
_ASSOCIATED_SUBFILETYPE = {"label": 1, "macro": 9}


def level_sizes(l0_w: int, l0_h: int, downsamples: tuple[int, ...]) -> list[tuple[int, int]]:
    """Level sizes for integer downsamples, rounded up like scanners do."""
    boxes = [l0_to_lv_covering(Box(0, 0, l0_w, l0_h), ds) for ds in downsamples]
    return [(int(b.x1), int(b.y1)) for b in boxes]


def default_downsamples(l0_w: int, l0_h: int, *, factor: int = 4, coarsest_max: int = 1024) -> tuple[int, ...]:
    """1, 4, 16, ... until the coarsest level fits ``coarsest_max`` pixels on its long side."""
    out = [1]
    while max(l0_w, l0_h) / out[-1] > coarsest_max:
        out.append(out[-1] * factor)
    return tuple(out)


def write_svs(
    path: str | os.PathLike,
    l0_size: tuple[int, int],
    render: RegionRenderer,
    *,
    downsamples: tuple[int, ...] | None = None,
    tile: int = 256,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    quality: int = 90,
    thumbnail_max: int = 768,
    associated: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a pyramidal SVS of ``l0_size`` = (width, height) level-0 pixels.

    ``render`` is called once per tile per level (and once for the thumbnail); ``associated``
    maps ``"label"`` / ``"macro"`` to RGB arrays. The file is written through
    :mod:`engine.io.atomic`, so a crash never leaves a half-written slide; a failed write raises
    :class:`~engine.errors.ResultsError` naming the file.
    """
    fill = svs_fill(l0_size, render, downsamples=downsamples, tile=tile, mpp=mpp, app_mag=app_mag,
                    quality=quality, thumbnail_max=thumbnail_max, associated=associated)
    return atomic.write_with(Path(path), fill)


def svs_fill(
    l0_size: tuple[int, int],
    render: RegionRenderer,
    *,
    downsamples: tuple[int, ...] | None = None,
    tile: int = 256,
    mpp: float | None = 0.5,
    app_mag: float | None = 20,
    quality: int = 90,
    thumbnail_max: int = 768,
    associated: dict[str, np.ndarray] | None = None,
) -> atomic.Fill:
    """What :func:`write_svs` writes, as a fill for :mod:`engine.io.atomic` (for callers that
    stage several files together). Options are checked now, pixels rendered when it is called."""
    import tifffile

    l0_w, l0_h = l0_size
    if tile % 16:
        raise ValueError(f"tile size {tile} must be a multiple of 16 (TIFF)")
    downsamples = downsamples or default_downsamples(l0_w, l0_h)
    if downsamples[0] != 1:
        raise ValueError(f"the first downsample must be 1, got {downsamples}")
    for name in associated or {}:
        if name not in _ASSOCIATED_SUBFILETYPE:
            raise ValueError(f"Aperio files hold only 'label' and 'macro' associated images, not {name!r}")
    sizes = level_sizes(l0_w, l0_h, downsamples)
    meta = [f"{k} = {v}" for k, v in (("AppMag", app_mag), ("MPP", mpp)) if v is not None]
    first_desc = "|".join([f"{_APERIO_HEADER}\r\n{l0_w}x{l0_h} [0,100 {l0_w}x{l0_h}] ({tile}x{tile}) JPEG/RGB Q={quality}", *meta])
    bigtiff = l0_w * l0_h * 3 > 2**32  # JPEG shrinks it, but stay safe for noisy content
    common = dict(photometric="rgb", metadata=None, software=False)
    tiled = dict(tile=(tile, tile), compression="jpeg", compressionargs={"level": quality}, **common)

    def fill(f) -> None:
        with tifffile.TiffWriter(f, bigtiff=bigtiff) as tw:
            for index, (ds, (lv_w, lv_h)) in enumerate(zip(downsamples, sizes, strict=True)):
                desc = first_desc if index == 0 else f"{_APERIO_HEADER}\r\n{l0_w}x{l0_h} -> {lv_w}x{lv_h} - |" + "|".join(meta)
                tw.write(
                    _tiles(render, float(ds), TileGrid(lv_w, lv_h, tile)),
                    shape=(lv_h, lv_w, 3),
                    dtype=np.uint8,
                    description=desc,
                    subfiletype=0 if index == 0 else 1,
                    **tiled,
                )
                if index == 0:
                    thumb = _thumbnail(render, l0_w, l0_h, thumbnail_max)
                    tw.write(thumb, description=f"{_APERIO_HEADER}\r\n{l0_w}x{l0_h} -> {thumb.shape[1]}x{thumb.shape[0]} - thumbnail", subfiletype=1, **common)
            for name, image in (associated or {}).items():
                rgb = np.ascontiguousarray(image[:, :, :3], np.uint8)
                tw.write(rgb, description=f"{_APERIO_HEADER}\n{name} {rgb.shape[1]}x{rgb.shape[0]}", subfiletype=_ASSOCIATED_SUBFILETYPE[name], **common)
    return fill


def _tiles(render: RegionRenderer, downsample: float, grid: TileGrid) -> Iterator[np.ndarray]:
    # tifffile wants tiles row by row and zero-pads the clipped ones at the edges.
    for row in range(grid.rows):
        for col in range(grid.cols):
            lv_box = grid.tile_box(col, row)
            pixels = render(downsample, lv_box)
            expected = (int(lv_box.height), int(lv_box.width), 3)
            if pixels.shape != expected or pixels.dtype != np.uint8:
                raise ValueError(f"render returned {pixels.dtype} {pixels.shape} for {lv_box}, expected uint8 {expected}")
            yield pixels


def _thumbnail(render: RegionRenderer, l0_w: int, l0_h: int, max_size: int) -> np.ndarray:
    ds = max(l0_w / max_size, l0_h / max_size, 1.0)
    w, h = max(1, math.floor(l0_w / ds)), max(1, math.floor(l0_h / ds))
    return render(ds, Box(0, 0, w, h))


def array_renderer(rgb: np.ndarray) -> RegionRenderer:
    """A renderer over an in-memory level-0 RGB array (for tests and small files).

    Coarser levels are box-averaged with PIL from the level-0 pixels of each tile's area.
    """
    from PIL import Image

    rgb = np.ascontiguousarray(rgb[:, :, :3], np.uint8)
    l0_h, l0_w = rgb.shape[:2]

    def render(downsample: float, lv_box: Box) -> np.ndarray:
        l0_box = lv_to_l0(lv_box, downsample)
        x0, y0 = int(l0_box.x0), int(l0_box.y0)
        x1, y1 = min(l0_w, math.ceil(l0_box.x1)), min(l0_h, math.ceil(l0_box.y1))
        patch = rgb[y0:y1, x0:x1]
        size = (int(lv_box.width), int(lv_box.height))
        if patch.shape[1] == size[0] and patch.shape[0] == size[1]:
            return patch.copy()
        return np.asarray(Image.fromarray(patch).resize(size, Image.Resampling.BOX))

    return render


def write_svs_array(path: str | os.PathLike, rgb: np.ndarray, **kwargs) -> Path:
    """Write an in-memory RGB array as a pyramidal SVS (see :func:`write_svs` for options)."""
    return write_svs(path, (rgb.shape[1], rgb.shape[0]), array_renderer(rgb), **kwargs)


def svs_array_fill(rgb: np.ndarray, **kwargs) -> atomic.Fill:
    """:func:`write_svs_array` as a fill (see :func:`svs_fill`)."""
    return svs_fill((rgb.shape[1], rgb.shape[0]), array_renderer(rgb), **kwargs)
