"""Staged training: the head alone on the frozen trunk first, then the whole network.

With ``TrainingSpec.freeze_trunk_epochs`` K > 0, epochs 0..K-1 are *head* epochs: the trunk's
parameters do not require gradients, the trunk runs forward only (no autograd graph, no graph
budget) and only the head learns. Without augmentation a slide's trunk map is the same every head
epoch, so it is computed once and cached in the run folder (:mod:`engine.train.map_cache`); a
later head epoch reads the maps and costs only the head. With augmentation the trunk runs forward
every epoch (nothing cached but the validation maps: validation is never augmented).

From epoch K on (*full* epochs) the trunk is unfrozen and streamed with ``finetune_tile`` (when
given), and the cache is removed. The optimiser holds two param groups from the start, the head's
(``lr``) and the trunk's (``finetune_lr``, else ``lr``), so its state has the same layout on both
sides of the switch and a run resumes on either side; the trunk's group gets no gradients, so no
update and no weight decay, while frozen. The schedule: the head's group follows the run's
schedule over all epochs, unchanged by the switch; the trunk's rate is 0 until the switch and then
follows the same kind of schedule over the remaining epochs, from the switch (its own warm-up of
``warmup_steps``, then cosine to 0 at the end, or constant). K = 0 is a plain run, unchanged.

Each epoch of a staged run logs a ``stage`` row to ``metrics.jsonl`` (:data:`engine.io.runs.STAGE`),
and its training rows carry ``trunk_lr`` beside ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from engine.io.labels import SlideRecord
from engine.io.runs import RunFolder
from engine.specs import TrainingSpec
from engine.train import distributed, precision
from engine.train.classifier import Classifier
from engine.train.data import Augmentation, input_source
from engine.train.distributed import DistContext
from engine.train.feed import Item, SlideFeed
from engine.train.map_cache import MapCache, cache_dtype, cache_key
from engine.train.optim import build_optimizer, build_scheduler, lr_factor, optimizer_over
from engine.train.step import SlideForward
from engine.train.validator import Validator

HEAD, FULL = "head", "full"


def stage_of(spec: TrainingSpec, epoch: int) -> str:
    """"head" for the first ``freeze_trunk_epochs`` epochs, then "full"."""
    return HEAD if epoch < spec.freeze_trunk_epochs else FULL


def base_lrs(spec: TrainingSpec) -> list[float]:
    """The base learning rate of each param group: the head's (and the trunk's in a staged run)."""
    if not spec.freeze_trunk_epochs:
        return [spec.lr]
    return [spec.lr, spec.finetune_lr if spec.finetune_lr is not None else spec.lr]


def build_staged_optimizer(spec: TrainingSpec, model: nn.Module, trunk: nn.Module) -> torch.optim.Optimizer:
    """A plain run's optimiser, or a staged run's with the head's and the trunk's param groups."""
    if not spec.freeze_trunk_epochs:
        return build_optimizer(spec, model)
    trunk_ids = {id(p) for p in trunk.parameters()}
    head_params = [p for p in model.parameters() if id(p) not in trunk_ids]
    head_lr, trunk_lr = base_lrs(spec)
    return optimizer_over(spec, [{"params": head_params, "lr": head_lr},
                                 {"params": list(trunk.parameters()), "lr": trunk_lr}])


def build_staged_scheduler(spec: TrainingSpec, optimizer: torch.optim.Optimizer,
                           steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of each param group (see the module docstring)."""
    total = spec.epochs * steps_per_epoch
    if not spec.freeze_trunk_epochs:
        return build_scheduler(spec, optimizer, total)
    switch = spec.freeze_trunk_epochs * steps_per_epoch
    kind = dict(warmup_steps=spec.warmup_steps, schedule=spec.schedule)

    def head(step: int) -> float:
        return lr_factor(step, total_steps=total, **kind)

    def trunk(step: int) -> float:
        return 0.0 if step < switch else lr_factor(step - switch, total_steps=total - switch, **kind)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [head, trunk])


