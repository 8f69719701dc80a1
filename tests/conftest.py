"""Shared fixtures. Qt must be told to render offscreen before any QApplication exists."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

SHARED_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture
def real_slide_path() -> Path:
    """The real H&E slide CI puts beside the checkout; skipped on a plain clone."""
    if not SHARED_SLIDE.exists():
        pytest.skip(f"real slide not present at {SHARED_SLIDE} (only CI and dev machines have ../shared)")
    return SHARED_SLIDE


# --- synthetic slides with known content -------------------------------------------------
import numpy as np  # noqa: E402

#: Level-0 layout of the synthetic slide: a grid of BLOCK x BLOCK blocks, one colour each,
#: far enough apart that JPEG and level averaging cannot turn one into another.
BLOCK = 1024
BLOCK_COLOURS = (
    ((220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 210, 40)),
    ((40, 200, 210), (210, 40, 200), (250, 250, 250), (20, 20, 20)),
    ((250, 140, 30), (120, 60, 20), (140, 140, 250), (90, 150, 90)),
)
SYNTH_L0_SIZE = (BLOCK * 4, BLOCK * 3)
#: Inside block (row 1, col 3) level 0 holds 2-px black/white vertical stripes; every
#: coarser level averages them to grey, so a pixel there tells which level was painted.
STRIPE_BLOCK = (1, 3)
STRIPE = 2


def block_colour(l0_x: float, l0_y: float) -> tuple[int, int, int]:
    """The colour the synthetic slide holds at a level-0 point (away from block edges)."""
    return BLOCK_COLOURS[int(l0_y) // BLOCK][int(l0_x) // BLOCK]


def synthetic_rgb() -> np.ndarray:
    w, h = SYNTH_L0_SIZE
    rgb = np.empty((h, w, 3), np.uint8)
    for r, row in enumerate(BLOCK_COLOURS):
        for c, colour in enumerate(row):
            rgb[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = colour
    r, c = STRIPE_BLOCK
    block = rgb[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK]
    for x0 in range(0, BLOCK, 2 * STRIPE):
        block[:, x0 : x0 + STRIPE] = 0
        block[:, x0 + STRIPE : x0 + 2 * STRIPE] = 255
    return rgb


@pytest.fixture(scope="session")
def synthetic_slide_path(tmp_path_factory) -> Path:
    """A 4096x3072 three-level Aperio SVS (1x, 4x, 16x) of known colours, written once."""
    from engine.io.svs import write_svs_array

    path = tmp_path_factory.mktemp("slides") / "synthetic.svs"
    label = np.full((120, 200, 3), (10, 90, 160), np.uint8)
    macro = np.full((150, 400, 3), (160, 90, 10), np.uint8)
    return write_svs_array(
        path, synthetic_rgb(), downsamples=(1, 4, 16), mpp=0.25, app_mag=40, associated={"label": label, "macro": macro}
    )


@pytest.fixture
def bad_files(tmp_path, synthetic_slide_path) -> dict[str, Path]:
    """Files no slide reader should accept, by kind."""
    data = synthetic_slide_path.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.svs",
        "random": tmp_path / "random.svs",
        "empty": tmp_path / "empty.svs",
        "directory": tmp_path / "folder.svs",
        "missing": tmp_path / "missing.svs",
        "text_png": tmp_path / "notreally.png",
    }
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    files["empty"].write_bytes(b"")
    files["directory"].mkdir()
    files["text_png"].write_text("this is not an image")
    return files


@pytest.fixture
def corrupt_tile_slide(tmp_path) -> Path:
    """An SVS whose level-0 tile (1, 1) has its JPEG header wiped: it opens, that read fails."""
    import tifffile

    from engine.io.svs import write_svs_array

    path = write_svs_array(tmp_path / "corrupt.svs", synthetic_rgb()[:1024, :1024], downsamples=(1, 4))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = 1 * (-(-page.imagewidth // page.tilewidth)) + 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * min(64, count))
    return path


# --- viewer fixtures ---------------------------------------------------------------------
WORKER_THREAD_PREFIXES = ("streamslide-",)


def leftover_worker_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith(WORKER_THREAD_PREFIXES) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_worker_thread_left_running():
    """Every test must shut down the pools it started: a live worker after a test fails it."""
    yield
    left = leftover_worker_threads()
    assert not left, f"worker threads still running after the test: {[t.name for t in left]}"
