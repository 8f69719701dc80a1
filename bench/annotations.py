"""How fast engine.annotations reads, writes and rasterises CAMELYON-sized annotation files.

Generates a slide's worth of tumour outlines (ASAP XML and QuPath GeoJSON, a few MB, tens of
thousands of vertices, like CAMELYON16's larger files), a QuPath-style detection file, and a
2000 x 2000 score map, then prints the best of ``--repeat`` runs of each step:

    python bench/annotations.py                # about 30 s on 2 CPU cores
    python bench/annotations.py --vertices 200000 --repeat 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from engine.annotations import (
    Annotation,
    AnnotationSet,
    detections_from_map,
    load_annotations,
    mask_from_annotations,
    polygons_from_map,
    save_annotations,
)
from engine.geometry import Box, MapGeometry  # noqa: E402

SLIDE_L0 = 100_000  # a CAMELYON16 slide is about 100k x 200k level-0 px


def outlines(n_polygons: int, n_vertices: int, rng: np.random.Generator) -> AnnotationSet:
    """Wobbly closed outlines, like hand-drawn metastases, with some exclusions inside them."""
    s = AnnotationSet(classes={"_0": (255, 0, 0), "_2": (255, 255, 0)})
    per = max(n_vertices // n_polygons, 8)
    for i in range(n_polygons):
        cx, cy = rng.uniform(5_000, SLIDE_L0 - 5_000, 2)
        radius = rng.uniform(200, 3_000)
        t = np.linspace(0, 2 * np.pi, per, endpoint=False)
        r = radius * (1 + 0.15 * np.sin(rng.integers(3, 9) * t + rng.uniform(0, 6)) + rng.normal(0, 0.01, per))
        xy = np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])
        s.append(Annotation.polygon(xy, class_name="_0", name=f"Annotation {2 * i}"))
        if i % 4 == 0:  # a CAMELYON-style exclusion ("_2") inside every fourth one
            s.append(Annotation.polygon(np.column_stack([cx + 0.3 * r * np.cos(t), cy + 0.3 * r * np.sin(t)]),
                                        class_name="_2", name=f"Annotation {2 * i + 1}"))
    return s


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polygons", type=int, default=300)
    ap.add_argument("--vertices", type=int, default=60_000, help="total outline vertices")
    ap.add_argument("--detections", type=int, default=20_000)
    ap.add_argument("--grid", type=int, default=2000, help="map size for rasterising (cells a side)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        s = outlines(args.polygons, args.vertices, rng)
        n_vertices = sum(len(a.geometry.exterior.coords) - 1 for a in s)
        what = f"{len(s)} outlines, {n_vertices} vertices"
        for name in ("camelyon.xml", "camelyon.geojson"):
            path = folder / name
            t, _ = best(lambda path=path: save_annotations(s, path), args.repeat)
            size = f"{path.stat().st_size / 2**20:.1f} MB"
            rows.append((f"save {name}", f"{what}, {size}", t))
            t, loaded = best(lambda path=path: load_annotations(path), args.repeat)
            assert loaded.annotations == s, "round trip changed the annotations"
            rows.append((f"load {name}", f"{what}, {size}", t))

        side = int(np.sqrt(args.detections))
        values = rng.uniform(0.5, 1.0, (side, side))
        cells = MapGeometry(Box(0, 0, side * 256, side * 256), (side, side))
        t, detections = best(lambda: detections_from_map(values, cells, 0.0), args.repeat)
        rows.append(("detections_from_map", f"{len(detections)} cells", t))
        dets = AnnotationSet(detections)
        path = folder / "detections.geojson"
        t, _ = best(lambda: save_annotations(dets, path), args.repeat)
        size = f"{path.stat().st_size / 2**20:.1f} MB"
        rows.append(("save detections.geojson", f"{len(dets)} detections, {size}", t))
        t, _ = best(lambda: load_annotations(path), args.repeat)
        rows.append(("load detections.geojson", f"{len(dets)} detections, {size}", t))

        n = args.grid
        grid = MapGeometry(Box(0, 0, SLIDE_L0, SLIDE_L0), (n, n))
        label = f"{n}x{n} grid, {what}"
        t, mask = best(lambda: mask_from_annotations(s, grid, include=["_0"], exclude=["_2"]), args.repeat)
        rows.append(("mask_from_annotations (centres)", label, t))
        t, _ = best(lambda: mask_from_annotations(s, grid, include=["_0"], exclude=["_2"], coverage=True), args.repeat)
        rows.append(("mask_from_annotations (coverage)", label, t))
        area = shapely.difference(s.area_geometry(["_0"]), s.area_geometry(["_2"]))
        cw = SLIDE_L0 / n
        xs = (np.arange(n) + 0.5) * cw

        def with_shapely():
            shapely.prepare(area)
            return shapely.contains_xy(area, *np.meshgrid(xs, xs))

        t, reference = best(with_shapely, args.repeat)
        rows.append(("shapely.contains_xy (for comparison)", f"{label}, {int((reference != mask).sum())} cells differ", t))
        score = mask * 0.9 + rng.uniform(0, 0.2, (n, n))
        t, regions = best(lambda: polygons_from_map(score, grid, 0.5, class_name="Tumor"), args.repeat)
        rows.append(("polygons_from_map", f"{n}x{n} map -> {len(regions)} regions", t))

    width = max(len(r[0]) for r in rows)
    detail = max(len(r[1]) for r in rows)
    print(f"{'step':<{width}}  {'what':<{detail}}  seconds (best of {args.repeat})")
    for step, info, seconds in rows:
        print(f"{step:<{width}}  {info:<{detail}}  {seconds:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
