"""A slide whose tissue is known: its left half purple "tissue" (with a green square the test
models fire on), its right half glass; and the trunk's cells that are tissue."""

from __future__ import annotations

import numpy as np
from model_fixtures import GREEN, GREY

from engine.geometry import Box, MapGeometry

SIZE = (1024, 512)  # level-0 (width, height)
TISSUE_X1 = 512  # tissue left of this, glass right of it
GREEN_BOX = (128, 128, 256, 256)  # on the tissue
WHOLE = (0, 0, *SIZE)
STRIDE = 16  # SmallNet's total stride at stage4


def write_half_tissue_slide(path):
    from engine.io.svs import write_svs_array

    rgb = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    rgb[:] = GREY
    rgb[:, :TISSUE_X1] = (150, 90, 170)
    x0, y0, x1, y1 = GREEN_BOX
    rgb[y0:y1, x0:x1] = GREEN
    return write_svs_array(path, rgb, mpp=0.5, app_mag=20, tile=256, downsamples=(1, 2))


def region_input(slide_path, dtype=np.float64):
    """The whole slide at level 0 as the green detector's normalised (1, 3, H, W) input."""
    import torch

    from engine.slides import open_slide

    with open_slide(str(slide_path)) as slide:
        rgb = slide.read_region(0, 0, 0, *SIZE)[..., :3]
    x = torch.from_numpy(rgb.astype(dtype) / 255.0).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5  # the test cards' normalisation


def tissue_keep(slide_path, fmap) -> np.ndarray:
    """(h, w) bool: the trunk's output cells (of ``fmap``, a map of the whole slide) on tissue."""
    from engine.slides import open_slide
    from engine.slides.tissue import detect_tissue

    with open_slide(str(slide_path)) as slide:
        tissue = detect_tissue(slide)
    out_h, out_w = fmap.shape[2:]
    return tissue.on_grid(MapGeometry(Box(0, 0, out_w * STRIDE, out_h * STRIDE), (out_h, out_w)))