@dataclass
class CachedSlide:
    """A head epoch's input without augmentation: the cached map ``fmap`` (and ``mask``) of cache
    entry ``name``, or (not cached yet) the slide's pixels ``rgb``, whose map is computed and cached."""

    name: str
    rgb: np.ndarray | None = None
    fmap: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class HeadOnly(nn.Module):
    """The head of ``classifier`` as a module of its own (what DDP wraps in head epochs); it
    registers the classifier, so ``.train()`` keeps the trunk's norms frozen."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, features: torch.Tensor, pooled: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the trunk's map (N, C, h, w) and its ``mask`` (as :meth:`Classifier.forward`
        takes it), or from its global pool (N, C) when ``pooled`` (the mask already applied)."""
        head = self.classifier.head
        if pooled:
            return head.classify(features)
        if self.classifier.channels_last:
            features = features.contiguous(memory_format=torch.channels_last)
        return head(features, mask)


def trunk_map(classifier: Classifier, x, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The trunk's output map of ``x``, as :meth:`Classifier.forward` computes it before the head."""
    return classifier.trunk_map(x, mask)


class HeadForward:
    """Logits of one slide in a head epoch: the trunk's map from the cache, or computed forward
    only (and cached with its mask when the slide comes as a :class:`CachedSlide`), then the head
    with autograd. Called as :class:`~engine.train.step.SlideForward` is, with a :class:`HeadOnly`
    as ``net``."""

    def __init__(self, plain: SlideForward, classifier: Classifier, cache: MapCache | None):
        self.plain, self.classifier, self.cache = plain, classifier, cache

    def __call__(self, net: nn.Module, x: CachedSlide | np.ndarray, aug: Augmentation,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        plain, pooled = self.plain, False
        if isinstance(x, CachedSlide):
            if x.fmap is not None:
                features, mask = x.fmap, x.mask
            else:
                features, mask = self._cache_map(x, aug, mask)
        else:  # augmented: a new view of the slide each epoch, so nothing is kept
            pooled = self.classifier.pooled_head  # then the map is pooled block by block, never held
            features = self.trunk_features(x, aug, mask, pooled=pooled)
        features = features.to(plain.device, plain.dtype)
        if mask is not None:
            mask = mask.to(plain.device)
        with precision.autocast(plain.device, plain.amp_dtype):
            logits = net(features, pooled=pooled, mask=mask)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def trunk_features(self, rgb: np.ndarray, aug: Augmentation, mask: torch.Tensor | None = None, *,
                       pooled: bool = False) -> torch.Tensor:
        """The frozen trunk's map of ``rgb`` (or its global pool over ``mask``), forward only."""
        spec, plain, classifier = self.plain.spec, self.plain, self.classifier
        src = input_source(rgb, aug, spec.normalization_mean, spec.normalization_std, dtype=plain.dtype)
        x = src if spec.streaming else src.read((0, src.shape[2]), (0, src.shape[3])).to(plain.device)
        with torch.no_grad(), precision.autocast(plain.device, plain.amp_dtype):
            if pooled:
                return classifier.runner.pooled(x, classifier.head.pool, hooks=classifier.hooks_for(mask), mask=mask)
            return trunk_map(classifier, x, mask)

    def _cache_map(self, slide: CachedSlide, aug: Augmentation,
                   mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        fmap = self.trunk_features(slide.rgb, aug, mask)
        # Trained on as cached (rounded), so the first head epoch sees what the later ones read.
        return self.cache.store(slide.name, fmap, mask), mask


class CachedValidator(Validator):
    """The validation of head epochs: each validation slide's map computed once and cached."""

    def __init__(self, base: Validator, forward: HeadForward, head_net: HeadOnly, cache: MapCache):
        super().__init__(base.records, base.feed, forward, base.task, base.ctx, base.emit, base.cancel, base.prefetch)
        self.head_net, self.cache = head_net, cache

    def __call__(self, classifier: nn.Module) -> dict[str, float] | None:
        return super().__call__(self.head_net)  # the head on the cached maps is the model being trained

    def jobs(self) -> list:
        ctx = self.ctx
        return [lambda k=k: cached_item(self.cache, f"val-{k}", self.records[k], self.feed)
                for k in range(ctx.rank, len(self.records), ctx.world_size)]


def cached_item(cache: MapCache, name: str, record: SlideRecord, feed: SlideFeed) -> Item:
    """Cache entry ``name`` of ``record`` as a training item: its map and mask when cached, else
    its pixels and mask (read centred, not augmented) for the map to be computed."""
    found = cache.load(name)
    if found is not None:
        fmap, mask = found
        return CachedSlide(name, fmap=fmap, mask=mask), Augmentation(), feed.target(record), mask
    rgb, aug, target, mask = feed.load(record, None)
    return CachedSlide(name, rgb=rgb), aug, target, mask


class Stage(NamedTuple):
    """What the trainer runs an epoch with: the (wrapped) network, the slide forward, the validation."""

    net: nn.Module
    forward: Callable
    validate: Validator


class Stages:
    """Switches the trainer between head and full epochs (:meth:`enter`), with the trunk-map
    cache of head epochs (rank 0 prepares and removes it)."""

    def __init__(self, spec: TrainingSpec, classifier: Classifier, feed: SlideFeed, val_set: list[SlideRecord],
                 run: RunFolder, ctx: DistContext, device: torch.device, forward: SlideForward,
                 validate: Validator):
        self.spec, self.classifier, self.feed, self.val_set, self.run = spec, classifier, feed, val_set, run
        self.ctx, self.device, self.plain = ctx, device, Stage(classifier, forward, validate)
        self.head_net = HeadOnly(classifier)
        self.current: str | None = None
        self.cache: MapCache | None = None
        if spec.freeze_trunk_epochs and spec.finetune_tile is not None and spec.streaming:
            # Refused now rather than after the head epochs (raises TileSizeError with the reason).
            for axis in classifier.runner.geometry:
                axis.block_for_tile(spec.finetune_tile)

    @property
    def staged(self) -> bool:
        return self.spec.freeze_trunk_epochs > 0

    def enter(self, epoch: int, global_step: int, step_in_epoch: int) -> Stage | None:
        """Before each epoch (from ``step_in_epoch``): the new stage when it changes, else None."""
        stage = stage_of(self.spec, epoch)
        if self.staged and self.ctx.is_main and step_in_epoch == 0:
            self.run.append_stage(epoch, global_step, stage)
        if stage == self.current:
            return None
        self.current = stage
        if stage == HEAD:
            return self._enter_head()
        return self._enter_full()

    def _enter_head(self) -> Stage:
        spec, classifier = self.spec, self.classifier
        for p in classifier.trunk.parameters():
            p.requires_grad_(False)
        key = cache_key(spec, self.feed.train_set, self.val_set, classifier.trunk) if self.ctx.is_main else ""
        self.cache = MapCache(self.run.path, key, cache_dtype(spec))
        if self.ctx.is_main:
            self.cache.prepare()
        distributed.any_rank(False, self.ctx, self.device)  # no rank reads the cache before it is checked
        forward = HeadForward(self.plain.forward, classifier, self.cache)
        validate = CachedValidator(self.plain.validate, forward, self.head_net, self.cache)
        return Stage(distributed.wrap(self.head_net, self.ctx, self.device), forward, validate)

    def _enter_full(self) -> Stage:
        spec, classifier = self.spec, self.classifier
        if self.staged:  # a plain run's parameters are left as they were built
            for p in classifier.trunk.parameters():
                p.requires_grad_(True)
            if spec.finetune_tile is not None:
                classifier.set_tile(spec.finetune_tile)
        self.close()
        # DDP is built anew: it syncs only the parameters that required gradients when it was made.
        return Stage(distributed.wrap(classifier, self.ctx, self.device), self.plain.forward, self.plain.validate)

    def train_jobs(self, epoch: int, groups: list[np.ndarray], first_step: int) -> Iterator[Callable[[], Item]]:
        """The loading jobs of an epoch: cached maps in head epochs without augmentation, else
        the slides (:meth:`SlideFeed.train_jobs`)."""
        if self.current != HEAD or self.spec.augment:
            yield from self.feed.train_jobs(epoch, groups, first_step)
            return
        for group in groups[first_step:]:
            for idx in self.feed.share(group):
                yield lambda i=int(idx): cached_item(self.cache, f"train-{i}", self.feed.train_set[i], self.feed)

    def train_values(self, loss: float, scheduler) -> dict[str, float]:
        """The values of a training row: loss and lr, and in a staged run the trunk's lr."""
        lrs = scheduler.get_last_lr()
        values = {"loss": loss, "lr": lrs[0]}
        if self.staged:
            values["trunk_lr"] = lrs[1]
        return values

    def close(self) -> None:
        """Remove the map cache (rank 0): when the trunk is unfrozen, at the end, on a clean cancel
        (also in a plain run, which may reuse the folder of a staged run that was killed)."""
        if self.ctx.is_main:
            (self.cache or MapCache(self.run.path, "")).remove()
        self.cache = None
