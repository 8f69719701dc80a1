"""Inference and saliency over a slide region: the job behind :func:`engine.api.run_inference`.

The model's trunk is streamed over the region (its frozen BatchNorms folded into the
convolutions) and its head runs conventionally. The prediction map is emitted patch by patch
as blocks finish when the head has no spatial stages left (it is then pool + linear, and the
trunk's map is pooled block by block instead of being held, so memory stays flat with the
slide's size); otherwise it comes from the head's cells once the whole map is known. The
saliency map is the streamed input gradient of one class logit, emitted region by region.

Inside annotated regions (``spec.regions``) the job reads the regions' bounding box and keeps
the trunk's output cells whose centre lies inside the regions' area: blocks without a kept cell
are skipped (never read or run), the slide-level pool takes the kept cells only (cells of a
partly-inside block that lie outside are masked out of it, and NaN in the prediction map), and the
saliency is the input gradient of that pool, NaN on saliency cells outside the area. Cells near the
bounding box's edge see the streaming's zero padding as in any region run. Regions need a head
that is pool + linear (the pool is taken block by block).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from engine.annotations.regions import RunArea
from engine.devices import local_rank, resolve_device
from engine.errors import Cancelled, CheckpointError, SpecError, TileSizeError
from engine.events import (
    CancelToken,
    EventCallback,
    Finished,
    MapPatch,
    Prediction,
    Progress,
)
from engine.geometry import LevelRegion, MapGeometry
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
from engine.slides.tissue import coverage_on_grid, detect_tissue
from engine.specs import InferenceSpec
from engine.streaming import InputGradientSink, StreamHooks, StreamingModule
from engine.streaming.pooled import GlobalPoolReducer


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
    area = None
    if spec.regions is not None:
        if not head.live_cells:
            raise SpecError("runs inside regions need a model whose head is a global pool and a linear layer")
        area = RunArea.of(spec.regions, spec.include_classes, spec.exclude_classes)
    with open_slide(spec.slide_path) as slide:
        level = choose_level(slide, level=spec.level, mpp=spec.mpp or card.input_mpp, fallback_level=card.input_level)
        l0_box = spec.l0_region or tissue_box(slide)
        if area is not None:
            l0_box = area.l0_bounds if spec.l0_region is None else area.l0_bounds.intersect(spec.l0_region)
        region = level_region(slide, level, l0_box)
        source = SlideRegionSource(slide, region, card.normalization_mean, card.normalization_std)
        stream = _stream(trunk, spec, card)
        warnings = input_warnings(slide, region, stream.geometry[0].receptive_field, stream.geometry[1].receptive_field)
        job = InferenceRun(spec, stream, head, region, classes, on_event, cancel, device, area=area)
        cancelled = job.run(source)
        outputs = {}
        if spec.out_dir:
            extra = {"model": str(spec.model_path), "slide_resolved": str(Path(spec.slide_path).resolve()),
                     "level": level, "region_l0": list(region.l0_box.as_tuple()), "cancelled": cancelled,
                     "warnings": list(warnings)}
            if area is not None:
                extra["regions"] = {"source": spec.regions if isinstance(spec.regions, str) else "annotations given",
                                    "include": list(spec.include_classes), "exclude": list(spec.exclude_classes)}
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


def input_warnings(slide, region: LevelRegion, rf_rows: int, rf_cols: int) -> tuple[str, ...]:
    """What makes a prediction on ``region`` doubtful although it runs: no tissue in it (an
    empty or all-white slide), or a region smaller than the trunk's receptive field (the
    prediction then rests mostly on padding)."""
    warnings = []
    if region.lv_h < rf_rows or region.lv_w < rf_cols:
        warnings.append(f"the region read is only {region.lv_w}x{region.lv_h} pixels, smaller than the model's "
                        f"receptive field ({rf_cols}x{rf_rows} px): the prediction rests mostly on padding")
    mask = detect_tissue(slide)
    tissue = float(coverage_on_grid(mask.th_mask, mask.l0_box, MapGeometry(region.l0_box, (1, 1)))[0, 0])
    if tissue < MIN_TISSUE_FRACTION:
        warnings.append(f"no tissue found in the region read ({100 * tissue:.1f}% of it looks like tissue): "
                        "the prediction may mean nothing")
    return tuple(warnings)


class ProgressClock:
    """Turns the streaming module's per-block callbacks into Progress events with an ETA.

    The ETA is linear in blocks within a phase; the streamed backward (the saliency phase) is
    reported as its own phase.
    """

    NAMES = {"forward": "forward", "backward": "saliency"}

    def __init__(self, emit: EventCallback):
        self.emit = emit
        self.start = self.last = time.perf_counter()
        self.phase, self.phase_t0 = None, self.start

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self.phase:
            self.phase, self.phase_t0 = phase, self.last
        self.last = now
        eta = (now - self.phase_t0) / max(done, 1) * (total - done)
        self.emit(Progress(self.NAMES.get(phase, phase), done, total, now - self.start, eta))


class MapAccumulator:
    """One output map filled patch by patch: keeps the values (for the results file) and emits
    each patch as a :class:`~engine.events.MapPatch`.

    The map's cells are ``cell_hw`` level pixels of ``region``, counted from its origin. With
    ``clip``, cells reaching past the region's far edges are cut at the region, so the map ends
    where the region does.
    """

    def __init__(self, layer: str, region: LevelRegion, cell_hw: tuple[int, int], map_hw: tuple[int, int], *,
                 channels: tuple[int, ...], fill: float, clip: bool, classes: tuple[str, ...], emit: EventCallback):
        self.layer, self.region, self.cell_hw, self.map_hw = layer, region, cell_hw, map_hw
        self.clip, self.classes, self.emit = clip, classes, emit
        self.values = np.full((*channels, *map_hw), fill, np.float32)
        self.map_l0_box = self.cells_l0_box((0, map_hw[0]), (0, map_hw[1]))

    def cells_l0_box(self, map_rows: tuple[int, int], map_cols: tuple[int, int]):
        box = self.region.cells_to_l0(map_rows, map_cols, self.cell_hw)
        return box.intersect(self.region.l0_box) if self.clip else box

    def put(self, values: np.ndarray, map_rows: tuple[int, int], map_cols: tuple[int, int]) -> None:
        self.values[..., map_rows[0]:map_rows[1], map_cols[0]:map_cols[1]] = values
        self.emit(MapPatch(self.layer, self.cells_l0_box(map_rows, map_cols), values, (map_rows[0], map_cols[0]),
                           self.map_hw, self.map_l0_box, self.classes))

    def map_layer(self) -> MapLayer:
        """The whole map for :func:`engine.io.maps.write_maps` (which stores the box as 4 numbers)."""
        return MapLayer(self.values, self.map_l0_box.as_tuple())


class SaliencyMap:
    """The saliency layer: per ``cell`` x ``cell`` input pixels, the magnitude of the mean input
    gradient in its strongest channel (where the class score is sensitive)."""

    def __init__(self, region: LevelRegion, cell: int, classes: tuple[str, ...], emit: EventCallback,
                 area: RunArea | None = None):
        map_hw = (-(-region.lv_h // cell), -(-region.lv_w // cell))
        # Cells start NaN: not computed yet (transparent), never 0, which would read as "no gradient".
        self.map = MapAccumulator("saliency", region, (cell, cell), map_hw, channels=(), fill=math.nan, clip=False,
                                  classes=classes, emit=emit)
        self.sink = InputGradientSink(self.add, reduce=cell)
        self.keep = None  # with regions: the saliency cells inside their area
        if area is not None:
            self.keep = area.cells_inside(MapGeometry(self.map.map_l0_box, map_hw))

    def add(self, reg) -> None:
        r0, r1, c0, c1 = reg.cells
        values = reg.values[0].abs().amax(dim=0).float().cpu().numpy()
        if self.keep is not None:
            values[~self.keep[r0:r1, c0:c1]] = math.nan
        self.map.put(values, (r0, r1), (c0, c1))


class HeadEvaluator:
    """The conventional head on the streamed trunk's map: slide-level logits, per-cell class
    probabilities, and the gradient of a logit with respect to the pooled features."""

    def __init__(self, head):
        self.head = head
        # Per-block prediction patches are exact only when the head has no spatial stages left.
        self.live_cells = len(list(head.stages.children())) == 0

    def cell_probabilities(self, fmap: torch.Tensor) -> np.ndarray:
        """(classes, h, w) float32 probabilities of the head's cells on (part of) the map."""
        with torch.no_grad():
            probs = torch.softmax(self.head.forward_cells(fmap.detach().float()), dim=1)[0]
        return probs.cpu().numpy().astype(np.float32)

    def logits(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap.float())

    def pooled_logits(self, reducer: GlobalPoolReducer) -> torch.Tensor:
        return self.head.classify(reducer.pooled().float())

    def pooled_logit_grad(self, target: int) -> torch.Tensor:
        """d logit[target] / d pooled features: the classifier's row, (1, C)."""
        return self.head.fc.weight[target].detach().float()[None, :]


