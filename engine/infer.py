"""Inference and saliency over a slide region: the job behind :func:`engine.api.run_inference`.

The model's trunk is streamed over the region (its frozen BatchNorms folded into the
convolutions) and its head runs conventionally. The prediction map is emitted patch by patch
as blocks finish when the head has no spatial stages left; when it is besides a global pool +
linear layer, the trunk's map is pooled block by block instead of being held, so memory stays
flat with the slide's size. Otherwise the map is stitched and the prediction map comes from the
head's cells once it is whole. The saliency map is the streamed input gradient of one class
logit, emitted region by region. An attention head's weights are a map too ("attention", see
:mod:`engine.infer_attention`).

Runs can be restricted to annotated regions (``spec.regions``: the job reads the regions'
bounding box) and to the slide's tissue (``spec.tissue_mask``, else the model card's; the
tissue is found on the slide's thumbnail, :func:`engine.slides.tissue.detect_tissue`). Both
masks live on the trunk's output cells and combine by intersection (:mod:`engine.infer_masks`):
blocks without a kept cell are skipped (never read or run), the slide-level pool takes the kept
cells only (cells of a partly-kept block that are left out are masked out of it, and NaN in the
prediction map), and the saliency is the input gradient of that pool, NaN on saliency cells
outside the mask. The tissue mask itself is emitted once, first, as the layer "tissue" (1 on
tissue cells, 0 elsewhere, on the prediction map's grid) and written with the other maps.
Cells near the read box's edge see the streaming's zero padding as in any region run.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch

from engine.annotations.regions import RunArea
from engine.devices import local_rank, resolve_device
from engine.errors import Cancelled, CheckpointError, SpecError, TileSizeError
from engine.events import CancelToken, EventCallback, Finished, Prediction
from engine.geometry import LevelRegion, MapGeometry, head_cell_hw
from engine.infer_attention import AttentionMap
from engine.infer_head import HeadEvaluator
from engine.infer_maps import MapAccumulator, ProgressClock, SaliencyMap
from engine.infer_masks import RunMask, find_tissue
from engine.io.checkpoints import card_path, load_checkpoint
from engine.io.maps import MapLayer, write_maps
from engine.models.fold import fold_batchnorm
from engine.slides import open_slide
from engine.slides.region import (
    SlideRegionSource,
    choose_level,
    level_region,
    tissue_box,
)
from engine.slides.tissue import TissueMask, coverage_on_grid, detect_tissue
from engine.specs import InferenceSpec
from engine.streaming import StreamHooks, StreamingModule
from engine.streaming.pooled import GlobalPoolReducer, mask_skip

#: The layer the tissue mask is emitted and written as.
TISSUE = "tissue"


def run_inference(spec: InferenceSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """See :func:`engine.api.run_inference`."""
    cancel = cancel or CancelToken()
    device = resolve_device(spec.device, local_rank())  # under torchrun (the CLI), the rank's GPU
    model, card = load_checkpoint(spec.model_path, device=str(device))
    if card.task != "classification":
        # Maps and Prediction events hold class probabilities; a softmax over regression outputs
        # or independent labels would look like an answer and be none.
        raise SpecError(f"{spec.model_path} is a {card.task} model ({', '.join(card.classes)}); prediction maps are "
                        "made for classifiers only so far: evaluate it on a labelled cohort with "
                        "'python -m engine evaluate' (engine.api.evaluate)")
    classes = tuple(card.classes)
    if spec.saliency and spec.saliency_class is not None and spec.saliency_class >= len(classes):
        raise SpecError(f"saliency_class {spec.saliency_class} does not exist; the model has {len(classes)} "
                        f"classes ({', '.join(classes)}), numbered from 0")
    for p in model.parameters():
        p.requires_grad_(False)  # saliency needs the input gradient only
    # Nothing is trained here, so the trunk's frozen BatchNorms fold into its convolutions (one
    # pass over each activation fewer; the input gradient is the same function's).
    trunk = fold_batchnorm(model.trunk())
    head = HeadEvaluator(model.head())
    if spec.regions is not None and not head.pool_live:
        raise SpecError("runs inside regions need a model whose head is a global pool and a linear layer")
    with open_slide(spec.slide_path) as slide:
        l0_box = spec.l0_region or tissue_box(slide)
        area = None
        if spec.regions is not None:  # l0_base: what regions of excluded classes only leave, less them
            area = RunArea.of(spec.regions, spec.include_classes, spec.exclude_classes, l0_base=l0_box)
        mask = RunMask(area, find_tissue(slide, spec, card))
        if mask.active:
            head.check_mask()
        level = choose_level(slide, level=spec.level, mpp=spec.mpp or card.input_mpp, fallback_level=card.input_level)
        if area is not None:
            l0_box = area.l0_bounds if spec.l0_region is None else area.l0_bounds.intersect(spec.l0_region)
        region = level_region(slide, level, l0_box)
        source = SlideRegionSource(slide, region, card.normalization_mean, card.normalization_std)
        stream = _stream(trunk, spec, card)
        warnings = input_warnings(slide, region, stream.geometry[0].receptive_field, stream.geometry[1].receptive_field,
                                  tissue=mask.tissue)
        job = InferenceRun(spec, stream, head, region, classes, on_event, cancel, device, mask=mask)
        cancelled = job.run(source)
        outputs = {}
        if spec.out_dir:
            extra = {"model": str(spec.model_path), "slide_resolved": str(Path(spec.slide_path).resolve()),
                     "level": level, "region_l0": list(region.l0_box.as_tuple()), "cancelled": cancelled,
                     "warnings": list(warnings)}
            if area is not None:
                extra["regions"] = {"source": spec.regions if isinstance(spec.regions, str) else "annotations given",
                                    "include": list(spec.include_classes), "exclude": list(spec.exclude_classes)}
            if mask.tissue is not None:
                extra["tissue_mask"] = "auto"  # runs without it record nothing: their files are as they were
            outputs = write_maps(spec.out_dir, job.layers(), slide_path=spec.slide_path, classes=classes,
                                 prediction=job.prediction, slide_mpp=slide.mpp[0] if slide.mpp else None, extra=extra)
    done = Finished(cancelled, outputs, job.prediction, warnings)
    on_event(done)
    return done


#: Below this share of tissue in the region read, a prediction is said to rest on no tissue.
MIN_TISSUE_FRACTION = 0.005


def _stream(trunk, spec: InferenceSpec, card) -> StreamingModule:
    """The streamed trunk at the spec's tile, else the card's; a card tile the trunk cannot use is
    the model file's problem (:class:`~engine.errors.CheckpointError`), not a usage error."""
    try:
        return StreamingModule(trunk, spec.tile_size or card.tile_size, freeze_batchnorm=True)
    except TileSizeError as exc:
        if spec.tile_size:
            raise
        raise CheckpointError(f"{card_path(spec.model_path)}: field 'tile_size' ({card.tile_size}) does not fit the "
                              f"model: {exc} Give a tile with --tile (tile_size), or fix the card.") from None


