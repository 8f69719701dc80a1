"""``python -m engine export-heatmaps --maps maps.npz --slide SLIDE --out DIR``: a job's maps as
TIFFs registered to the whole slide (:mod:`engine.io.heatmap_tiff`), for ASAP, QuPath and OpenSlide.

``add_parser(subparsers)`` adds the command; ``main_export(args)`` runs it. Exit codes follow the
engine CLI's: 0 done; 2 not a maps file; 3 the slide could not be read; 6 a TIFF could not be written.
"""

from __future__ import annotations

import argparse
import sys

from engine.errors import ResultsError, SlideError
from engine.exits import EXIT_BAD_FILE, EXIT_OK, EXIT_SLIDE, EXIT_WRITE
from engine.io.heatmap_tiff import write_registered_heatmaps
from engine.io.maps import read_maps


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export-heatmaps", help="a job's maps as pyramidal TIFFs registered to the slide "
                                                      "(RGBA for viewers, float32 values)")
    p.add_argument("--maps", required=True, help="maps.npz a job wrote (or its folder)")
    p.add_argument("--slide", help="the slide the maps belong to (default: the one the maps file names)")
    p.add_argument("--out", required=True, help="folder for <layer>.heatmap.tif and <layer>.values.tif")
    p.add_argument("--layer", action="append", help="only this layer (repeatable; default: every layer)")
    p.add_argument("--colormap", default="viridis", help="colour map of the RGBA TIFFs (default viridis)")
    p.set_defaults(export_main=main_export)
    return p


def main_export(args: argparse.Namespace, out=None, err=None) -> int:
    from engine.slides import open_slide

    out, err = out or sys.stdout, err or sys.stderr
    try:
        layers, meta = read_maps(args.maps)
    except ResultsError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    wanted = args.layer or sorted(layers)
    missing = [name for name in wanted if name not in layers]
    if missing:
        err.write(f"error: the maps hold no {', '.join(missing)} layer (they hold {', '.join(sorted(layers))})\n")
        return EXIT_BAD_FILE
    slide_path = args.slide or meta.get("slide")
    try:
        with open_slide(slide_path) as slide:
            size, mpp = tuple(slide.dimensions), slide.mpp
    except SlideError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_SLIDE
    try:
        written = write_registered_heatmaps(args.out, {name: layers[name] for name in wanted}, size,
                                            mpp[0] if mpp else None, classes=tuple(meta.get("classes", ())),
                                            colormap=args.colormap)
    except ResultsError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_WRITE
    except ValueError as exc:  # an unknown colour map
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    for kind, path in written.items():
        out.write(f"{kind}: {path}\n")
    return EXIT_OK
