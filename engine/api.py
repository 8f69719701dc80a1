"""The engine's front door: the viewer and the CLI run jobs only through these functions.

Each job takes a frozen spec, an ``on_event`` callback and a :class:`~engine.events.CancelToken`,
runs on the caller's thread (the viewer calls it from a worker), and reports through events.
torch is imported inside the functions, so importing this module stays cheap for the GUI.
"""

from __future__ import annotations

import time
import numpy as np

from engine.errors import Cancelled, CheckpointError
from engine.events import CancelToken, EventCallback, Finished, MapPatch, Prediction, Progress
from engine.specs import InferenceSpec, TrainingSpec
from engine.io.maps import MapLayer
from engine.io.maps import write_maps as _write_maps


def read_model_card(path):
    """The model card of a checkpoint (JSON only; no weights are read)."""
    from engine.io.checkpoints import read_model_card as _read

    return _read(path)


def check_model(path):
    """Load a checkpoint once as a job would (the weights against the card's sha256, their keys
    and shapes against its architecture) and return its card. Raises
    :class:`~engine.errors.CheckpointError` naming the file. Imports torch."""
    from engine.io.checkpoints import load_checkpoint

    _, card = load_checkpoint(path)
    return card


def run_saliency(spec: InferenceSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """:func:`run_inference` with the saliency map (the streamed input gradient) always on."""
    import dataclasses

    return run_inference(dataclasses.replace(spec, saliency=True), on_event, cancel)


def list_models() -> list[str]:
    """The registered architectures' names (imports torch)."""
    from engine.models import list_models as _list

    return _list()


def read_labels(path, classes=None):
    """A labels CSV or class-folder tree as an ``engine.train.data.LabelSet`` (torch-free)."""
    from engine.train.data import read_labels as _read

    return _read(path, classes)


def read_maps(path):
    """A ``maps.npz`` written by a job: ``({layer: MapLayer}, metadata)`` (torch-free)."""
    from engine.io.maps import read_maps as _read

    return _read(path)


def write_maps(out_dir, layers, **kwargs):
    """Write float maps (``{layer: MapLayer}``) and their rendered TIFFs into ``out_dir``; see
    :func:`engine.io.maps.write_maps`. Returns ``{kind: path}``."""
    from engine.io.maps import write_maps as _write

    return _write(out_dir, layers, **kwargs)


def demo_model_dir():
    """The bundled demo model's folder (``resources/demo_model``)."""
    from engine.demo.data import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR


def demo_cache_dir():
    """Where demo slides are cached (``$STREAMSLIDE_CACHE/demo-slides`` or ``~/.cache/...``)."""
    from engine.demo.data import default_cache_dir

    return default_cache_dir()


def ensure_demo_slides(root=None, slides=None, progress=None, *, labels: bool = True):
    """Generate the demo slides that are missing or stale under ``root``; see
    :func:`engine.demo.data.ensure_demo_slides`. Returns the folder."""
    from engine.demo.data import ensure_demo_slides as _ensure

    return _ensure(root, slides, progress, labels=labels)


def showcase_slide():
    """The demo's positive test slide (a ``DemoSlide``; its file is ``root / slide.filename``)."""
    from engine.demo.data import showcase_slide as _showcase

    return _showcase()


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but this torch build or machine has no CUDA; use cpu")
    return device


class _Clock:
    """Turns the streaming module's per-tile callbacks into Progress events with an ETA.

    The ETA is linear in tiles within a phase; the streamed backward (the saliency phase) is
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


def run_inference(spec: InferenceSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """Stream a model over a slide region; emit prediction and saliency maps as tiles finish.

    Raises :class:`~engine.errors.SlideError` for a bad slide and
    :class:`~engine.errors.CheckpointError` for a bad model; after a cancel it returns
    ``Finished(cancelled=True)`` holding what was finished (and writes it when ``out_dir`` is set).
    """
    import torch

    from engine.io.checkpoints import load_checkpoint
    from engine.models.fold import fold_batchnorm
    from engine.slides.region import SlideRegionSource, choose_level, level_region, tissue_box
    from engine.slides import open_slide
    from engine.streaming import InputGradientSink, StreamingModule
    from engine.streaming.pooled import GlobalPoolReducer

    cancel = cancel or CancelToken()
    device = resolve_device(spec.device)
    model, card = load_checkpoint(spec.model_path, device=str(device))
    classes = tuple(card.classes)
    for p in model.parameters():
        p.requires_grad_(False)  # saliency needs the input gradient only
    # Nothing is trained here, so the trunk's frozen BatchNorms fold into its convolutions (one
    # pass over each activation fewer; the input gradient is the same function's).
    trunk, head = fold_batchnorm(model.trunk()), model.head()

    with open_slide(spec.slide_path) as slide:
        level = choose_level(slide, level=spec.level, mpp=spec.mpp or card.input_mpp, fallback_level=card.input_level)
        l0_box = spec.l0_region or tissue_box(slide)
        region = level_region(slide, level, l0_box)
        source = SlideRegionSource(slide, region, card.normalization_mean, card.normalization_std)

        clock = _Clock(on_event)
        layers: dict[str, np.ndarray] = {}
        boxes: dict[str, tuple] = {}
        # Per-block prediction patches are exact only when the head has no spatial stages left.
        # Then the head is pool + linear, and the trunk's map is reduced block by block instead
        # of being held (engine.streaming.pooled): memory stays flat with the slide's size.
        live_cells = len(list(head.stages.children())) == 0
        reducer = GlobalPoolReducer(head.pool) if live_cells else None
        stream = StreamingModule(trunk, spec.tile_size or card.tile_size, freeze_batchnorm=True,
                                 progress=clock, should_stop=lambda: cancel.cancelled)
        stream.release_every = 1 if spec.low_memory else 0
        out_hw = stream.output_size((region.lv_h, region.lv_w))
        cell = stream.stride  # level pixels per trunk output cell (rows, cols)

        def cells_box(rows, cols, cell_hw):
            return region.lv_to_l0_box(cols[0] * cell_hw[1], rows[0] * cell_hw[0],
                                       min(cols[1] * cell_hw[1], region.lv_w), min(rows[1] * cell_hw[0], region.lv_h))

        def prediction_patch(values, rows, cols, map_hw, cell_hw):
            full = (0, map_hw[0]), (0, map_hw[1])
            if "prediction" not in layers:
                layers["prediction"] = np.full((len(classes), *map_hw), np.nan, np.float32)
                boxes["prediction"] = cells_box(*full, cell_hw)
            layers["prediction"][:, rows[0]:rows[1], cols[0]:cols[1]] = values
            on_event(MapPatch("prediction", cells_box(rows, cols, cell_hw), values, (rows[0], cols[0]), map_hw,
                              boxes["prediction"], classes))

        def on_block(rows, cols, fmap_block):
            if live_cells:
                reducer.add(rows, cols, fmap_block)
                with torch.no_grad():
                    probs = torch.softmax(head.forward_cells(fmap_block.float()), dim=1)[0]
                prediction_patch(probs.cpu().numpy().astype(np.float32), rows, cols, out_hw, cell)

        stream.on_block = on_block
        if spec.priority_l0_box is not None:
            px0, py0, px1, py1 = spec.priority_l0_box
            ds = region.downsample
            stream.forward_priority = (((py0 + py1) / 2 / ds - region.lv_y0) / cell[0],
                                       ((px0 + px1) / 2 / ds - region.lv_x0) / cell[1])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) \
            if device.type == "cuda" else _null()
        prediction = None
        cancelled = False
        f = max(1, int(spec.saliency_cell))
        sal_hw = (-(-region.lv_h // f), -(-region.lv_w // f))
        try:
            sink = None
            if spec.saliency:
                layers["saliency"] = np.zeros(sal_hw, np.float32)
                boxes["saliency"] = region.lv_to_l0_box(0, 0, sal_hw[1] * f, sal_hw[0] * f)

                def on_gradient(reg):
                    r0, r1, c0, c1 = reg.cells
                    # Magnitude of the mean gradient per cell, strongest channel: where the score is sensitive.
                    values = reg.values[0].abs().amax(dim=0).float().cpu().numpy()
                    layers["saliency"][r0:r1, c0:c1] = values
                    on_event(MapPatch("saliency", region.lv_to_l0_box(c0 * f, r0 * f, c1 * f, r1 * f), values,
                                      (r0, c0), sal_hw, boxes["saliency"], classes))

                sink = InputGradientSink(on_gradient, reduce=f)
            with autocast:
                if live_cells:
                    stream.forward_blocks(source)
                    logits = head.classify(reducer.pooled().float())
                else:
                    fmap = stream(source, input_grad_sink=sink)
                    logits = head(fmap.float())
            probs = torch.softmax(logits.float(), dim=1)[0]
            if not live_cells:
                with torch.no_grad():
                    cells = torch.softmax(head.forward_cells(fmap.detach().float()), dim=1)[0].cpu().numpy()
                head_cell = (cell[0] * round(out_hw[0] / cells.shape[1]), cell[1] * round(out_hw[1] / cells.shape[2]))
                prediction_patch(cells.astype(np.float32), (0, cells.shape[1]), (0, cells.shape[2]),
                                 tuple(cells.shape[1:]), head_cell)
            prediction = Prediction(classes, tuple(float(v) for v in probs.detach().cpu()))
            on_event(prediction)
            if spec.saliency:
                target = spec.saliency_class if spec.saliency_class is not None else int(probs.argmax())
                if not 0 <= target < len(classes):
                    raise CheckpointError(f"saliency class {target} does not exist; the model has {len(classes)} classes")
                if live_cells:
                    # d logit[target] / d pooled is the classifier's row; the reducer turns it
                    # into the map's gradient block by block.
                    grad_pooled = head.fc.weight[target].detach().float()[None, :]
                    with autocast:
                        stream.backward_from(source, reducer.grad_for_block(grad_pooled), input_grad_sink=sink)
                else:
                    logits[0, target].backward()
        except Cancelled:
            cancelled = True

        outputs = {}
        if spec.out_dir:
            extra = {"model": str(spec.model_path), "level": level, "region_l0": list(region.l0_box),
                     "cancelled": cancelled}
            mpp = slide.mpp[0] if slide.mpp else None
            outputs = _write_maps(spec.out_dir, {k: MapLayer(v, boxes[k]) for k, v in layers.items()},
                                 slide_path=spec.slide_path, classes=classes, prediction=prediction,
                                 slide_mpp=mpp, extra=extra)
    done = Finished(cancelled, outputs, prediction)
    on_event(done)
    return done


def run_training(spec: TrainingSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """Train (fine-tune) a classifier on whole slides with slide-level labels, the trunk streamed.

    Emits :class:`~engine.events.Progress` (phase "train": optimiser steps of the epoch; "val": slides),
    :class:`~engine.events.Metrics` per optimiser step and per validation,
    :class:`~engine.events.CheckpointSaved` and :class:`~engine.events.StepSkipped`; returns (and
    emits) ``Finished`` whose ``outputs`` name the ``last`` and ``best`` checkpoints and the
    metrics log. A cancel saves ``last`` at the next step (or tile) and returns
    ``Finished(cancelled=True)``. Under ``torchrun`` the same call trains with DDP (slides
    sharded across ranks, only rank 0 writes and emits). Raises
    :class:`~engine.errors.LabelsError`, :class:`~engine.errors.SlideError`,
    :class:`~engine.errors.CheckpointError` or :class:`~engine.errors.TrainingError`.
    """
    from engine.train.loop import Trainer

    return Trainer(spec, on_event, cancel or CancelToken()).run()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