def input_warnings(slide, region: LevelRegion, rf_rows: int, rf_cols: int, *,
                   tissue: TissueMask | None = None) -> tuple[str, ...]:
    """What makes a prediction on ``region`` doubtful although it runs: no tissue in it (an
    empty or all-white slide), or a region smaller than the trunk's receptive field (the
    prediction then rests mostly on padding). ``tissue``: the slide's tissue when the run
    already found it (else it is found here, with the default parameters)."""
    warnings = []
    if region.lv_h < rf_rows or region.lv_w < rf_cols:
        warnings.append(f"the region read is only {region.lv_w}x{region.lv_h} pixels, smaller than the model's "
                        f"receptive field ({rf_cols}x{rf_rows} px): the prediction rests mostly on padding")
    mask = tissue if tissue is not None else detect_tissue(slide)
    tissue = float(coverage_on_grid(mask.th_mask, mask.l0_box, MapGeometry(region.l0_box, (1, 1)))[0, 0])
    if tissue < MIN_TISSUE_FRACTION:
        warnings.append(f"no tissue found in the region read ({100 * tissue:.1f}% of it looks like tissue): "
                        "the prediction may mean nothing")
    return tuple(warnings)


class InferenceRun:
    """One run over a region: the streamed forward, the slide-level prediction and the saliency
    backward, feeding the maps. :meth:`run` returns whether it was cancelled; what was finished
    stays in :attr:`prediction` and :meth:`layers` either way."""

    def __init__(self, spec: InferenceSpec, stream: StreamingModule, head: HeadEvaluator, region: LevelRegion,
                 classes: tuple[str, ...], emit: EventCallback, cancel: CancelToken, device: torch.device,
                 mask: RunMask | None = None):
        self.spec, self.stream, self.head, self.region = spec, stream, head, region
        self.classes, self.emit, self.device = classes, emit, device
        self.mask = mask = mask or RunMask()
        self.out_hw = stream.output_size((region.lv_h, region.lv_w))
        self.cell = stream.stride  # level pixels per trunk output cell (rows, cols)
        # The trunk's output cells on level 0 (the last ones reach past the region: padding).
        self.grid = MapGeometry(region.cells_to_l0((0, self.out_hw[0]), (0, self.out_hw[1]), self.cell), self.out_hw)
        # The trunk's output cells computed (None: all); tissue counts inside the region read only.
        self.keep: np.ndarray | None = mask.cells(self.grid, region.l0_box)
        if self.keep is not None and not self.keep.any():
            raise SpecError(mask.nothing_kept_message((self.cell[0] * region.downsample, self.cell[1] * region.downsample)))
        # Kept cells alone reach the pool (the reducer's mask: outside cells are neither a maximum
        # nor summed nor counted, and get no gradient).
        self.reducer = GlobalPoolReducer(head.head.pool, mask=self.keep) if head.pool_live else None
        self.prediction: Prediction | None = None
        self.prediction_map: MapAccumulator | None = None  # made by the first prediction patch
        self.tissue_map: MapAccumulator | None = None
        self.saliency: SaliencyMap | None = None
        self.attention = AttentionMap(head, region, self.cell, self.out_hw, classes, emit) if head.is_attention else None
        priority = None
        if spec.priority_l0_box is not None:
            priority = region.l0_to_cells(*spec.priority_l0_box.center, self.cell)
        self.hooks = StreamHooks(progress=ProgressClock(emit), should_stop=lambda: cancel.cancelled,
                                 on_block=self._on_block if head.cells_live else None, priority=priority,
                                 release_every=1 if spec.low_memory else 0,
                                 skip_block=mask_skip(self.keep) if self.keep is not None else None)

    def layers(self) -> dict[str, MapLayer]:
        maps = [self.saliency.map] if self.saliency is not None else []
        for m in (self.prediction_map, self.tissue_map, self.attention.map if self.attention else None):
            if m is not None:
                maps.append(m)
        return {m.layer: m.map_layer() for m in maps}

    def run(self, source: SlideRegionSource) -> bool:
        try:
            if self.mask.tissue is not None:
                self._tissue_layer()
            if self.spec.saliency:
                self.saliency = SaliencyMap(self.region, int(self.spec.saliency_cell), self.classes, self.emit,
                                            partial(self.mask.cells, l0_within=self.region.l0_box)
                                            if self.mask.active else None)
            logits, fmap = self._forward(source)
            probs = torch.softmax(logits.float(), dim=1)[0]
            if fmap is not None:
                if not self.head.cells_live:
                    self._cells_prediction(fmap)
                if self.attention is not None:
                    self.attention.finish(fmap, self._mask_tensor(fmap))
            self.prediction = Prediction(self.classes, tuple(float(v) for v in probs.detach().cpu()))
            self.emit(self.prediction)
            if self.saliency is not None:
                target = self.spec.saliency_class if self.spec.saliency_class is not None else int(probs.argmax())
                self._saliency_backward(source, logits, target)
        except Cancelled:
            return True
        return False

    def _tissue_layer(self) -> None:
        """The tissue mask on the trunk's cells, as one patch before any block runs (on the
        prediction map's grid, so the two overlay cell for cell)."""
        self.tissue_map = MapAccumulator(TISSUE, self.region, self.cell, self.out_hw, channels=(), fill=math.nan,
                                         clip=True, classes=self.classes, emit=self.emit)
        self.tissue_map.put_whole(self.mask.tissue_cells(self.grid, self.region.l0_box).astype(np.float32))

    def _mask_tensor(self, fmap: torch.Tensor) -> torch.Tensor | None:
        """The kept cells as a (1, 1, H, W) bool tensor on ``fmap``'s device, or None."""
        if self.keep is None:
            return None
        return torch.from_numpy(self.keep)[None, None].to(fmap.device)

    def _forward(self, source) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slide-level logits, and the trunk's whole map unless it was pooled block by block."""
        with _autocast(self.device):
            if self.head.pool_live:
                self.stream.forward_blocks(source, hooks=self.hooks)
                return self.head.pooled_logits(self.reducer), None
            sink = self.saliency.sink if self.saliency is not None else None
            fmap = self.stream(source, input_grad_sink=sink, hooks=self.hooks)
            return self.head.logits(fmap, self._mask_tensor(fmap)), fmap

    def _saliency_backward(self, source, logits: torch.Tensor, target: int) -> None:
        if self.head.pool_live:
            grad_pooled = self.head.pooled_logit_grad(target)
            grad_for_block = self.reducer.grad_for_block(grad_pooled)  # 0 outside the mask
            with _autocast(self.device):
                # The reducer turns the pooled features' gradient into the map's, block by block.
                self.stream.backward_from(source, grad_for_block, input_grad_sink=self.saliency.sink, hooks=self.hooks)
        else:
            # The masked model's cells outside the mask get a zero gradient (torch.where), so
            # the streamed backward skips the blocks that hold no kept cell.
            logits[0, target].backward()

    def _on_block(self, rows: tuple[int, int], cols: tuple[int, int], fmap_block: torch.Tensor) -> None:
        keep = None if self.keep is None else self.keep[rows[0]:rows[1], cols[0]:cols[1]]
        if self.reducer is not None:
            self.reducer.add(rows, cols, fmap_block)  # the reducer leaves out the cells outside the mask
        keep_block = None if keep is None else torch.from_numpy(keep)[None, None]
        probs = self.head.cell_probabilities(fmap_block, keep_block)
        self._prediction_patch(probs, rows, cols, self.out_hw, self.cell)
        if self.attention is not None:
            self.attention.add_block(rows, cols, fmap_block, keep)

    def _cells_prediction(self, fmap: torch.Tensor) -> None:
        """The prediction map of a head with spatial stages: one patch, at the head's cells, each
        the stages' stride in trunk cells (with a mask, of the masked model; NaN on head cells
        holding no kept trunk cell)."""
        cells = self.head.cell_probabilities(fmap, self._mask_tensor(fmap))
        map_hw = tuple(cells.shape[1:])
        self._prediction_patch(cells, (0, map_hw[0]), (0, map_hw[1]), map_hw, head_cell_hw(self.cell, self.head.stride))

    def _prediction_patch(self, values, rows, cols, map_hw, cell_hw) -> None:
        if self.prediction_map is None:
            # The trunk's last cells reach past the region (padding); the map ends at the region.
            self.prediction_map = MapAccumulator("prediction", self.region, cell_hw, map_hw, channels=(len(self.classes),),
                                                 fill=math.nan, clip=True, classes=self.classes, emit=self.emit)
        self.prediction_map.put(values, rows, cols)


def _autocast(device: torch.device):
    """Mixed precision on GPU (bf16 where supported, else fp16); full precision on CPU."""
    if device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
