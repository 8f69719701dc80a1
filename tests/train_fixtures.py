"""Tiny labelled slide sets for training tests: the label is a small local pattern.

Every slide is purple "tissue" with a little texture on grey glass; positive slides also hold one
small dark-blue square somewhere in the tissue. Only a local detector can tell them apart, which
is what a streamed trunk has to learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GLASS = (235, 235, 235)
TISSUE = (170, 110, 180)
LESION = (10, 10, 50)


def slide_rgb(size: int, positive: bool, rng: np.random.Generator, lesion: int = 12) -> np.ndarray:
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[:] = GLASS
    m = size // 16
    noise = rng.integers(-12, 13, (size - 2 * m, size - 2 * m, 1))
    rgb[m:size - m, m:size - m] = np.clip(np.asarray(TISSUE) + noise, 0, 255).astype(np.uint8)
    if positive:
        y, x = rng.integers(2 * m, size - 2 * m - lesion, 2)
        rgb[y:y + lesion, x:x + lesion] = LESION
    return rgb


def write_training_set(folder: Path, *, n_per_class: int = 4, size: int = 128, seed: int = 0,
                       val_per_class: int = 0) -> Path:
    """``n_per_class`` negative ("benign") and positive ("tumour") SVS slides plus ``labels.csv``;
    the last ``val_per_class`` of each class get split "val", the rest "train"."""
    from engine.io.labels import write_labels_csv
    from engine.io.svs import write_svs_array

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for label, positive in (("benign", False), ("tumour", True)):
        for i in range(n_per_class):
            name = f"{label}_{i}.svs"
            write_svs_array(folder / name, slide_rgb(size, positive, rng), mpp=0.5, app_mag=20, tile=128,
                            downsamples=(1,))
            split = "val" if i >= n_per_class - val_per_class else "train"
            rows.append((name, label, split))
    return write_labels_csv(folder / "labels.csv", rows)


GREEN = (60, 170, 70)
BLUE = (40, 60, 200)


def write_task_set(folder: Path, *, n: int = 12, size: int = 96, seed: int = 0, patients: bool = True) -> Path:
    """``n`` slides of purple tissue for regression and multilabel training, and ``tasks.csv``:
    ``green`` the fraction of tissue rows painted green (a continuous target spread over [0, 0.8]),
    ``has_green`` whether that fraction is over 0.4, ``has_blue`` whether a blue square is present
    (alternating in pairs, so independent of ``has_green``), ``patient`` two slides per patient
    (when ``patients``)."""
    from engine.io.svs import write_svs_array

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    m = size // 16
    rows = ["slide,green,has_green,has_blue" + (",patient" if patients else "")]
    for i in range(n):
        rgb = slide_rgb(size, False, rng)
        tissue = size - 2 * m
        fraction = 0.8 * i / max(1, n - 1)
        k = int(round(fraction * tissue))
        rgb[m:m + k, m:size - m] = GREEN
        has_green, has_blue = int(k / tissue > 0.4), (i // 2) % 2
        if has_blue:
            y, x = rng.integers(size // 2, size - 2 * m - 16, 2)
            rgb[y:y + 16, x:x + 16] = BLUE
        name = f"slide_{i}.svs"
        write_svs_array(folder / name, rgb, mpp=0.5, app_mag=20, tile=128, downsamples=(1,))
        rows.append(f"{name},{k / tissue:.6f},{has_green},{has_blue}" + (f",p{i // 2}" if patients else ""))
    path = folder / "tasks.csv"
    path.write_text("\n".join(rows) + "\n")
    return path
