"""Export the view to PNG: at screen resolution (what the widget paints) or at a chosen
resolution read from the slide's pyramid. Reading, resizing and saving run on a worker."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from PySide6.QtCore import QBuffer, QByteArray, QIODevice
from PySide6.QtGui import QImage

from engine.api import write_file
from engine.errors import RegionError
from engine.geometry import Box, l0_to_lv, lv_to_l0_read_origin
from engine.slides import SlideSource, to_rgb
from viewer.workers.images import array_to_qimage
from viewer.workers.sources import SharedSource

#: Largest exported image (pixels); beyond it the PNG would be gigabytes in memory.
MAX_EXPORT_PIXELS = 16384 * 16384
CHUNK = 2048


def render_l0_box(source: SlideSource, l0_box: Box, out_w: int, out_h: int) -> QImage:
    """The slide's pixels of ``l0_box`` at ``out_w`` x ``out_h``, read from the best level.

    Parts of the box outside the slide are the slide's background colour.
    """
    if out_w * out_h > MAX_EXPORT_PIXELS:
        raise RegionError(f"{source.path}: an export of {out_w}x{out_h} px is too large; choose a lower resolution")
    ds = l0_box.width / out_w
    level = source.get_best_level_for_downsample(ds)
    level_ds = source.level_downsamples[level]
    lv_w, lv_h = source.level_dimensions[level]
    lv_box = l0_to_lv(l0_box, level_ds)
    lv_out = Box(0, 0, lv_w, lv_h).intersect(lv_box).outer_int().intersect(Box(0, 0, lv_w, lv_h))
    width, height = math.ceil(lv_box.width), math.ceil(lv_box.height)
    if width * height * 3 > MAX_EXPORT_PIXELS * 3:
        raise RegionError(f"{source.path}: the exported area needs a {width}x{height} px read; zoom in or export smaller")
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = source.background_rgb
    if not lv_out.is_empty:
        for lv_y in range(int(lv_out.y0), int(lv_out.y1), CHUNK):
            for lv_x in range(int(lv_out.x0), int(lv_out.x1), CHUNK):
                w, h = min(CHUNK, int(lv_out.x1) - lv_x), min(CHUNK, int(lv_out.y1) - lv_y)
                l0_x, l0_y = lv_to_l0_read_origin(lv_x, lv_y, level_ds, source.dimensions)
                pixels = to_rgb(source.read_region(l0_x, l0_y, level, w, h), source.background_rgb)
                cx, cy = lv_x - math.floor(lv_box.x0), lv_y - math.floor(lv_box.y0)
                part = canvas[max(cy, 0) : cy + h, max(cx, 0) : cx + w]
                part[:] = pixels[max(-cy, 0) : max(-cy, 0) + part.shape[0], max(-cx, 0) : max(-cx, 0) + part.shape[1]]
    resized = np.asarray(Image.fromarray(canvas).resize((out_w, out_h), Image.Resampling.LANCZOS))
    return array_to_qimage(resized)


def export_region_png(shared: SharedSource, l0_box: Box, out_w: int, out_h: int, path: str) -> str:
    """Worker job: render ``l0_box`` from the slide at the given size and save it as PNG."""
    with shared as source:
        image = render_l0_box(source, l0_box, out_w, out_h)
    return save_png(image, path)


def save_png(image: QImage, path: str) -> str:
    """Worker job: encode ``image`` as PNG and write it through the engine's atomic writer
    (nothing half-written under the name; a full disk or read-only folder is a ResultsError
    saying so)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise ValueError(f"{path}: the image could not be encoded as PNG ({image.width()}x{image.height()})")
    buffer.close()
    return str(write_file(path, bytes(data)))
