"""Synthetic H&E-like whole-slide images with small lesions, deterministic by seed.

A slide has white glass, a tissue blob with a ragged outline, pink fibrous stroma with scattered
small purple nuclei and, on positive slides, a few lesions (a few hundred µm across) of one of two
kinds: ``"cells"``, clusters of larger, darker cells, plain at any zoom; or ``"vesicular"``, where
the nuclei keep their places, number, size and amount of stain but have a clear centre and a
darker rim: a texture inside each nucleus that box-averaging to a few µm per pixel erases. Only the image-level label is meant for training; the lesion
mask is written beside it for evaluating saliency. Slides are tiled pyramidal Aperio SVS files
that OpenSlide reads, rendered tile by tile so large slides never sit in memory.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.geometry import Box, lv_centres_to_l0
from engine.io import atomic

GLASS = np.array([242, 240, 244], np.float32)
STROMA = np.array([233, 160, 196], np.float32)
NUCLEUS = np.array([95, 55, 150], np.float32)
LESION_CELL = np.array([70, 40, 125], np.float32)
STROMA_MEAN = STROMA - 9  # the fibres darken it by 0-18


@dataclass(frozen=True)
class SlideRecipe:
    """Everything that decides a slide's pixels (level-0 pixels unless named otherwise)."""

    seed: int
    size: tuple[int, int] = (4096, 4096)
    mpp: float = 0.5
    positive: bool = False
    lesions: int = 3
    lesion_radius_um: float = 120.0
    nucleus_spacing_px: float = 22.0
    nucleus_radius_px: tuple[float, float] = (2.0, 3.5)
    # "cells": lesion cells (below) replace the nuclei inside lesions. "vesicular": the nuclei
    # inside lesions get a clear centre (vesicle_fraction of their radius) and a rim dark enough
    # to hold the same amount of stain.
    lesion_texture: str = "cells"
    vesicle_fraction: float = 0.5
    # Lesion cells: nucleus radius range and mean spacing (level-0 px), and how far their colour
    # goes from stroma towards LESION_CELL (1: all the way). The defaults draw crowded dark
    # clusters, plain at any zoom; `subtle_lesions` matches the tissue's mean colour instead.
    lesion_cell_radius_px: tuple[float, float] = (4.0, 6.0)
    lesion_cell_spacing_px: float = 9.9
    lesion_cell_strength: float = 1.0
    # This share of the nuclei outside lesions is vesicular too, scattered over the whole tissue
    # (the regression cohort's target: a density visible only at high resolution).
    scattered_vesicular_fraction: float = 0.0


@dataclass(frozen=True)
class Lesion:
    l0_x: float
    l0_y: float
    l0_radius: float


