"""The network a training run trains: the model built from the spec, its trunk streamed, its
card, and the BatchNorm statistics set from data before they are frozen."""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import torch
from torch import nn

from engine.head_arguments import head_arguments
from engine.io.checkpoints import ModelCard
from engine.io.state_dicts import load_pretrained_backbone
from engine.models import SplitNet, create_model
from engine.specs import GRAPH_BUDGET_AUTO_SHARE, TrainingSpec
from engine.streaming import StreamHooks, StreamingModule
from engine.streaming.graph import FROZEN_MODULES, trace_trunk
from engine.streaming.keep import resolve_graph_budget
from engine.streaming.plan import axis_geometry
from engine.streaming.pooled import mask_skip
from engine.train.data import Augmentation, input_source

CALIBRATION_CROP = 1024  # input pixels per side of the crops that set BatchNorm statistics


def freeze_norms(module: nn.Module) -> None:
    """BatchNorm (running statistics) and Dropout in eval mode: what makes the trunk local (and,
    for a masked run, the head's stages independent of the glass around the tissue)."""
    for m in module.modules():
        if isinstance(m, FROZEN_MODULES):
            m.eval()


class Classifier(nn.Module):
    """Trunk (streamed, or conventional for comparison) then head, as one module.

    Only ``model`` is registered, so DDP and the optimiser see each parameter once; the trunk
    and head are views of it sharing its modules.
    """

    def __init__(self, model: SplitNet, *, streaming: bool, tile_size: int, channels_last: bool = False,
                 low_memory: bool = False, graph_budget: int | str | None = None, masked: bool = False):
        super().__init__()
        self.model = model
        self.streaming = streaming
        self.channels_last = channels_last
        # A masked run (tissue mask or annotation masks) keeps the head's norms frozen too. One
        # slide is one sample: batch statistics in the head's stages would be taken over all of
        # its cells, the masked-to-zero glass included, so the same tissue would train
        # differently on a slide with more glass (measured: the same tissue on a 12x12 and a
        # 48x48 map gave logits 2.6 apart in training mode).
        self.freeze_head_norms = masked
        trunk = model.trunk()
        # Bytes of forward graphs kept for backward (TrainingSpec.graph_budget; "auto" resolved
        # here, on the device the model was moved to).
        device = next(iter(model.parameters())).device
        self.graph_budget = resolve_graph_budget(graph_budget, device, GRAPH_BUDGET_AUTO_SHARE)
        runner = (StreamingModule(trunk, tile_size, freeze_batchnorm=True, channels_last=channels_last,
                                  graph_budget=self.graph_budget)
                  if streaming else trunk)
        # Per-pass hooks of the streamed trunk; the trainer sets its cancel check (set_should_stop).
        self.hooks = StreamHooks(release_every=1 if low_memory else 0)
        object.__setattr__(self, "trunk", trunk)
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "head", model.head())
        # Pool and linear only after the trunk: streamed, a max or mean is pooled block by block and
        # the map never held (StreamingModule.pooled), so memory does not grow with the slide.
        self.pooled_head = streaming and not self.head.has_stages and self.head.reducible
        # Traced here, on the thread that builds the model: the masks ask for it on the slide
        # prefetcher's thread, and torch.fx patches nn.Module.__call__ process-wide while tracing.
        graph = runner.graph if streaming else trace_trunk(trunk, freeze_batchnorm=True)
        geometry = (axis_geometry(graph, 0), axis_geometry(graph, 1))
        object.__setattr__(self, "_graph", graph)
        object.__setattr__(self, "_stride", (geometry[0].stride, geometry[1].stride))
        if self.freeze_head_norms:
            freeze_norms(self.head.stages)

    def set_should_stop(self, should_stop) -> None:
        """Stop a streamed pass between tiles when ``should_stop()`` turns True (raises Cancelled)."""
        self.hooks = dataclasses.replace(self.hooks, should_stop=should_stop)

    def set_tile(self, tile_size: int) -> None:
        """Stream the trunk with tiles of ``tile_size`` input pixels from now on (staged training's
        ``finetune_tile``); the streamed result is the same, only memory and overlap change."""
        if not self.streaming or self.runner.tile_size == (tile_size, tile_size):
            return
        runner = StreamingModule(self.trunk, tile_size, freeze_batchnorm=True, channels_last=self.channels_last,
                                 graph_budget=self.graph_budget)
        object.__setattr__(self, "runner", runner)

    def train(self, mode: bool = True):
        super().train(mode)
        freeze_norms(self.trunk)  # a training loop's .train() must not bring back batch statistics
        if self.freeze_head_norms:
            freeze_norms(self.head.stages)
        return self

    def trunk_grid(self, in_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The trunk's output size (rows, cols) for an input of ``in_hw`` pixels, and its stride
        (thread-safe: the graph was traced in ``__init__``)."""
        return self._graph.spatial_sizes(tuple(in_hw))[-1], self._stride

    def hooks_for(self, mask: torch.Tensor | None) -> StreamHooks:
        """This classifier's hooks, leaving out (forward and backward) every block with no cell of
        ``mask``: what makes the masked model's streamed pass skip glass exactly."""
        if mask is None or not self.streaming:
            return self.hooks
        return dataclasses.replace(self.hooks, skip_block=mask_skip(mask))

    def trunk_map(self, x, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk's output map of ``x`` (blocks without a cell of ``mask`` left NaN): what
        :meth:`forward` gives a head that does not pool block by block."""
        if self.channels_last and isinstance(x, torch.Tensor) and x.is_cuda:
            # Not on CPU: a whole-slide NHWC tensor sent oneDNN's weight gradient to its reference
            # kernel (a 4096² ResNet-34 step had not finished in 9 minutes); streamed tiles are small.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.runner(x, hooks=self.hooks_for(mask)) if self.streaming else self.runner(x)

    def forward(self, x, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (1, classes) for ``x``: a lazy source when streaming, else an NCHW tensor.

        ``mask``: bool (1, 1, h, w) on the trunk's output grid, or None. The head pools only its
        cells (:mod:`engine.models.heads`), and the streamed trunk leaves out, forward and
        backward, every block with none of them: exact for the masked model."""
        if self.pooled_head:
            return self.head.classify(self.runner.pooled(x, self.head.pool, hooks=self.hooks_for(mask), mask=mask))
        fmap = self.trunk_map(x, mask)
        if self.channels_last:
            fmap = fmap.contiguous(memory_format=torch.channels_last)
        return self.head(fmap, mask)


def build_model(spec: TrainingSpec, classes: tuple[str, ...], card_fields: dict | None = None) -> tuple[SplitNet, ModelCard]:
    """The spec's model (one output per class, label or target), initialised from ``spec.seed``
    (then from ``spec.pretrained`` when set), and the card that will describe it in every
    checkpoint; ``card_fields`` adds the task's fields (:meth:`engine.train.tasks.Task.card_fields`)."""
    torch.manual_seed(spec.seed)
    kwargs = dict(spec.model_kwargs)
    if spec.split is not None:
        kwargs["split"] = spec.split
    head_kwargs = head_arguments(spec.head_name, spec.head_kwargs)  # defaults written out: a card keeps its own
    model: SplitNet = create_model(spec.model, num_classes=len(classes), pool=spec.pool, head=spec.head_name,
                                   head_kwargs=head_kwargs, **kwargs)
    if spec.pretrained:
        load_pretrained_backbone(model, spec.pretrained)
    card = ModelCard(
        architecture=spec.model, classes=classes, split=model.split, pool=spec.pool,
        head=spec.head_name, head_kwargs=head_kwargs, tissue_mask=spec.tissue_mask,
        tissue_params=dict(spec.tissue_params) if spec.tissue_mask == "auto" else {},
        model_kwargs={k: v for k, v in spec.model_kwargs.items() if k not in ("split", "pool", "num_classes")},
        input_mpp=spec.mpp, input_level=spec.level, normalization_mean=tuple(spec.normalization_mean),
        normalization_std=tuple(spec.normalization_std), tile_size=spec.tile_size,
        provenance={"made_by": "engine.train", "labels": str(spec.labels), "pretrained": spec.pretrained,
                    "input_size": spec.input_size, "tissue_crop": spec.tissue_crop,
                    **({"include_classes": list(spec.include_classes)} if spec.include_classes else {}),
                    **({"exclude_classes": list(spec.exclude_classes)} if spec.exclude_classes else {})},
        **(card_fields or {}))
    return model, card


def calibrate_norms(classifier: Classifier, slides: Iterable[tuple[np.ndarray, Augmentation]], spec: TrainingSpec,
                    dtype: torch.dtype, device: torch.device) -> None:
    """Set the trunk's BatchNorm statistics (and, in a masked run, the head stages': they are
    frozen too, see :class:`Classifier`) from ``slides`` before they are frozen.

    From scratch, frozen norms keep running mean 0 and variance 1, which fit no layer:
    activations shrink layer after layer and the head sees nearly constant features
    (measured on 1024² demo slides: max-pooled features about 0.1, loss stuck at ln 2 for
    10 epochs; about 4 after calibration). A conventional forward in training mode over centred
    crops of the first few training slides (the same slides on every rank) gives each norm the
    cumulative mean and variance of its input; then the norms are frozen again.
    """
    frozen = [classifier.trunk] + ([classifier.head.stages] if classifier.freeze_head_norms else [])
    norms = [m for part in frozen for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration crops
        m.train()
    with torch.no_grad():
        for rgb, aug in slides:
            h, w = rgb.shape[:2]
            crop = min(h, w, CALIBRATION_CROP)
            y0, x0 = (h - crop) // 2, (w - crop) // 2
            src = input_source(np.ascontiguousarray(rgb[y0:y0 + crop, x0:x0 + crop]), aug,
                               spec.normalization_mean, spec.normalization_std, dtype=dtype)
            fmap = classifier.trunk(src.read((0, crop), (0, crop)).to(device))
            if classifier.freeze_head_norms:
                classifier.head.stages(fmap)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    for part in frozen:
        freeze_norms(part)
