"""numpy -> QImage conversions for worker threads (QImage is reentrant; QPixmap is UI-only)."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QImage

from engine.slides import to_rgb


def array_to_qimage(pixels: np.ndarray, background_rgb: tuple[int, int, int] = (255, 255, 255)) -> QImage:
    """An RGB32 QImage owning a copy of an (H, W, 3|4) uint8 array (alpha over the background)."""
    rgb = np.ascontiguousarray(to_rgb(pixels, background_rgb))
    h, w = rgb.shape[:2]
    borrowed = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return borrowed.convertToFormat(QImage.Format.Format_RGB32)  # owns its pixels; rgb may go


def qimage_to_rgb(image: QImage) -> np.ndarray:
    """(H, W, 3) uint8 copy of a QImage's pixels (tests and exports)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    h, w, stride = rgb.height(), rgb.width(), rgb.bytesPerLine()
    return np.frombuffer(rgb.constBits(), np.uint8, count=h * stride).reshape(h, stride)[:, : 3 * w].reshape(h, w, 3).copy()
