"""Which of the trunk's output cells an inference run computes: those inside the annotation
regions (``InferenceSpec.regions``) and, with the tissue mask on, those on the slide's tissue.

Both masks live on the same grid (the trunk's output cells over the region read) and combine by
intersection. The run then treats the combined mask one way whatever made it: blocks without a
kept cell are skipped, kept cells alone reach the slide-level pool, every other map cell is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.annotations.regions import RunArea
from engine.errors import CheckpointError, SpecError
from engine.geometry import Box, MapGeometry
from engine.slides.tissue import MIN_CELL_TISSUE, TissueMask, TissueParams, slide_tissue


def tissue_mask_setting(spec, card) -> str:
    """"auto" or "none": the spec's ``tissue_mask``, else the model card's. Cards from before the
    tissue mask have none, and their models keep running as they were trained: on every cell."""
    mode = spec.tissue_mask if spec.tissue_mask is not None else getattr(card, "tissue_mask", None)
    return mode or "none"


def card_tissue_params(card, model_path) -> TissueParams:
    """The tissue detector's parameters the model was trained with (its card's
    ``tissue_params``; defaults when the card names none)."""
    params = getattr(card, "tissue_params", None) or {}
    try:
        return TissueParams(**dict(params))
    except (TypeError, SpecError) as exc:
        raise CheckpointError(f"{model_path}: field 'tissue_params' ({params}) is not usable: {exc}. "
                              "Fix the card, or run with tissue_mask 'none' (--tissue-mask none).") from None


def find_tissue(slide, spec, card) -> TissueMask | None:
    """The slide's tissue when the run is masked by it, else None: detected on its thumbnail
    with the card's parameters, once per slide file (the same mask training and evaluation use,
    :func:`engine.slides.tissue.slide_tissue`)."""
    if tissue_mask_setting(spec, card) != "auto":
        return None
    return slide_tissue(spec.slide_path, card_tissue_params(card, spec.model_path), slide=slide)


@dataclass(frozen=True)
class RunMask:
    """The areas a run is restricted to: ``area`` (annotation regions) and ``tissue``, either
    None when it does not restrict."""

    area: RunArea | None = None
    tissue: TissueMask | None = None

    @property
    def active(self) -> bool:
        return self.area is not None or self.tissue is not None

    def cells(self, grid: MapGeometry, l0_within: Box | None = None) -> np.ndarray | None:
        """(h, w) bool: the cells of ``grid`` computed (centre inside the area, and at least
        :data:`~engine.slides.tissue.MIN_CELL_TISSUE` of the cell tissue inside ``l0_within``,
        the region read); None when nothing restricts the run."""
        keep = None
        if self.area is not None:
            keep = self.area.cells_inside(grid)
        if self.tissue is not None:
            on_tissue = self.tissue_cells(grid, l0_within)
            keep = on_tissue if keep is None else keep & on_tissue
        return keep

    def tissue_cells(self, grid: MapGeometry, l0_within: Box | None = None) -> np.ndarray:
        """(h, w) bool: the cells of ``grid`` that are tissue (requires ``tissue``): the rule of
        training's masks (:func:`engine.train.masks.tissue_cells`), so the two agree cell for cell."""
        return self.tissue.on_grid(grid, min_fraction=MIN_CELL_TISSUE, l0_within=l0_within)

    def nothing_kept_message(self, cell_l0: tuple[float, float]) -> str:
        """Why a run has no cell to compute, and what to do."""
        size = f"each is {cell_l0[1]:g} x {cell_l0[0]:g} level-0 px"
        if self.tissue is not None and self.area is None:
            return (f"no tissue found in the region read on the model's output cells ({size}): choose a region "
                    "with tissue, or run without the tissue mask (tissue_mask 'none', --tissue-mask none)")
        if self.tissue is not None:
            return (f"the regions hold no whole output cell of the model on tissue ({size}): draw them over "
                    "tissue, or run without the tissue mask (tissue_mask 'none', --tissue-mask none)")
        return f"the regions hold no whole output cell of the model ({size})"