class Scene:
    """The slide's geometry: tissue field, nuclei and lesion cells, computed once from the seed."""

    def __init__(self, recipe: SlideRecipe):
        self.recipe = recipe
        rng = np.random.default_rng(recipe.seed)
        w, h = recipe.size
        # Tissue: smooth random field on a coarse grid, thresholded; bilinear upsampling per tile.
        self.grid_step = 64
        gh, gw = h // self.grid_step + 2, w // self.grid_step + 2
        field = rng.normal(size=(gh, gw)).astype(np.float32)
        for _ in range(6):  # cheap smoothing: repeated 3x3 box blur
            field = (field + np.roll(field, 1, 0) + np.roll(field, -1, 0) + np.roll(field, 1, 1) + np.roll(field, -1, 1)) / 5
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        cy, cx = (gh - 1) / 2, (gw - 1) / 2
        radial = 1.0 - np.hypot((yy - cy) / (gh / 2), (xx - cx) / (gw / 2))  # favour a central blob
        self.tissue_field = radial + 2.5 * field
        spacing = recipe.nucleus_spacing_px
        n = int(w * h / spacing ** 2)
        # Columns: x, y, radius, radius of a clear centre (0: a solid nucleus).
        self.nuclei = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n), rng.uniform(*recipe.nucleus_radius_px, n),
                                np.zeros(n)], axis=1)
        self.lesions: list[Lesion] = []
        cells = []
        if recipe.positive:
            r = recipe.lesion_radius_um / recipe.mpp
            for _ in range(recipe.lesions):
                for _attempt in range(200):  # place lesions inside tissue, not on glass
                    x, y = rng.uniform(r, w - r), rng.uniform(r, h - r)
                    if self._tissue_at(np.array([[y]]), np.array([[x]]))[0, 0]:
                        break
                self.lesions.append(Lesion(float(x), float(y), float(r)))
                if recipe.lesion_texture == "cells":
                    m = int(np.pi * r * r / recipe.lesion_cell_spacing_px ** 2)
                    ang, rad = rng.uniform(0, 2 * np.pi, m), r * np.sqrt(rng.uniform(0, 1, m))
                    cells.append(np.stack([x + rad * np.cos(ang), y + rad * np.sin(ang),
                                           rng.uniform(*recipe.lesion_cell_radius_px, m), np.zeros(m)], axis=1))
        self.cells = np.concatenate(cells) if cells else np.zeros((0, 4))
        self.vesicular = np.zeros((0, 4))
        inside = np.zeros(len(self.nuclei), bool)
        for les in self.lesions:
            inside |= np.hypot(self.nuclei[:, 0] - les.l0_x, self.nuclei[:, 1] - les.l0_y) <= les.l0_radius
        if recipe.lesion_texture == "cells":  # lesion cells replace the normal nuclei where they grow
            self.nuclei = self.nuclei[~inside]
        elif recipe.lesion_texture == "vesicular":
            self.vesicular = self.nuclei[inside].copy()
            self.vesicular[:, 3] = recipe.vesicle_fraction * self.vesicular[:, 2]
            self.nuclei = self.nuclei[~inside]
        else:
            raise ValueError(f"unknown lesion_texture {recipe.lesion_texture!r}: use 'cells' or 'vesicular'")
        if recipe.scattered_vesicular_fraction > 0:
            # Its own random stream, drawn last: slides without scattered nuclei stay as they were.
            picked = np.random.default_rng([recipe.seed, 7]).random(len(self.nuclei)) < recipe.scattered_vesicular_fraction
            scattered = self.nuclei[picked].copy()
            scattered[:, 3] = recipe.vesicle_fraction * scattered[:, 2]
            self.vesicular = np.concatenate([self.vesicular, scattered])
            self.nuclei = self.nuclei[~picked]

    def vesicular_in_tissue(self) -> int:
        """Vesicular nuclei whose centre lies in tissue (those on glass are never drawn)."""
        v = self.vesicular
        w, h = self.recipe.size
        v = v[(v[:, 0] < w - 1) & (v[:, 1] < h - 1)]
        return int(self._tissue_at(v[:, 1].astype(np.float32), v[:, 0].astype(np.float32)).sum())

    def tissue_mm2(self, step: int = 16) -> float:
        """The tissue's area, counted on a ``step``-pixel grid."""
        w, h = self.recipe.size
        ys, xs = np.arange(step / 2, h, step, dtype=np.float32), np.arange(step / 2, w, step, dtype=np.float32)
        return float(self._tissue_at(ys[:, None], xs[None, :]).sum()) * (step * self.recipe.mpp / 1000) ** 2

    def _tissue_at(self, l0_y: np.ndarray, l0_x: np.ndarray) -> np.ndarray:
        gy, gx = l0_y / self.grid_step, l0_x / self.grid_step
        y0, x0 = np.floor(gy).astype(int), np.floor(gx).astype(int)
        fy, fx = gy - y0, gx - x0
        f = self.tissue_field
        v = (f[y0, x0] * (1 - fy) * (1 - fx) + f[y0 + 1, x0] * fy * (1 - fx)
             + f[y0, x0 + 1] * (1 - fy) * fx + f[y0 + 1, x0 + 1] * fy * fx)
        return v > 0.35

    def render(self, downsample: float, lv_box: Box) -> np.ndarray:
        """RGB uint8 of a level box (engine.io.svs's renderer contract)."""
        x0, y0, x1, y1 = int(lv_box.x0), int(lv_box.y0), int(lv_box.x1), int(lv_box.y1)
        ly = lv_centres_to_l0(y0, y1, downsample, np.float32)
        lx = lv_centres_to_l0(x0, x1, downsample, np.float32)
        tissue = self._tissue_at(ly[:, None], lx[None, :])
        fibres = 0.5 + 0.5 * np.sin(lx[None, :] * 0.05 + 3 * np.sin(ly[:, None] * 0.013))
        rgb = np.where(tissue[..., None], STROMA - 18 * fibres[..., None], GLASS)
        dark = np.zeros(tissue.shape, np.float32)
        lesion = np.zeros(tissue.shape, np.float32)
        rim = np.zeros(tissue.shape, np.float32)
        for points, target in ((self.nuclei, dark), (self.cells, lesion), (self.vesicular, rim)):
            self._stamp(points, target, lx, ly, downsample)
        dark *= tissue
        lesion *= tissue * self.recipe.lesion_cell_strength  # lesions grow in tissue, never on the glass
        rim *= tissue
        rgb = rgb * (1 - dark[..., None]) + NUCLEUS * dark[..., None]
        if len(self.vesicular):
            # The rim covers 1 - f^2 of the nucleus, so it departs from the stroma by 1 / (1 - f^2)
            # as much as a solid nucleus does: the same stain per nucleus.
            f = self.recipe.vesicle_fraction
            rim_colour = np.clip(STROMA_MEAN - (STROMA_MEAN - NUCLEUS) / (1 - f * f), 0, 255)
            rgb = rgb * (1 - rim[..., None]) + rim_colour * rim[..., None]
        rgb = rgb * (1 - lesion[..., None]) + LESION_CELL * lesion[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8)

    @staticmethod
    def _stamp(points: np.ndarray, target: np.ndarray, lx: np.ndarray, ly: np.ndarray, ds: float) -> None:
        if not len(points):
            return
        bx0, bx1, by0, by1 = lx[0] - 8 * ds, lx[-1] + 8 * ds, ly[0] - 8 * ds, ly[-1] + 8 * ds
        inside = (points[:, 0] > bx0) & (points[:, 0] < bx1) & (points[:, 1] > by0) & (points[:, 1] < by1)
        for px, py, pr, inner in points[inside]:
            c0, c1 = np.searchsorted(lx, [px - pr - ds, px + pr + ds])
            r0, r1 = np.searchsorted(ly, [py - pr - ds, py + pr + ds])
            if c1 <= c0 or r1 <= r0:
                continue
            d = np.hypot(lx[None, c0:c1] - px, ly[r0:r1, None] - py)
            # Anti-aliased disc: coverage falls from 1 to 0 over one level pixel at the rim; a
            # nucleus with a clear centre is a disc less that centre.
            cover = np.clip((pr - d) / ds + 0.5, 0, 1)
            if inner > 0:
                cover -= np.clip((inner - d) / ds + 0.5, 0, 1)
            np.maximum(target[r0:r1, c0:c1], cover, out=target[r0:r1, c0:c1])

    def lesion_mask(self, cell: int) -> np.ndarray:
        """Boolean (h/cell, w/cell) mask of lesion discs, for evaluation only."""
        w, h = self.recipe.size
        ys = (np.arange(0, h, cell) + cell / 2)[:, None]
        xs = (np.arange(0, w, cell) + cell / 2)[None, :]
        mask = np.zeros((len(ys), xs.shape[1]), bool)
        for les in self.lesions:
            mask |= np.hypot(xs - les.l0_x, ys - les.l0_y) <= les.l0_radius
        return mask


