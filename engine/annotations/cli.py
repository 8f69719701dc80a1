"""``python -m engine annotations convert IN OUT`` and ``... annotations stats FILE [--slide SLIDE]``.

``add_parser(subparsers)`` adds the ``annotations`` command to the engine's parser; each
subcommand stores its function in ``args.annotations_main`` (``main(args)`` calls it). Exit
codes follow the engine CLI's: 0 done; 2 the annotation file is malformed or the conversion would
lose shapes (``--allow-loss``); 3 the slide could not be read; 6 the output could not be written.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.annotations.errors import AnnotationError
from engine.annotations.files import FORMATS, load_annotations, save_annotations
from engine.annotations.stats import stats
from engine.errors import ResultsError, SlideError
from engine.slides import open_slide

EXIT_OK, EXIT_BAD_FILE, EXIT_SLIDE, EXIT_WRITE = 0, 2, 3, 6


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("annotations", help="convert QuPath GeoJSON / ASAP XML annotations, or count them")
    sub = p.add_subparsers(dest="annotations_command", required=True)
    c = sub.add_parser("convert", help="convert between QuPath GeoJSON (.geojson/.json[.gz]) and ASAP XML (.xml)")
    c.add_argument("input", help="annotation file to read")
    c.add_argument("output", help="file to write; its extension picks the format")
    c.add_argument("--from", dest="from_format", choices=FORMATS, help="input format, if the extension does not say")
    c.add_argument("--to", dest="to_format", choices=FORMATS, help="output format, if the extension does not say")
    c.add_argument("--allow-loss", action="store_true",
                   help="write even what the output format cannot hold exactly (ASAP: holes are dropped, "
                        "polylines become point sets)")
    c.set_defaults(annotations_main=main_convert)
    s = sub.add_parser("stats", help="count annotations per class, with areas")
    s.add_argument("file", help="annotation file")
    s.add_argument("--slide", help="slide the annotations belong to: its microns per pixel give areas in µm²")
    s.add_argument("--mpp", type=float, help="microns per level-0 pixel (instead of reading --slide)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(annotations_main=main_stats)
    return p


def main(args: argparse.Namespace) -> int:
    return args.annotations_main(args)


def _warn(lines, stream) -> None:
    for line in lines:
        stream.write(f"warning: {line}\n")


def main_convert(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        loaded = load_annotations(args.input, format=args.from_format)
    except AnnotationError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    _warn(loaded.warnings, err)
    try:
        lost = save_annotations(loaded.annotations, args.output, format=args.to_format, allow_loss=args.allow_loss)
    except AnnotationError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    except ResultsError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_WRITE
    _warn(lost, err)
    n, k = len(loaded.annotations), len(loaded.annotations.class_names)
    out.write(f"wrote {n} annotation(s) in {k} class(es) to {args.output}\n")
    return EXIT_OK


def main_stats(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    mpp = args.mpp
    if mpp is None and args.slide:
        try:
            with open_slide(args.slide) as slide:
                mpp = slide.mpp
        except SlideError as exc:
            err.write(f"error: {exc}\n")
            return EXIT_SLIDE
        if mpp is None:
            err.write(f"warning: {args.slide} records no microns per pixel; areas are in level-0 px² only\n")
    try:
        loaded = load_annotations(args.file)
        result = stats(loaded.annotations, mpp)
    except AnnotationError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    _warn(loaded.warnings, err)
    out.write(json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n" if args.json else result.table() + "\n")
    return EXIT_OK
