"""StreamSlide's engine: exact streaming CNNs over whole-slide images.

This package never imports Qt, pyqtgraph or :mod:`viewer`; the viewer talks to it
through :mod:`engine.api` (and the torch-free :mod:`engine.slides` / :mod:`engine.geometry`).
"""

__version__ = "0.1.0"
