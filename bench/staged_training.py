"""Staged training: one head-only epoch on cached trunk maps against one full streamed epoch.

Both are real ``run_training`` runs on the same synthetic slides, model and seed, one after the
other in this process: a plain run (every epoch streams the trunk forward and backward) and a
staged run (``freeze_trunk_epochs``, no augmentation) whose first head epoch computes and caches
each slide's trunk map and whose second reads the maps and trains only the head. Each epoch's time
is the engine's own clock (the last training Progress event of the epoch: slide reading or map
loading, forward, backward and optimiser steps; no validation, every slide is a training slide).
The second epoch of each run is compared, so both have warmed up. Target: head epoch <= 0.1x the
full epoch.

    python bench/staged_training.py --quick      # 4 smallnet slides of 256 px, seconds
    python bench/staged_training.py              # 8 slides of 4096 px, resnet34 split at layer2, tile 2048
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

MODELS = {"resnet34-layer2": ("resnet34", "layer2", {}), "smallnet": ("smallnet", "stage4", {"width": 16})}


def write_slides(folder: Path, n: int, size: int) -> Path:
    """``n`` tissue-like slides (half with a dark square) and a labels CSV putting all in training."""
    from engine.io.labels import write_labels_csv
    from engine.io.svs import write_svs_array

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        rgb = np.full((size, size, 3), 235, np.uint8)
        m = size // 16
        noise = rng.integers(-12, 13, (size - 2 * m, size - 2 * m, 1))
        rgb[m:size - m, m:size - m] = np.clip(np.array([170, 110, 180]) + noise, 0, 255).astype(np.uint8)
        label = "tumour" if i % 2 else "benign"
        if i % 2:
            y, x = rng.integers(2 * m, size - 3 * m, 2)
            rgb[y:y + m, x:x + m] = (10, 10, 50)
        name = f"slide_{i}.svs"
        write_svs_array(folder / name, rgb, mpp=0.5, app_mag=20, tile=256, downsamples=(1,))
        rows.append((name, label, "train"))
    return write_labels_csv(folder / "labels.csv", rows)


class EpochClock:
    """Each epoch's training time from the run's Progress events, and the cache size at each save."""

    def __init__(self, cache: Path):
        self.cache, self.epoch_s, self.cache_mib = cache, [], []
        self._last = None

    def __call__(self, event) -> None:
        from engine.events import CheckpointSaved, Progress

        if isinstance(event, Progress) and event.phase == "train":
            self._last = event
            if event.done == event.total:
                self.epoch_s.append(event.elapsed_s)
        elif isinstance(event, CheckpointSaved) and event.kind == "last":
            files = list(self.cache.glob("*.npz")) if self.cache.is_dir() else []
            self.cache_mib.append(sum(f.stat().st_size for f in files) / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 smallnet slides of 256 px, tile 128 (seconds)")
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=4096, help="input pixels per side")
    ap.add_argument("--model", default="resnet34-layer2", choices=sorted(MODELS))
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", help="folder for the slides and runs (default: a temporary folder)")
    args = ap.parse_args()
    if args.quick:
        args.slides, args.size, args.model, args.tile = 4, 256, "smallnet", 128

    from engine.api import run_training
    from engine.specs import TrainingSpec
    from engine.train.map_cache import CACHE_FOLDER

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        labels = write_slides(work / "slides", args.slides, args.size)
        arch, split, kwargs = MODELS[args.model]
        base = TrainingSpec(labels=str(labels), out_dir=str(work / "full"), model=arch, split=split,
                            model_kwargs=kwargs, input_size=args.size, tile_size=args.tile, epochs=2, lr=1e-4,
                            augment=False, val_fraction=0.0, device=args.device, seed=0)
        full = EpochClock(work / "full" / CACHE_FOLDER)
        run_training(base, full)
        staged_spec = dataclasses.replace(base, out_dir=str(work / "staged"), freeze_trunk_epochs=2)
        staged = EpochClock(work / "staged" / CACHE_FOLDER)
        run_training(staged_spec, staged)

    full_s, first_s, head_s = full.epoch_s[1], staged.epoch_s[0], staged.epoch_s[1]
    print(f"staged training: {args.model}, {args.slides} slides of {args.size}² px, tile {args.tile}, "
          f"device {args.device}; second epoch of each run, engine clock")
    print(f"{'epoch':<44} {'s':>8} {'x full':>7}")
    print(f"{'full streamed epoch (trunk forward + backward)':<44} {full_s:8.2f} {1.0:7.2f}")
    print(f"{'first head epoch (trunk forward, maps cached)':<44} {first_s:8.2f} {first_s / full_s:7.2f}")
    print(f"{'head-only epoch on cached maps':<44} {head_s:8.2f} {head_s / full_s:7.3f}")
    print(f"map cache on disk: {staged.cache_mib[0]:.2f} MiB (float16), removed at the end of the run")
    print(f"head-only / full = {head_s / full_s:.3f}x (target <= 0.1x): "
          f"{'met' if head_s / full_s <= 0.1 else 'NOT met'}")


if __name__ == "__main__":
    main()
