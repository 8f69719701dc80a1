"""Annotation layer benchmark (offscreen): a CAMELYON-sized file over the 40k synthetic slide.

    .venv/bin/python bench/annotations_view.py [--outlines 60] [--vertices 60000]
    .venv/bin/python bench/annotations_view.py --screenshot docs/annotations.png [--slide SLIDE]

Drives the real MainWindow (1920x1080) on the offscreen platform over ``bench/synthetic_slide.py``'s
40k x 40k slide, imports a GeoJSON file of wobbly tumour-like outlines (``--vertices`` in all, a
few MB, like CAMELYON16's larger files) plus one 10,000-vertex outline, and pans across them at
2,000 px/s, zoomed out (where simplification matters) and at 5x, with the outlines drawn from
the simplified paths and, for comparison, from the exact ones. Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from synthetic_slide import SIZE, synthetic_slide  # bench/synthetic_slide.py, beside this script
from viewer_navigation import StallProbe, pan_script, pct, run_until

from engine.annotations import Annotation, AnnotationSet, save_annotations
from engine.geometry import Box, MapGeometry
from engine.slides import open_slide
from viewer import main_window
from viewer.model.layers import LayerKey
from viewer.render import annotation_painter


def camelyon_like(n_outlines: int, n_vertices: int, rng: np.random.Generator) -> AnnotationSet:
    """Hand-drawn-looking outlines across the slide, and one 10,000-vertex one at its centre."""
    s = AnnotationSet(classes={"Tumor": (220, 30, 30), "Exclusion": (240, 200, 0)})
    per = max(n_vertices // n_outlines, 8)
    centres = [(SIZE / 2, SIZE / 2, 6_000.0, 10_000)] + [
        (*rng.uniform(3_000, SIZE - 3_000, 2), rng.uniform(300, 2_500), per) for _ in range(n_outlines)]
    for i, (cx, cy, radius, n) in enumerate(centres):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = radius * (1 + 0.15 * np.sin(rng.integers(3, 9) * t + rng.uniform(0, 6)) + rng.normal(0, 0.001, n))  # a few px of hand jitter
        cls = "Exclusion" if i % 5 == 4 else "Tumor"
        s.append(Annotation.polygon(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]), class_name=cls,
                                    name=f"Annotation {i}"))
    return s


CELL = 32  # level-0 px per cell of the screenshot's map


def darkness_map(slide_path: Path) -> tuple[np.ndarray, MapGeometry]:
    """A saliency-like map of the slide: how dark (stained) each 32-px cell is, smoothed."""
    with open_slide(slide_path) as src:
        w, h = src.dimensions
        rgb = src.read_region(0, 0, 0, w, h)[..., :3].astype(np.float32)
    rows, cols = h // CELL, w // CELL
    cells = rgb[: rows * CELL, : cols * CELL].reshape(rows, CELL, cols, CELL, 3).mean(axis=(1, 3, 4))
    dark = np.clip((230 - cells) / 130, 0, 1)
    for _ in range(3):  # a few box blurs: hot spots, not cell noise
        padded = np.pad(dark, 1, mode="edge")
        dark = sum(padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + cols] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return dark.astype(np.float32), MapGeometry(Box(0, 0, cols * CELL, rows * CELL), (rows, cols))


def screenshot(slide: Path, out: Path) -> None:
    """The main window with a map, annotations turned from it, and hand-drawn ones."""
    tmp = Path(tempfile.mkdtemp())
    work_slide = Path(shutil.copy(slide, tmp / slide.name))  # its sidecar autosaves into tmp, not beside the original
    values, grid = darkness_map(slide)
    settings = QSettings(str(tmp / "shot.ini"), QSettings.Format.IniFormat)
    window = main_window.MainWindow(settings=settings, cache_bytes=256 * 2**20, popups=False)
    window.resize(1600, 1000)
    window.show()
    window.slides.show_or_open(str(work_slide))
    run_until(lambda: window.annotations.document is not None and not window.view.missing_visible_tiles(), 60)
    run_until(lambda: window.annotation_runner.pending == 0, 10)
    doc = window.annotations.document
    key = LayerKey("saliency")
    stack = window.live.stack_for(window.workspace.current_key)
    stack.add_layer(key, grid, values, (float(values.min()), float(values.max())))
    window.overlay_painter.set_stack(stack)
    window.overlay_panel.set_stack(stack)
    stack.set_active(key)
    stack.set_style(key, visible=True, threshold=0.55, opacity=0.45, colormap="inferno")
    doc.add_class("Hot spot", (0, 220, 255))
    window.annotations.to_annotations(stack, "Hot spot")
    run_until(lambda: any(a.class_name == "Hot spot" for a in doc.annotations), 30)
    w, h = window.workspace.current.shared.source.dimensions
    doc.add([Annotation.polygon([(0.42 * w, 0.36 * h), (0.6 * w, 0.3 * h), (0.66 * w, 0.52 * h), (0.5 * w, 0.62 * h), (0.4 * w, 0.5 * h)],
                                class_name="Tumor", name="Expert outline")], classes={"Tumor": (230, 30, 30)})
    doc.add([Annotation.ellipse(Box(0.3 * w, 0.3 * h, 0.42 * w, 0.4 * h), class_name="Stroma", name="Stroma")],
            classes={"Stroma": (40, 200, 60)})
    doc.select((len(doc) - 2,))  # the polygon shows its vertex handles
    window.annotation_painter.set_hover(len(doc) - 1)
    window.annotations_dock.raise_()
    window.annotation_toolbar.tool_actions["select"].trigger()
    run_until(lambda: window.annotation_painter.pending == 0 and window.annotation_runner.pending == 0, 10)
    run_until(lambda: False, 0.5)
    window.grab().save(str(out))
    print(f"wrote {out} ({len(doc)} annotations)")
    window.shutdown()
    window.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outlines", type=int, default=60)
    parser.add_argument("--vertices", type=int, default=60_000, help="vertices over the outlines besides the big one")
    parser.add_argument("--screenshot", type=Path, help="write this PNG of the window instead of measuring")
    parser.add_argument("--slide", type=Path, default=Path("/work/shared/data/CMU-1-Small-Region.svs"))
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if args.screenshot:
        if QApplication.instance() is None:
            QApplication([])
        screenshot(args.slide, args.screenshot)
        return
    slide = synthetic_slide()
    if QApplication.instance() is None:
        QApplication([])
    tmp = Path(tempfile.mkdtemp())
    annotations = camelyon_like(args.outlines, args.vertices, np.random.default_rng(0))
    ann_path = tmp / "camelyon-like.geojson"
    save_annotations(annotations, ann_path)
    n_vertices = sum(len(a.geometry.exterior.coords) - 1 for a in annotations)
    # A copy (a symlink would resolve back): its sidecar autosaves into tmp, not beside the cached slide.
    work_slide = Path(shutil.copy(slide, tmp / slide.name))
    settings = QSettings(str(tmp / "bench.ini"), QSettings.Format.IniFormat)
    window = main_window.MainWindow(settings=settings, cache_bytes=512 * 2**20, popups=False)
    window.resize(1920, 1080)
    window.show()
    run_until(lambda: window.view.isVisible(), 5)
    window.slides.show_or_open(str(work_slide))
    run_until(lambda: window.annotations.document is not None and not window.view.missing_visible_tiles(), 60)
    run_until(lambda: window.annotation_runner.pending == 0, 10)
    rows: list[tuple[str, str, str]] = []
    probe = StallProbe()
    painter = window.annotation_painter

    # 1. Import: read, parse and simplify happen on a worker; the UI only installs the result.
    probe.start()
    start = time.perf_counter()
    window.annotations.import_file(str(ann_path))
    run_until(lambda: len(window.annotations.document) == len(annotations), 60)
    loaded = time.perf_counter()
    run_until(lambda: painter.pending == 0 and len(painter._paths) == len(annotations), 60)
    ready = time.perf_counter()
    run_until(lambda: False, 0.3)  # a few more probe ticks after the last paint
    import_stall = probe.stop()
    rows.append(("import -> annotations in the document / simplified paths ready",
                 f"{(loaded - start) * 1000:.0f} / {(ready - start) * 1000:.0f} ms", "-"))
    rows.append(("worst event-loop stall while importing", f"{import_stall:.0f} ms", "<= 50 ms"))

    # 2. Pan across the outlines, zoomed out and at 5x, simplified then exact.
    view = window.view
    exact = annotation_painter.pick_tolerance
    results = {}
    for label, tolerance in (("simplified", exact), ("exact", lambda scale, screen_px=1.0: 0.0), ("hidden", exact)):
        annotation_painter.pick_tolerance = tolerance
        painter.visible = label != "hidden"  # the slide alone: what the annotations add to a frame
        for zoom, setup in (("fit", view.fit), ("5x", lambda: view.set_magnification(5))):
            setup()
            run_until(lambda: not view.missing_visible_tiles(), 60)
            pan_script(window, (SIZE / 2 - 3_000, SIZE / 2))  # warm the tiles on this path first
            probe.start()
            frames, _, _ = pan_script(window, (SIZE / 2 - 3_000, SIZE / 2))
            results[label, zoom] = (frames, probe.stop())
    annotation_painter.pick_tolerance = exact
    for (label, zoom), (frames, stall) in results.items():
        target = "p95 <= 16.7 ms" if label == "simplified" else "-"
        rows.append((f"pan frame, {zoom}, outlines {label} (p50 / p95 / max)",
                     f"{pct(frames, 50):.1f} / {pct(frames, 95):.1f} / {max(frames):.1f} ms", target))
        rows.append((f"worst event-loop stall, pan at {zoom}, outlines {label}", f"{stall:.0f} ms",
                     "<= 50 ms" if label == "simplified" else "-"))

    window.shutdown()
    window.close()
    print(f"\nAnnotation layer benchmark: {len(annotations)} outlines, {n_vertices:,} vertices "
          f"(largest 10,000), GeoJSON {ann_path.stat().st_size / 2**20:.1f} MB, over {slide.name} "
          f"({SIZE}x{SIZE}); window 1920x1080 (slide view {view.width()}x{view.height()}), offscreen, "
          f"{os.cpu_count()} CPU cores, pan 2,000 px/s for 5 s, warm tile cache\n")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'measure'.ljust(width)} | {'result'.ljust(vwidth)} | target |")
    print(f"| {'-' * width} | {'-' * vwidth} | --- |")
    for name, value, target in rows:
        print(f"| {name.ljust(width)} | {value.ljust(vwidth)} | {target} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
