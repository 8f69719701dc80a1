"""Helpers for overlay tests: coloured patches as the inference worker makes them."""

from __future__ import annotations

import numpy as np

from viewer.model.layers import SALIENCY, LayerKey, colourize
from viewer.model.overlays import ColouredPatch, LayerPatch, finite_range

TUMOUR, NORMAL = LayerKey("prediction", "tumour"), LayerKey("prediction", "normal")


def bgra_to_rgb(bgra):
    return bgra[..., [2, 1, 0]]


def patch_of(generation, geometry, r0, c0, values, style, key=SALIENCY) -> ColouredPatch:
    """One layer's patch of ``values`` at map cell (r0, c0), coloured with ``style``."""
    values = np.asarray(values, np.float32)
    return ColouredPatch(generation, geometry, r0, c0, (LayerPatch(key, values, colourize(values, style), style.version, *finite_range(values)),))