IN_MEMORY_MAX_PIXELS = 8192 * 8192  # up to here level 0 is rendered whole (192 MiB) and averaged down


def write_synthetic_slide(path: str | os.PathLike, recipe: SlideRecipe, *, mask_cell: int = 16,
                          downsamples: tuple[int, ...] | None = None) -> dict:
    """Write the slide (SVS; ``downsamples`` per level, default: halve to thumbnail size) and, beside it, ``<stem>.mask.npz`` (lesion mask at ``mask_cell``
    level-0 pixels per cell) and ``<stem>.json`` (recipe, lesions). Returns that JSON."""
    from engine.io.svs import write_svs

    path = Path(path)
    scene = Scene(recipe)
    w, h = recipe.size
    if w * h <= IN_MEMORY_MAX_PIXELS:
        # Coarser levels as a scanner would see them: box averages of the level-0 pixels (the
        # scene's own rendering at a downsample point-samples sub-pixel cells, which changes the
        # mean colour of fine texture). Level 0 is rendered in bands to bound temporaries.
        from engine.io.svs import array_renderer

        rgb = np.empty((h, w, 3), np.uint8)
        for y0 in range(0, h, 512):
            rgb[y0:y0 + 512] = scene.render(1.0, Box(0, y0, w, min(h, y0 + 512)))
        render = array_renderer(rgb)
    else:
        render = scene.render
    write_svs(path, recipe.size, render, downsamples=downsamples, mpp=recipe.mpp, app_mag=20 * 0.5 / recipe.mpp, tile=256)
    mask = scene.lesion_mask(mask_cell)
    atomic.write_with(path.with_suffix(".mask.npz"), lambda f: np.savez_compressed(f, mask=mask, cell=np.int64(mask_cell)))
    info = {"recipe": asdict(recipe), "label": int(recipe.positive), "lesions": [asdict(le) for le in scene.lesions]}
    atomic.write_json(path.with_suffix(".json"), info, indent=2)
    return info
