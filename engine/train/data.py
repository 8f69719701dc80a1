"""Slides with slide-level labels, turned into network inputs for training.

Labels are read by :mod:`engine.io.labels`; here they are split into training and validation
slides. Each slide is read once per epoch at a chosen level (or MPP), cropped to its
tissue bounding box and padded or cropped to a fixed size (or left at its own size), and kept
as uint8 (H, W, 3): an 8192² input costs 200 MB, not the 800 MB of a float tensor.
Normalisation and colour jitter happen per tile inside a lazy source, so the float copy of the
whole slide never exists when the trunk is streamed. Augmentations keep locality: flips and 90°
rotations are views of the uint8 array (index transforms), colour jitter is three gains and
three offsets per slide. A background thread reads the next slides while the current one trains.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from engine.errors import LabelsError
from engine.geometry import Box, lv_to_l0, lv_to_l0_origin
from engine.io.labels import LabelSet, SlideRecord, read_labels
from engine.slides import open_slide, to_rgb
from engine.slides.region import choose_level, level_region, tissue_box

# read_labels stays importable from here until engine.api and viewer.labels_table import it
# from engine.io.labels (the lead's merge); nothing in engine.train uses it through this name.
__all__ = ["Augmentation", "InputSpec", "LabelSet", "Placement", "Prefetcher", "SlideRecord", "draw_augmentation",
           "input_source", "oriented", "read_labels", "read_slide_input", "read_slide_placed", "split_records"]

_READ_BAND_BYTES = 64 * 1024 * 1024  # read big regions in row bands: OpenSlide allocates RGBA up front


# --- the validation split ------------------------------------------------------------------

def split_records(labels: LabelSet, val_fraction: float, seed: int) -> tuple[list[SlideRecord], list[SlideRecord]]:
    """(train, val). A record's own split wins ("test" rows are left out); the rest are split per
    class with a seeded shuffle, so the same labels and seed give the same split every time.
    With a patient column the shuffle deals whole patients (a slide without one is its own), so
    a patient's slides never straddle training and validation; a patient goes with the class of
    its first slide."""
    train = [r for r in labels.records if r.split == "train"]
    val = [r for r in labels.records if r.split == "val"]
    rng = np.random.default_rng([seed, 7])
    free = [r for r in labels.records if r.split is None]
    if labels.has_patients:
        groups: dict[str, list[SlideRecord]] = {}
        for r in free:
            groups.setdefault(r.patient if r.patient is not None else f"slide:{r.path}", []).append(r)
        units = list(groups.values())
    else:
        units = [[r] for r in free]
    for c in range(len(labels.classes) if labels.task == "classification" else 1):
        of_class = [u for u in units if labels.task != "classification" or u[0].label == c]
        order = rng.permutation(len(of_class))
        n_val = int(round(val_fraction * len(of_class)))
        val += [r for i in order[:n_val] for r in of_class[i]]
        train += [r for i in order[n_val:] for r in of_class[i]]
    if not train:
        raise LabelsError("no training slides: every slide is in the val or test split")
    return train, val


# --- reading a slide as one input ------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """How a slide becomes an input: the level (or µm/px), the tissue crop, and the size.

    ``size`` is the square input edge in level pixels: larger tissue is cropped, smaller padded
    with the slide's background; None keeps each slide at its own (tissue box) size.
    """

    level: int | None = None
    mpp: float | None = None
    size: int | None = None
    tissue_crop: bool = True


@dataclass(frozen=True)
class Placement:
    """Where an input lies on its slide: its pixel (0, 0) is level pixel (``lv_x0``, ``lv_y0``) of a
    level with ``downsample``; it is ``width`` x ``height`` pixels (padding included).
    ``in_read``: the input's pixels read from the slide (the rest is background padding); None:
    all of them."""

    downsample: float
    lv_x0: int
    lv_y0: int
    width: int
    height: int
    in_read: Box | None = None

    @property
    def l0_box(self) -> Box:
        """The input's extent in level-0 pixels."""
        return self.in_to_l0(Box(0, 0, self.width, self.height))

    @property
    def l0_read_box(self) -> Box:
        """The part of the input read from the slide, in level-0 pixels."""
        return self.in_to_l0(self.in_read if self.in_read is not None else Box(0, 0, self.width, self.height))

    def in_to_l0(self, in_box: Box) -> Box:
        """A box of the input's pixels (from its pixel (0, 0)) in level-0 pixels (exact)."""
        return lv_to_l0(in_box.translate(self.lv_x0, self.lv_y0), self.downsample)


