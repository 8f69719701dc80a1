"""The area a run is restricted to: the union of include annotations less the exclude ones.

A run inside regions (:class:`engine.specs.InferenceSpec` ``regions``) reads the bounding box
of this area and computes only the map cells whose centre lies inside it (the same centre rule
as :func:`~engine.annotations.raster.rasterize`); every other cell is NaN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from engine.annotations.files import load_annotations
from engine.annotations.model import AnnotationSet
from engine.annotations.raster import rasterize
from engine.errors import SpecError
from engine.geometry import Box, MapGeometry


@dataclass(frozen=True)
class RunArea:
    """``geometry``: the level-0 area a run covers (polygons)."""

    geometry: BaseGeometry

    @classmethod
    def of(cls, regions: str | os.PathLike | AnnotationSet, include_classes: tuple[str, ...] = (),
           exclude_classes: tuple[str, ...] = ()) -> "RunArea":
        """The areas of ``regions`` (a file or a set) in ``include_classes`` (none given: every
        area except the excluded classes') less those in ``exclude_classes``.

        Raises :class:`~engine.annotations.errors.AnnotationError` for a bad file and
        :class:`~engine.errors.SpecError` when nothing with an area is left.
        """
        annotations = regions if isinstance(regions, AnnotationSet) else load_annotations(regions).annotations
        area = annotations.area_geometry(include_classes or None)
        if exclude_classes and not area.is_empty:
            area = shapely.difference(area, annotations.area_geometry(exclude_classes))
        if area.is_empty or area.area <= 0:
            which = f"classes {', '.join(include_classes)}" if include_classes else "annotations"
            less = f" less {', '.join(exclude_classes)}" if exclude_classes else ""
            raise SpecError(f"the regions cover nothing: no {which} with an area{less} in {_name(regions)}")
        return cls(area)

    @property
    def l0_bounds(self) -> Box:
        """The area's bounding box in level-0 pixels, integer corners (rounded outward)."""
        return Box(*self.geometry.bounds).outer_int()

    def cells_inside(self, grid: MapGeometry) -> np.ndarray:
        """(h, w) bool: the cells of ``grid`` whose centre lies inside the area."""
        return rasterize(self.geometry, grid)


def _name(regions) -> str:
    return "the annotations given" if isinstance(regions, AnnotationSet) else str(regions)
