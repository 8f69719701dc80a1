"""``python -m engine annotations convert IN OUT``, ``... annotations stats FILE [--slide SLIDE]``,
``... annotations from-map --maps maps.npz --threshold T --out FILE`` and
``python -m engine score-maps --maps maps.npz --annotations FILE [--class NAME]`` (or ``--cohort CSV``).

``add_parser(subparsers)`` adds the ``annotations`` command to the engine's parser and
``add_score_parser(subparsers)`` the ``score-maps`` command; each stores its function in
``args.annotations_main`` (``main(args)`` calls it). Exit codes follow the engine CLI's: 0 done;
2 the annotation or maps file is malformed, or the conversion would lose shapes (``--allow-loss``);
3 the slide could not be read; 6 the output could not be written.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.annotations.contours import detections_from_map, polygons_from_map
from engine.annotations.errors import AnnotationError
from engine.annotations.files import FORMATS, load_annotations, save_annotations
from engine.annotations.model import AnnotationSet
from engine.annotations.score import map_plane, score_cohort, score_maps
from engine.annotations.stats import stats
from engine.errors import ResultsError, SlideError
from engine.exits import EXIT_BAD_FILE, EXIT_OK, EXIT_SLIDE, EXIT_WRITE
from engine.io.maps import read_maps
from engine.slides import open_slide


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
    m = sub.add_parser("from-map", help="threshold a map into polygon annotations (or one detection per cell)")
    m.add_argument("--maps", required=True, help="maps.npz a job wrote (or its folder)")
    m.add_argument("--layer", default="saliency", help="map layer (default saliency; prediction, ...)")
    m.add_argument("--channel", help="class name or index of a layer with classes (default: the last class)")
    m.add_argument("--threshold", type=float, required=True,
                   help="cells at or above it form the regions (with --detections: cells above it)")
    m.add_argument("--class", dest="class_name", help="class of the annotations written")
    m.add_argument("--out", required=True, help="annotation file to write (.geojson, .json or .xml)")
    m.add_argument("--detections", action="store_true",
                   help="one square detection per cell carrying its value (QuPath measurement maps)")
    m.add_argument("--simplify", type=float, help="simplification tolerance, level-0 px (default 3/4 cell; 0: exact)")
    m.add_argument("--min-area", type=float, default=0.0, help="leave out regions under this area, level-0 px²")
    m.add_argument("--mpp", type=float, help="microns per level-0 pixel, for areas in µm²")
    m.set_defaults(annotations_main=main_from_map)
    return p


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score-maps", help="how much of a map falls inside annotated outlines")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--maps", help="maps.npz a job wrote (or its folder)")
    what.add_argument("--cohort", help="CSV with slide,maps,annotations columns (paths relative to it)")
    p.add_argument("--annotations", help="annotation file (with --maps)")
    p.add_argument("--class", dest="class_name", help="annotation class to score against (default: every area)")
    p.add_argument("--layer", default="saliency", help="map layer (default saliency; prediction, ...)")
    p.add_argument("--channel", help="class name or index of a layer with classes (default: the last class)")
    p.add_argument("--tissue", action="store_true",
                   help="score tissue cells only (tissue found on the slide the maps name, or --slide)")
    p.add_argument("--slide", help="slide for --tissue (default: the one the maps file names)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(annotations_main=main_score)
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


def main_from_map(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        values, grid = map_plane(*read_maps(args.maps), args.layer, args.channel)
    except (AnnotationError, ResultsError) as exc:  # ResultsError: not a maps file
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    try:
        if args.detections:
            found = detections_from_map(values, grid, args.threshold, class_name=args.class_name,
                                        measurement=args.layer)
        else:
            found = polygons_from_map(values, grid, args.threshold, class_name=args.class_name,
                                      min_area_l0=args.min_area, simplify_l0=args.simplify, mpp=args.mpp,
                                      score_name=args.layer)
        lost = save_annotations(AnnotationSet(found), args.out)
    except AnnotationError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    except ResultsError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_WRITE
    _warn(lost, err)
    kind = "detection(s)" if args.detections else "region(s)"
    out.write(f"wrote {len(found)} {kind} of {args.layer} >= {args.threshold} to {args.out}\n")
    return EXIT_OK


def _score_table(rows: list[dict]) -> str:
    lines = [f"{'slide':<24} {'mass inside':>11} {'even share':>10} {'pixel AUC':>9} {'cells':>8} {'inside':>8}"]
    for r in rows:
        lines.append(f"{str(r['slide']):<24} {r['mass_inside']:>11.4f} {r['even_share']:>10.4f} {r['pixel_auc']:>9.4f} "
                     f"{r['cells']:>8} {r['cells_inside']:>8}")
    return "\n".join(lines)


def main_score(args: argparse.Namespace, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    kw = {"layer": args.layer, "channel": args.channel, "tissue": args.tissue}
    try:
        if args.cohort:
            result = score_cohort(args.cohort, args.class_name, **kw)
            rows = result["slides"] + [{"slide": f"mean of {result['n']}", **result["mean"], "cells": "", "cells_inside": ""}]
        else:
            if not args.annotations:
                err.write("error: --maps needs --annotations\n")
                return EXIT_BAD_FILE
            result = score_maps(args.maps, args.annotations, args.class_name, slide=args.slide, **kw)
            rows = [{"slide": args.maps, **result}]
    except (AnnotationError, ResultsError) as exc:
        err.write(f"error: {exc}\n")
        return EXIT_BAD_FILE
    except SlideError as exc:
        err.write(f"error: --tissue needs the slide: {exc}\n")
        return EXIT_SLIDE
    if args.json:
        out.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(_score_table(rows) + "\n")
        out.write(f"(scores over {rows[0].get('over', 'computed cells')}; an even map scores mass inside = even share, "
                  "AUC 0.5)\n")
    return EXIT_OK
