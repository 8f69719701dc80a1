"""Torch-free slide access: open a slide, read regions, find its tissue.

The viewer reads slides only through this package.
"""

from engine.slides.region import LevelRegion, choose_level, level_region, tissue_box
from engine.slides.source import ArraySlide, OpenSlideSource, SlideSource, open_slide, to_rgb

__all__ = ["ArraySlide", "LevelRegion", "OpenSlideSource", "SlideSource", "choose_level", "level_region",
           "open_slide", "tissue_box", "to_rgb"]
