"""The record of one ``infer``/``saliency`` call over several slides: which folder holds each
slide's results and how its run ended (``summary.json`` in the output folder).

Each slide gets its own folder (:func:`engine.io.paths.slide_folder_names`); a folder that
already holds the results of another slide (an earlier call with a slide of the same name) is
not reused: the slide gets its hashed name instead, so no call silently replaces another
slide's results.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.io import atomic
from engine.io.maps import recorded_slide
from engine.io.paths import safe_child, short_hash, slide_folder_names

SUMMARY_JSON = "summary.json"
SUMMARY_FORMAT = 1


@dataclass
class SlideOutcome:
    """One slide of the call: ``status`` "done", "cancelled", "failed" or "not run"."""

    slide: str
    folder: str
    status: str = "not run"
    label: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(str(Path(a).resolve())) == os.path.normcase(str(Path(b).resolve()))


def output_folders(out_dir: str | os.PathLike, slides: list[str]) -> list[Path]:
    """The results folder of each slide inside ``out_dir`` (unique per slide, never one that
    holds another slide's results); each is checked to lie inside ``out_dir``."""
    out = Path(out_dir)
    folders = []
    for slide, name in zip(slides, slide_folder_names(slides), strict=True):
        hashed = name if name.endswith(short_hash(slide)) else f"{name}-{short_hash(slide)}"
        held_here = recorded_slide(out / hashed)  # an earlier call gave this slide its hashed name
        holder = recorded_slide(out / name)
        if (held_here is not None and _same_file(held_here, slide)) or (holder is not None and not _same_file(holder, slide)):
            name = hashed
        folders.append(safe_child(out, name))
    return folders


def summary_name(rank: int = 0) -> str:
    """``summary.json``, or ``summary-rankN.json`` for rank N > 0 of a torchrun call."""
    return SUMMARY_JSON if rank == 0 else f"summary-rank{rank}.json"


def write_summary(out_dir: str | os.PathLike, command: str, model: str, outcomes: list[SlideOutcome], *,
                  rank: int = 0) -> Path:
    """Write the call's summary into ``out_dir`` (through :mod:`engine.io.atomic`)."""
    doc = {"format_version": SUMMARY_FORMAT, "command": command, "model": str(model),
           "cancelled": any(o.status == "cancelled" for o in outcomes),
           "slides": [asdict(o) for o in outcomes]}
    return atomic.write_json(safe_child(atomic.make_folder(out_dir), summary_name(rank)), doc, indent=1)