def read_slide_input(path: str | Path, spec: InputSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """The slide as uint8 (H, W, 3) at the chosen level, cropped/padded per ``spec``.

    With ``rng`` the crop (when the tissue is larger than ``size``) and the padding offset are
    random (translation augmentation); without it both are centred.
    """
    return read_slide_placed(path, spec, rng)[0]


def read_slide_placed(path: str | Path, spec: InputSpec,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, Placement]:
    """:func:`read_slide_input`, and where the input lies on the slide (for annotation masks)."""
    with open_slide(path) as slide:
        level = choose_level(slide, level=spec.level, mpp=spec.mpp, fallback_level=None)
        l0_box = tissue_box(slide) if spec.tissue_crop else Box(0, 0, *slide.dimensions)
        region = level_region(slide, level, l0_box)
        lv_x0, lv_y0, lv_w, lv_h = region.lv_x0, region.lv_y0, region.lv_w, region.lv_h
        if spec.size is None:
            rgb = _read_level_box(slide, level, region.downsample, lv_x0, lv_y0, lv_w, lv_h)
            return rgb, Placement(region.downsample, lv_x0, lv_y0, lv_w, lv_h)
        size = int(spec.size)
        # Crop: a window of at most size x size inside the tissue box.
        crop_x, crop_y = _offset(lv_w - size, rng), _offset(lv_h - size, rng)
        read_w, read_h = min(size, lv_w), min(size, lv_h)
        rgb = _read_level_box(slide, level, region.downsample, lv_x0 + crop_x, lv_y0 + crop_y, read_w, read_h)
        if read_w == size and read_h == size:
            return rgb, Placement(region.downsample, lv_x0 + crop_x, lv_y0 + crop_y, size, size)
        # Pad: place the read box inside a background canvas.
        out = np.empty((size, size, 3), np.uint8)
        out[:] = slide.background_rgb
        pad_x, pad_y = _offset(size - read_w, rng), _offset(size - read_h, rng)
        out[pad_y:pad_y + read_h, pad_x:pad_x + read_w] = rgb
        return out, Placement(region.downsample, lv_x0 + crop_x - pad_x, lv_y0 + crop_y - pad_y, size, size,
                              in_read=Box(pad_x, pad_y, pad_x + read_w, pad_y + read_h))


def _offset(slack: int, rng: np.random.Generator | None) -> int:
    if slack <= 0:
        return 0
    return int(rng.integers(0, slack + 1)) if rng is not None else slack // 2


def _read_level_box(slide, level: int, downsample: float, lv_x: int, lv_y: int, lv_w: int, lv_h: int) -> np.ndarray:
    out = np.empty((lv_h, lv_w, 3), np.uint8)
    band = max(1, _READ_BAND_BYTES // (4 * lv_w))
    for r0 in range(0, lv_h, band):
        r1 = min(lv_h, r0 + band)
        rgba = slide.read_region(*lv_to_l0_origin(lv_x, lv_y + r0, downsample), level, lv_w, r1 - r0)
        out[r0:r1] = to_rgb(rgba, slide.background_rgb)
    return out


# --- augmentation ------------------------------------------------------------------------

@dataclass(frozen=True)
class Augmentation:
    """One slide's augmentation: ``rot90`` quarter turns, then a left-right ``flip`` (together the
    eight symmetries of the square), and per-channel colour ``gain``/``bias`` on RGB in [0, 1]."""

    rot90: int = 0
    flip: bool = False
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


def draw_augmentation(rng: np.random.Generator, colour_jitter: float) -> Augmentation:
    """A random symmetry and a mild colour change: gains in 1 ± jitter, offsets in ± jitter / 2."""
    j = float(colour_jitter)
    return Augmentation(rot90=int(rng.integers(0, 4)), flip=bool(rng.integers(0, 2)),
                        gain=tuple(float(g) for g in rng.uniform(1 - j, 1 + j, 3)),
                        bias=tuple(float(b) for b in rng.uniform(-j / 2, j / 2, 3)))


def oriented(rgb: np.ndarray, aug: Augmentation) -> np.ndarray:
    """The augmented image's pixel grid as a view of ``rgb`` (no copy)."""
    view = np.rot90(rgb, aug.rot90, axes=(0, 1))
    return view[:, ::-1] if aug.flip else view


def input_source(rgb: np.ndarray, aug: Augmentation, mean: Sequence[float], std: Sequence[float], *, dtype=None):
    """A lazy (1, 3, H, W) :class:`~engine.streaming.CallableSource` over uint8 ``rgb``.

    Each read converts only the requested tile: ``(rgb / 255 * gain + bias - mean) / std``, folded
    into one scale and one shift per channel. Reading the whole extent gives the conventional input.
    """
    import torch

    from engine.streaming import CallableSource

    dtype = dtype or torch.float32
    view = oriented(rgb, aug)
    gain, bias = np.asarray(aug.gain, np.float64), np.asarray(aug.bias, np.float64)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    scale = torch.tensor(gain / 255.0 / std, dtype=dtype).view(1, 3, 1, 1)
    shift = torch.tensor((bias - mean) / std, dtype=dtype).view(1, 3, 1, 1)

    def read(rows: tuple[int, int], cols: tuple[int, int]):
        tile = np.ascontiguousarray(view[rows[0]:rows[1], cols[0]:cols[1]])
        x = torch.from_numpy(tile).permute(2, 0, 1)[None].to(dtype)
        return x * scale + shift

    return CallableSource((1, 3, view.shape[0], view.shape[1]), read, dtype)


# --- background reading --------------------------------------------------------------------

class Prefetcher:
    """Runs ``jobs`` in order on a background thread, at most ``depth`` results ahead.

    Iterating yields the results in order; a job's exception is raised in the consumer at that
    position. :meth:`close` (also on leaving a ``with`` block) stops the thread and joins it.
    """

    def __init__(self, jobs: Iterable[Callable[[], object]], depth: int = 2):
        self._jobs = iter(jobs)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slide-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for job in self._jobs:
            if self._stop.is_set():
                return
            try:
                item = ("ok", job())
            except BaseException as exc:  # handed to the consumer, which re-raises it
                self._put(("error", exc))
                return
            if not self._put(item):
                return
        self._put(("end", None))

    def __iter__(self) -> Iterator[object]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