class InferenceRun:
    """One run over a region: the streamed forward, the slide-level prediction and the saliency
    backward, feeding the maps. :meth:`run` returns whether it was cancelled; what was finished
    stays in :attr:`prediction` and :meth:`layers` either way."""

    def __init__(self, spec: InferenceSpec, stream: StreamingModule, head: HeadEvaluator, region: LevelRegion,
                 classes: tuple[str, ...], emit: EventCallback, cancel: CancelToken, device: torch.device,
                 area: RunArea | None = None):
        self.spec, self.stream, self.head, self.region = spec, stream, head, region
        self.classes, self.emit, self.device, self.area = classes, emit, device, area
        self.out_hw = stream.output_size((region.lv_h, region.lv_w))
        self.cell = stream.stride  # level pixels per trunk output cell (rows, cols)
        self.keep: np.ndarray | None = None  # with regions: the trunk's output cells inside their area
        if area is not None:
            grid = MapGeometry(region.cells_to_l0((0, self.out_hw[0]), (0, self.out_hw[1]), self.cell), self.out_hw)
            self.keep = area.cells_inside(grid)
            if not self.keep.any():
                raise SpecError("the regions hold no whole output cell of the model (each is "
                                f"{self.cell[1] * region.downsample:g} x {self.cell[0] * region.downsample:g} level-0 px)")
        self.reducer = GlobalPoolReducer(head.head.pool) if head.live_cells else None
        self.prediction: Prediction | None = None
        self.prediction_map: MapAccumulator | None = None  # made by the first prediction patch
        self.saliency: SaliencyMap | None = None
        priority = None
        if spec.priority_l0_box is not None:
            priority = region.l0_to_cells(*spec.priority_l0_box.center, self.cell)
        self.hooks = StreamHooks(progress=ProgressClock(emit), should_stop=lambda: cancel.cancelled,
                                 on_block=self._on_block if head.live_cells else None, priority=priority,
                                 release_every=1 if spec.low_memory else 0,
                                 skip_block=self._outside if self.keep is not None else None)

    def layers(self) -> dict[str, MapLayer]:
        maps = [self.saliency.map] if self.saliency is not None else []
        if self.prediction_map is not None:
            maps.append(self.prediction_map)
        return {m.layer: m.map_layer() for m in maps}

    def run(self, source: SlideRegionSource) -> bool:
        try:
            if self.spec.saliency:
                self.saliency = SaliencyMap(self.region, int(self.spec.saliency_cell), self.classes, self.emit,
                                            self.area)
            logits, fmap = self._forward(source)
            probs = torch.softmax(logits.float(), dim=1)[0]
            if fmap is not None:
                self._cells_prediction(fmap)
            self.prediction = Prediction(self.classes, tuple(float(v) for v in probs.detach().cpu()))
            self.emit(self.prediction)
            if self.saliency is not None:
                target = self.spec.saliency_class if self.spec.saliency_class is not None else int(probs.argmax())
                self._saliency_backward(source, logits, target)
        except Cancelled:
            return True
        return False

    def _forward(self, source) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Slide-level logits, and the trunk's whole map unless it was pooled block by block."""
        with _autocast(self.device):
            if self.head.live_cells:
                self.stream.forward_blocks(source, hooks=self.hooks)
                return self.head.pooled_logits(self.reducer), None
            sink = self.saliency.sink if self.saliency is not None else None
            fmap = self.stream(source, input_grad_sink=sink, hooks=self.hooks)
            return self.head.logits(fmap), fmap

    def _saliency_backward(self, source, logits: torch.Tensor, target: int) -> None:
        if self.head.live_cells:
            grad_pooled = self.head.pooled_logit_grad(target)
            grad_for_block = self.reducer.grad_for_block(grad_pooled)
            if self.keep is not None:
                grad_for_block = _kept_only(grad_for_block, self.keep)
            with _autocast(self.device):
                # The reducer turns the pooled features' gradient into the map's, block by block.
                self.stream.backward_from(source, grad_for_block, input_grad_sink=self.saliency.sink, hooks=self.hooks)
        else:
            logits[0, target].backward()

    def _on_block(self, rows: tuple[int, int], cols: tuple[int, int], fmap_block: torch.Tensor) -> None:
        if self.keep is None:
            self.reducer.add(rows, cols, fmap_block)
            self._prediction_patch(self.head.cell_probabilities(fmap_block), rows, cols, self.out_hw, self.cell)
            return
        keep = self.keep[rows[0]:rows[1], cols[0]:cols[1]]
        kept = torch.from_numpy(keep).to(fmap_block.device)
        # Cells outside the area must not reach the pool: below any maximum, or 0 and uncounted in a mean.
        fill = -math.inf if self.reducer.pool == "max" else 0.0
        self.reducer.add(rows, cols, torch.where(kept, fmap_block, torch.full_like(fmap_block, fill)))
        if self.reducer.pool == "avg":
            self.reducer.cells -= int(keep.size - keep.sum())
        probs = self.head.cell_probabilities(fmap_block)
        probs[:, ~keep] = math.nan
        self._prediction_patch(probs, rows, cols, self.out_hw, self.cell)

    def _outside(self, rows: tuple[int, int], cols: tuple[int, int]) -> bool:
        return not self.keep[rows[0]:rows[1], cols[0]:cols[1]].any()

    def _cells_prediction(self, fmap: torch.Tensor) -> None:
        """The prediction map of a head with spatial stages: one patch, at the head's cells, each a
        whole number of trunk cells."""
        cells = self.head.cell_probabilities(fmap)
        map_hw = tuple(cells.shape[1:])
        head_cell = (self.cell[0] * round(self.out_hw[0] / map_hw[0]), self.cell[1] * round(self.out_hw[1] / map_hw[1]))
        self._prediction_patch(cells, (0, map_hw[0]), (0, map_hw[1]), map_hw, head_cell)

    def _prediction_patch(self, values, rows, cols, map_hw, cell_hw) -> None:
        if self.prediction_map is None:
            # The trunk's last cells reach past the region (padding); the map ends at the region.
            self.prediction_map = MapAccumulator("prediction", self.region, cell_hw, map_hw, channels=(len(self.classes),),
                                                 fill=math.nan, clip=True, classes=self.classes, emit=self.emit)
        self.prediction_map.put(values, rows, cols)


def _kept_only(grad_for_block, keep: np.ndarray):
    """A block-gradient callable zero on the output cells outside ``keep`` (which the pool left
    out): a block with no kept cell then gets None, so the backward pass skips it."""
    kept = torch.from_numpy(keep)

    def grad(rows, cols, values=None):
        g = grad_for_block(rows, cols) if values is None else grad_for_block(rows, cols, values=values)
        if g is None:
            return None
        mask = kept[rows[0]:rows[1], cols[0]:cols[1]].to(g.device)
        return torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device))

    grad.needs_values = getattr(grad_for_block, "needs_values", False)
    return grad


def _autocast(device: torch.device):
    """Mixed precision on GPU (bf16 where supported, else fp16); full precision on CPU."""
    if device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
