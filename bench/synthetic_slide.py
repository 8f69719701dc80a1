"""A synthetic 40k x 40k four-level Aperio slide for benchmarks, generated once and cached.

Content is a patchwork of 2048-px tissue-like colour blocks with a thin grid every 512 px,
computed per pixel from level-0 coordinates, so every level shows the same picture. Most
tiles are flat and JPEG-compress to almost nothing, which keeps generation fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from engine.geometry import Box, lv_centres_to_l0
from engine.io.svs import write_svs

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench"
SIZE = 40_000
BLOCK = 2048
GRID = 512

# H&E-ish pinks and purples plus white background, so screenshots look like a slide.
PALETTE = np.array(
    [[245, 240, 245], [232, 170, 200], [200, 120, 170], [150, 80, 150], [230, 190, 215], [120, 60, 130], [250, 250, 250], [215, 150, 190]],
    np.uint8,
)


def render(downsample: float, lv_box: Box) -> np.ndarray:
    l0_xs = lv_centres_to_l0(int(lv_box.x0), int(lv_box.x1), downsample).astype(np.int64)
    l0_ys = lv_centres_to_l0(int(lv_box.y0), int(lv_box.y1), downsample).astype(np.int64)
    bx, by = l0_xs // BLOCK, l0_ys // BLOCK
    if bx[0] == bx[-1] and by[0] == by[-1]:  # inside one block (most tiles): a flat fill
        rgb = np.empty((len(l0_ys), len(l0_xs), 3), np.uint8)
        rgb[:] = PALETTE[(bx[0] * 7 + by[0] * 3 + (bx[0] * by[0]) % 5) % len(PALETTE)]
    else:
        rgb = PALETTE[(bx[None, :] * 7 + by[:, None] * 3 + (bx[None, :] * by[:, None]) % 5) % len(PALETTE)]
    if downsample <= 4:  # grid lines only where they are at least a pixel wide
        line = max(2, int(2 * downsample))
        rgb[(l0_ys % GRID) < line] = (60, 60, 90)
        rgb[:, (l0_xs % GRID) < line] = (60, 60, 90)
    return rgb


def synthetic_slide(size: int = SIZE) -> Path:
    path = CACHE / f"synthetic-{size // 1000}k.svs"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_svs(path, (size, size), render, downsamples=(1, 4, 16, 64), mpp=0.25, app_mag=40, quality=80)
    print(f"generated {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


if __name__ == "__main__":
    print(synthetic_slide())
