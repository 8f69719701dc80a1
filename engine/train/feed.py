"""Which slides each optimiser step trains on, on this rank, with which augmentation.

The order and augmentation of a slide depend only on (seed, epoch, slide index), so a run
resumed from a checkpoint sees exactly the slides an uninterrupted run would, and a fixed-seed
run is reproducible bit for bit.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from engine.io.labels import SlideRecord
from engine.specs import TrainingSpec
from engine.train.data import Augmentation, InputSpec, draw_augmentation, read_slide_input, read_slide_placed
from engine.train.distributed import DistContext

#: One slide ready for the network: uint8 (H, W, 3) pixels, its augmentation, its target (the
#: class index, or the tuple of target values: :mod:`engine.train.tasks`), and its mask on the
#: trunk's grid (bool (1, 1, h, w), already turned with the augmentation; None: pool every cell).
Item = tuple[np.ndarray, Augmentation, object, object]


class SlideFeed:
    def __init__(self, spec: TrainingSpec, train_set: Sequence[SlideRecord], ctx: DistContext,
                 target: Callable[[SlideRecord], object] = lambda r: r.label, masks=None):
        self.spec, self.train_set, self.ctx, self.target = spec, list(train_set), ctx, target
        self.masks = masks  # an engine.train.masks.SlideMasks, or None: no masks
        self.input = InputSpec(level=spec.level, mpp=spec.mpp, size=spec.input_size, tissue_crop=spec.tissue_crop)

    def epoch_groups(self, epoch: int) -> list[np.ndarray]:
        """Training-set indices of each optimiser step of ``epoch`` (all ranks together)."""
        n, world = len(self.train_set), self.ctx.world_size
        order = np.random.default_rng([self.spec.seed, epoch, 1]).permutation(n)
        if world > 1 and n % world:
            # Every rank needs the same number of backward passes per step, or DDP would wait.
            order = np.concatenate([order, order[:world - n % world]])
        size = self.spec.accumulate * world
        return [order[i:i + size] for i in range(0, len(order), size)]

    def share(self, group: np.ndarray) -> np.ndarray:
        """This rank's slides of one step."""
        return group[self.ctx.rank::self.ctx.world_size]

    def load(self, record: SlideRecord, rng: np.random.Generator | None) -> Item:
        """``record`` read as an input; with ``rng`` randomly placed and augmented, else centred."""
        rgb, placement = read_slide_placed(record.path, self.input, rng)
        aug = draw_augmentation(rng, self.spec.colour_jitter) if rng is not None else Augmentation()
        mask = self.masks(record, rgb, placement, aug) if self.masks is not None else None
        return rgb, aug, self.target(record), mask

    def train_jobs(self, epoch: int, groups: list[np.ndarray], first_step: int) -> Iterator[Callable[[], Item]]:
        """Loading jobs for this rank's slides of ``groups[first_step:]``, in order (for a Prefetcher)."""
        for group in groups[first_step:]:
            for idx in self.share(group):
                rng = np.random.default_rng([self.spec.seed, epoch, int(idx), 2]) if self.spec.augment else None
                yield lambda rec=self.train_set[int(idx)], rng=rng: self.load(rec, rng)

    def calibration_slides(self) -> Iterator[tuple[np.ndarray, Augmentation]]:
        """The first ``spec.calibrate_norms`` training slides, centred and not augmented, one at a time."""
        for record in self.train_set[:self.spec.calibrate_norms]:
            yield read_slide_input(record.path, self.input, None), Augmentation()
