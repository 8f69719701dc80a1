"""Torch-free slide access: open a slide, read regions, find its tissue.

The viewer reads slides only through this package.
"""

from engine.geometry import LevelRegion
from engine.slides.array_slide import ArraySlide
from engine.slides.opening import SLIDE_SUFFIXES, open_slide
from engine.slides.openslide_source import OpenSlideSource
from engine.slides.region import choose_level, level_region, tissue_box
from engine.slides.source import SlideSource, to_rgb

__all__ = ["SLIDE_SUFFIXES", "ArraySlide", "LevelRegion", "OpenSlideSource", "SlideSource", "choose_level",
           "level_region", "open_slide", "tissue_box", "to_rgb"]
