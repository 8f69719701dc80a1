"""Viewer benchmark (offscreen): opening, panning, stalls, cache and memory on a 40k slide.

    .venv/bin/python bench/viewer_navigation.py [--cycles 20] [--cache-mb 512]

Drives the real MainWindow (1920x1080) on the offscreen platform over the synthetic
40k x 40k four-level SVS from ``bench/synthetic_slide.py`` (generated once into .cache/),
and prints one table. Times are wall-clock on this machine; nothing here is asserted.
(Named so: a ``bench/viewer.py`` would shadow the ``viewer`` package for every script here.)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QEventLoop, QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication
from synthetic_slide import synthetic_slide  # bench/synthetic_slide.py, beside this script

from viewer.main_window import MainWindow

PAN_SPEED = 2000.0  # screen px/s
PAN_SECONDS = 5.0
FRAME_MS = 16  # the pan script's tick (~60 Hz)
PROBE_MS = 5  # the event-loop stall probe's period


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


def run_until(condition, timeout_s: float = 60.0) -> bool:
    """Spin the event loop until ``condition()`` holds (checked every millisecond)."""
    loop = QEventLoop()
    deadline = time.perf_counter() + timeout_s

    def check():
        if condition() or time.perf_counter() > deadline:
            loop.quit()

    timer = QTimer(interval=1)
    timer.timeout.connect(check)
    timer.start()
    if not condition():
        loop.exec()
    timer.stop()
    return condition()


class StallProbe:
    """A 5 ms timer; the longest gap between its ticks is the worst event-loop stall."""

    def __init__(self) -> None:
        self.timer = QTimer(interval=PROBE_MS)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last = None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append((now - self._last) * 1000)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = None
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return max(self.gaps) if self.gaps else float("nan")


def open_and_time(window: MainWindow, path: Path) -> tuple[float, float]:
    """Open a slide; ms until the first paint showing tiles, and until no visible tile is missing."""
    view = window.view
    start = time.perf_counter()
    window.slides.show_or_open(str(path))
    run_until(lambda: window.workspace.current is not None and any(t >= start and n > 0 for t, _, n, _ in view.paint_log), 30)
    first = min(t for t, _, n, _ in view.paint_log if t >= start and n > 0)
    run_until(lambda: not view.missing_visible_tiles(), 60)
    sharp = time.perf_counter()
    return (first - start) * 1000, (sharp - start) * 1000


def pan_script(window: MainWindow, l0_start: tuple[float, float]) -> tuple[list[float], int, float]:
    """Pan right at PAN_SPEED for PAN_SECONDS, ticking every FRAME_MS.

    Returns the paint ms of each full frame, the number of partial paints (tiles arriving),
    and the share of ticks at which some visible tile was still painted from a coarser level.
    """
    view = window.view
    view.center_on(*l0_start)
    run_until(lambda: not view.missing_visible_tiles(), 60)
    n_before = len(view.paint_log)
    loop = QEventLoop()
    start = time.perf_counter()
    state = {"last": start, "ticks": 0, "blurred": 0}

    def tick():
        now = time.perf_counter()
        state["ticks"] += 1
        state["blurred"] += bool(view.missing_visible_tiles())
        view.pan_by(-PAN_SPEED * (now - state["last"]), 0)  # content moves left: the view goes right
        state["last"] = now
        if now - start >= PAN_SECONDS:
            loop.quit()

    timer = QTimer(interval=FRAME_MS)
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.timeout.connect(tick)
    timer.start()
    loop.exec()
    timer.stop()
    paints = list(view.paint_log)[n_before:]
    frames = [ms for _, ms, _, area in paints if area >= 0.9]
    return frames, len(paints) - len(frames), state["blurred"] / max(1, state["ticks"])


def navigation_script(window: MainWindow) -> None:
    """A fixed tour: zoom presets and jumps, waiting for sharp tiles at each stop."""
    view = window.view
    stops = [(20, 12_000, 12_000), (10, 20_000, 20_000), (40, 20_500, 20_200), (5, 30_000, 8_000), (20, 8_000, 30_000), (2.5, 20_000, 20_000)]
    for mag, x, y in stops:
        view.set_magnification(mag)
        view.center_on(x, y)
        painted = len(view.paint_log)  # wait for a paint too: a warm stop needs no tile at all
        run_until(lambda painted=painted: len(view.paint_log) > painted and not view.missing_visible_tiles(), 60)


def fill_cache(window: MainWindow, n_views: int) -> None:
    """Visit many distinct level-0 views, so the cache fills past its cap and must evict."""
    view = window.view
    view.set_magnification(40)
    rng = np.random.default_rng(0)
    for _ in range(n_views):
        view.center_on(*rng.uniform(2000, 38_000, 2))
        run_until(lambda: not view.missing_visible_tiles(), 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="open/close cycles for the open-time percentiles")
    parser.add_argument("--leak-cycles", type=int, default=100, help="open/close cycles for the RSS growth check")
    parser.add_argument("--cache-mb", type=int, default=512, help="tile cache cap for this run")
    args = parser.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    slide = synthetic_slide()
    if QApplication.instance() is None:
        QApplication([])  # PySide keeps the application object alive
    settings = QSettings(str(Path(tempfile.mkdtemp()) / "bench.ini"), QSettings.Format.IniFormat)
    cap = args.cache_mb * 2**20
    window = MainWindow(settings=settings, cache_bytes=cap, popups=False)
    window.resize(1920, 1080)
    window.show()
    run_until(lambda: window.view.isVisible(), 5)
    rows: list[tuple[str, str, str]] = []
    probe = StallProbe()

    # 1. Open -> first paint / all visible tiles sharp (fit view), over fresh opens.
    firsts, sharps, open_stalls = [], [], []
    for _ in range(args.cycles):
        probe.start()
        first, sharp = open_and_time(window, slide)
        open_stalls.append(probe.stop())
        firsts.append(first)
        sharps.append(sharp)
        window.slides.close_current()
        run_until(lambda: window.loader.pending == 0, 10)
    rows.append(("open -> first paint (p50 / p95)", f"{pct(firsts, 50):.0f} / {pct(firsts, 95):.0f} ms", "p95 <= 300 ms"))
    rows.append(("open -> all visible tiles sharp (p50 / p95)", f"{pct(sharps, 50):.0f} / {pct(sharps, 95):.0f} ms", "-"))

    # 2. Pan at 2,000 px/s for 5 s at 20x: cold (tiles load while panning), then warm.
    open_and_time(window, slide)
    view = window.view
    view.set_magnification(20)
    probe.start()
    cold, cold_partial, cold_blurred = pan_script(window, (12_000, 20_000))
    pan_stall = probe.stop()
    warm, _, warm_blurred = pan_script(window, (12_000, 20_000))
    rows.append(("pan frame (paint) time, cold cache (p50 / p95 / max)", f"{pct(cold, 50):.1f} / {pct(cold, 95):.1f} / {max(cold):.1f} ms", "-"))
    rows.append(("pan frame (paint) time, warm cache (p50 / p95 / max)", f"{pct(warm, 50):.1f} / {pct(warm, 95):.1f} / {max(warm):.1f} ms", "p95 <= 16.7 ms"))
    rows.append(("full frames in 5 s of panning, cold (+ tile touch-ups) / warm", f"{len(cold)} (+{cold_partial}) / {len(warm)}", "-"))
    rows.append(("pan ticks showing a coarser level somewhere, cold / warm", f"{100 * cold_blurred:.0f} % / {100 * warm_blurred:.0f} %", "-"))
    rows.append(("worst event-loop stall (5 ms probe), opening / cold pan", f"{max(open_stalls):.0f} / {pan_stall:.0f} ms", "<= 50 ms"))

    # 3. Cache hit rate when a navigation tour is replayed.
    navigation_script(window)
    window.cache.reset_stats()
    navigation_script(window)
    hits, misses = window.cache.hits, window.cache.misses
    rows.append(("cache hit rate, replayed navigation", f"{100 * hits / max(1, hits + misses):.1f} % ({hits} hits, {misses} misses)", "-"))

    # 4. Open/close cycles: RSS growth (before the cache is filled, so eviction does not blur it).
    window.slides.close_current()
    for _ in range(5):  # settle allocator pools before the baseline
        open_and_time(window, slide)
        window.slides.close_current()
    run_until(lambda: window.loader.pending == 0, 10)
    base = rss_mb()
    for _ in range(args.leak_cycles):
        open_and_time(window, slide)
        window.slides.close_current()
    run_until(lambda: window.loader.pending == 0, 10)
    grown = rss_mb() - base
    rows.append((f"RSS growth over {args.leak_cycles} open/close cycles", f"{grown:+.1f} MiB", "< 50 MB"))
    open_and_time(window, slide)

    # 5. RSS against the cache cap after filling the cache past it.
    fill_cache(window, n_views=int(1.5 * cap / (30 * 256 * 256 * 4)) + 10)  # ~30 new tiles per view
    rss = rss_mb()
    rows.append(("cache bytes / cap", f"{window.cache.bytes_used / 2**20:.0f} / {args.cache_mb} MiB", "<= cap"))
    rows.append(("RSS with a full cache", f"{rss:.0f} MiB (cap + {rss - args.cache_mb:.0f})", "<= cap + 300 MB"))

    window.shutdown()
    window.close()
    view_w, view_h = view.width(), view.height()
    print(f"\nViewer benchmark: {slide.name} (40000x40000, 4 levels, 256-px JPEG tiles), window 1920x1080 "
          f"(slide view {view_w}x{view_h}), offscreen, {os.cpu_count()} CPU cores, cache cap {args.cache_mb} MiB, "
          f"{args.cycles} opens\n")
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'measure'.ljust(width)} | {'result'.ljust(vwidth)} | target |")
    print(f"| {'-' * width} | {'-' * vwidth} | --- |")
    for name, value, target in rows:
        print(f"| {name.ljust(width)} | {value.ljust(vwidth)} | {target} |")


if __name__ == "__main__":
    main()
