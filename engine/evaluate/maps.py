"""Kept maps of an evaluation (``EvaluationSpec.keep_maps``): each slide's prediction map from the
same streamed pass that scores it, written as ``out_dir/maps/<slide folder>/maps.npz`` so a viewer
reopens the slide with its maps without running the model again.

The map covers the evaluated input: the slide read at the card's level, cropped to its tissue box
and centred in (or cropped to) ``input_size`` as :func:`engine.train.data.read_slide_input` does
without augmentation. Its cells are the head's: with a pool-only head each trunk output cell
(gathered block by block through the ``on_block`` hook, so no map of features is ever held),
otherwise the head's own grid on the stitched map, each cell the head stages' stride in trunk
cells. Both are the masked model's (:func:`engine.infer_head.masked_cell_logits`, as inference
draws its prediction map): NaN on cells outside the slide's mask. Values are the task's outputs per cell: class
probabilities, label probabilities, or targets in their own units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.events import Prediction
from engine.geometry import Box, LevelRegion
from engine.infer_head import head_stride, masked_cell_logits
from engine.io.maps import MapLayer, write_maps
from engine.io.paths import safe_child, slide_folder_names
from engine.slides import open_slide
from engine.slides.region import choose_level, level_region, tissue_box

MAPS_FOLDER = "maps"
PREDICTION = "prediction"


def maps_folders(out_dir: str | Path, slides: list[str]) -> dict[str, Path]:
    """Where each slide's kept maps go: ``out_dir/maps/<name>``, names from
    :func:`engine.io.paths.slide_folder_names` (safe, unique per slide)."""
    root = Path(out_dir) / MAPS_FOLDER
    return {s: safe_child(root, name) for s, name in zip(slides, slide_folder_names(slides), strict=True)}


def input_region(path: str | Path, inputs) -> LevelRegion:
    """The level pixels the evaluated input of ``path`` shows (``inputs``: an
    :class:`engine.train.data.InputSpec`), origin at the input's first pixel: the tissue box, or
    the centred window of ``inputs.size`` over it (its origin before the box when padded)."""
    with open_slide(path) as slide:
        level = choose_level(slide, level=inputs.level, mpp=inputs.mpp, fallback_level=None)
        l0_box = tissue_box(slide) if inputs.tissue_crop else Box(0, 0, *slide.dimensions)
        region = level_region(slide, level, l0_box)
    if inputs.size is None:
        return region
    size = int(inputs.size)
    # read_slide_input without rng: a larger box is cropped centred, a smaller one padded centred.
    dx = (region.lv_w - size) // 2 if region.lv_w > size else -((size - region.lv_w) // 2)
    dy = (region.lv_h - size) // 2 if region.lv_h > size else -((size - region.lv_h) // 2)
    return LevelRegion(region.level, region.downsample, region.lv_x0 + dx, region.lv_y0 + dy, size, size)


def cell_outputs(task, cell_logits: torch.Tensor) -> np.ndarray:
    """(K, h, w) float32 task outputs of per-cell logits (1, K, h, w): what ``task.outputs`` gives
    a slide's logits, given to every cell."""
    logits = cell_logits.detach().double()[0]
    if task.name == "classification":
        out = torch.softmax(logits, 0)
    elif task.name == "multilabel":
        out = torch.sigmoid(logits)
    else:
        out = logits * torch.as_tensor(task.std, dtype=torch.float64)[:, None, None] \
            + torch.as_tensor(task.mean, dtype=torch.float64)[:, None, None]
    return out.cpu().numpy().astype(np.float32)


class CellMap:
    """A slide's per-cell outputs of the masked model (``mask`` (1, 1, H, W) on the trunk's grid,
    or None), filled block by block (``on_block``, a head without stages) or at once
    (``put_all``, the stitched map): :func:`engine.infer_head.masked_cell_logits`, as inference
    draws them, NaN on the cells outside the mask."""

    def __init__(self, task, head, mask: torch.Tensor | None = None) -> None:
        self.task, self.head, self.mask = task, head, mask
        self.stride = head_stride(head)
        self.blocks: list[tuple[tuple[int, int], tuple[int, int], np.ndarray]] = []
        self.whole: np.ndarray | None = None

    def on_block(self, rows: tuple[int, int], cols: tuple[int, int], fmap_block: torch.Tensor) -> None:
        mask = None if self.mask is None else self.mask[..., rows[0]:rows[1], cols[0]:cols[1]]
        logits = masked_cell_logits(self.head, fmap_block, mask, self.stride)
        self.blocks.append((rows, cols, cell_outputs(self.task, logits)))

    def put_all(self, fmap: torch.Tensor) -> None:
        self.whole = cell_outputs(self.task, masked_cell_logits(self.head, fmap, self.mask, self.stride))

    def values(self) -> np.ndarray | None:
        """(K, h, w): the whole map (NaN where no block reported), or None when nothing came."""
        if self.whole is not None:
            return self.whole
        if not self.blocks:
            return None
        k = self.blocks[0][2].shape[0]
        h = max(r[1] for r, _, _ in self.blocks)
        w = max(c[1] for _, c, _ in self.blocks)
        out = np.full((k, h, w), np.nan, np.float32)
        for (r0, r1), (c0, c1), v in self.blocks:
            out[:, r0:r1, c0:c1] = v
        return out


def map_l0_box(region: LevelRegion, map_hw: tuple[int, int], cell_hw: tuple[int, int]) -> Box:
    """The level-0 box of a map of ``map_hw`` cells over the input ``region``, ``cell_hw`` level
    pixels each (the trunk's stride times the head stages': :func:`engine.geometry.head_cell_hw`)."""
    return region.cells_to_l0((0, map_hw[0]), (0, map_hw[1]), cell_hw)


def write_slide_maps(folder: Path, slide: str, region: LevelRegion, values: np.ndarray, cell_hw,
                     classes: tuple[str, ...], outputs: list[float], task_name: str) -> str:
    """Write one slide's kept map; returns its ``maps.npz`` path."""
    box = map_l0_box(region, values.shape[1:], cell_hw)
    prediction = Prediction(tuple(classes), tuple(float(p) for p in outputs)) if task_name != "regression" else None
    written = write_maps(folder, {PREDICTION: MapLayer(values, box.as_tuple())}, slide_path=slide, classes=classes,
                         prediction=prediction, extra={"made_by": "engine.evaluate", "task": task_name,
                                                       "outputs": [float(p) for p in outputs]})
    return written["maps_npz"]
