"""The area a run is restricted to: the union of include annotations less the exclude ones (or,
when only excluded annotations are given, the run's usual region less them).

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
           exclude_classes: tuple[str, ...] = (), l0_base: Box | None = None) -> "RunArea":
        """The areas of ``regions`` (a file or a set) in ``include_classes`` (none given: every
        area except the excluded classes') less those in ``exclude_classes``.

        With no ``include_classes`` and no area left to include (every annotation with an area is
        of an excluded class), the run covers ``l0_base`` (its usual region: ``l0_region``, else
        the tissue box) less the excluded areas: "everything but these".

        Raises :class:`~engine.annotations.errors.AnnotationError` for a bad file and
        :class:`~engine.errors.SpecError` when nothing with an area is left.
        """
        annotations = regions if isinstance(regions, AnnotationSet) else load_annotations(regions).annotations
        excluded = set(exclude_classes)
        nothing_to_include = not any(a.has_area and a.class_name not in excluded for a in annotations)
        if not include_classes and exclude_classes and nothing_to_include and l0_base is not None:
            area = shapely.box(*l0_base.as_tuple())
        else:
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
