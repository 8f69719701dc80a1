"""Worker jobs on slides: open one, make its overview, read an associated image, probe a file
for the slide browser. Each returns its result tagged with what it was for, because the user
may have moved on by the time it arrives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtGui import QImage

from engine.errors import SlideError
from engine.slides import SLIDE_SUFFIXES, SlideSource, open_slide
from viewer.workers.images import array_to_qimage
from viewer.workers.sources import SharedSource

#: The browser's thumbnail edge (the probe reads twice that, for sharp icons on HiDPI screens).
THUMB_PX = 64


def open_job(path: str) -> tuple[str, SlideSource | None, str | None]:
    """Open a slide; a failure comes back as a message, tagged with its path."""
    try:
        return path, open_slide(path), None
    except SlideError as exc:
        return path, None, str(exc)


def make_overview_image(shared: SharedSource, max_px: int) -> tuple[int, QImage]:
    """The slide's thumbnail as a QImage, tagged with the slide id."""
    with shared as source:
        return shared.slide_id, array_to_qimage(source.thumbnail(max_px))


def read_associated_image(shared: SharedSource, name: str) -> tuple[int, str, QImage]:
    with shared as source:
        return shared.slide_id, name, array_to_qimage(source.associated_image(name))


@dataclass(frozen=True)
class SlideInfo:
    path: str
    dimensions: tuple[int, int] | None = None
    mpp: tuple[float, float] | None = None
    thumbnail: QImage | None = None
    error: str | None = None


def probe_slide(path: str) -> SlideInfo:
    """Open, measure and thumbnail one file; a failure becomes ``error``."""
    try:
        with open_slide(path) as slide:
            return SlideInfo(path, slide.dimensions, slide.mpp, array_to_qimage(slide.thumbnail(THUMB_PX * 2)))
    except SlideError as exc:
        return SlideInfo(path, error=str(exc))


def list_slide_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
