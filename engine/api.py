"""The engine's front door: the viewer and the CLI run jobs only through these functions.

Each job takes a frozen spec, an ``on_event`` callback and a :class:`~engine.events.CancelToken`,
runs on the caller's thread (the viewer calls it from a worker), and reports through events.
torch is imported inside the functions, so importing this module stays cheap for the GUI.
"""

from __future__ import annotations

import dataclasses

from engine.events import CancelToken, EventCallback, Finished
from engine.io.maps import MapLayer
from engine.io.runs import Curves, RunSummary
from engine.specs import EvaluationSpec, InferenceSpec, TrainingSpec

__all__ = ["MapLayer", "check_model", "demo_cache_dir", "demo_model_dir", "ensure_demo_slides", "evaluate", "list_models",
           "plan_training", "read_labels", "read_maps", "read_model_card", "run_inference", "run_saliency", "run_training",
           "score_maps", "showcase_slide", "write_maps"]


# -- jobs (they import torch)

def run_inference(spec: InferenceSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """Stream a model over a slide region; emit prediction and saliency maps as tiles finish.

    Raises :class:`~engine.errors.SpecError` for a spec the model cannot serve (a saliency class
    it lacks), :class:`~engine.errors.SlideError` for a bad slide and
    :class:`~engine.errors.CheckpointError` for a bad model; after a cancel it returns
    ``Finished(cancelled=True)`` holding what was finished (and writes it when ``out_dir`` is set).
    Imports torch (see :mod:`engine.infer`).
    """
    from engine.infer import run_inference as _run

    return _run(spec, on_event, cancel)


def run_saliency(spec: InferenceSpec, on_event: EventCallback, cancel: CancelToken | None = None) -> Finished:
    """:func:`run_inference` with the saliency map (the streamed input gradient) always on."""
    return run_inference(dataclasses.replace(spec, saliency=True), on_event, cancel)


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
    With ``spec.folds`` > 1, one run per cross-validation fold (``out_dir/fold-<k>``) and a
    summary, ``out_dir/folds.json`` (:mod:`engine.train.folds`).
    """
    from engine.train.folds import train

    return train(spec, on_event, cancel or CancelToken())


def evaluate(spec: EvaluationSpec, on_event: EventCallback, cancel: CancelToken | None = None):
    """A model on every slide of a labels CSV: ``predictions.csv``, ``metrics.json`` (with 95%
    bootstrap intervals, per patient too) and ``plot.svg`` in ``spec.out_dir``; returns an
    :class:`engine.evaluate.run.EvaluationResult` (metrics, table, failed slides)."""
    from engine.evaluate.run import evaluate as _evaluate

    return _evaluate(spec, on_event, cancel or CancelToken())


def plan_training(spec: TrainingSpec, in_hw: tuple[int, int] | None = None) -> dict:
    """What a streamed training step of ``spec`` will do, before it runs: ``tile``, ``blocks``,
    ``kept`` / ``recomputed`` (the graph budget's choice), ``graph_budget`` (bytes, "auto"
    resolved), ``estimated_peak_bytes``, ``in_hw`` (default: the largest slide's input, read from
    the slides' headers). Imports torch (see :mod:`engine.train.plan`)."""
    from engine.train.plan import plan_training as _plan

    return _plan(spec, in_hw)


# -- models, labels and results

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


def list_models() -> list[str]:
    """The registered architectures' names (imports torch)."""
    from engine.models import list_models as _list

    return _list()


def read_labels(path, classes=None, *, task="classification", targets=None):
    """A labels CSV or class-folder tree as an ``engine.io.labels.LabelSet`` (torch-free); its
    ``warnings`` say what was merged (labels differing only in case or spaces)."""
    from engine.io.labels import read_labels as _read

    return _read(path, classes, task=task, targets=targets)


def read_maps(path):
    """A ``maps.npz`` written by a job: ``({layer: MapLayer}, metadata)`` (torch-free)."""
    from engine.io.maps import read_maps as _read

    return _read(path)


def write_maps(out_dir, layers, **kwargs):
    """Write float maps (``{layer: MapLayer}``) and their rendered TIFFs into ``out_dir``; see
    :func:`engine.io.maps.write_maps`. Returns ``{kind: path}``."""
    from engine.io.maps import write_maps as _write

    return _write(out_dir, layers, **kwargs)


def score_maps(maps, annotations, class_name=None, **kwargs):
    """How much of a map (``layer``, default "saliency") falls inside the ``class_name`` outlines
    of an annotation file or set: ``mass_inside``, ``even_share``, ``pixel_auc`` and the cell
    counts (torch-free); see :func:`engine.annotations.score.score_maps`."""
    from engine.annotations.score import score_maps as _score

    return _score(maps, annotations, class_name, **kwargs)


# -- the demo

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


# -- run folders, labels and checkpoint files (torch-free; the viewer calls these on workers)

def list_runs(folder):
    """Every training run directly inside ``folder`` (``engine.io.runs.RunSummary``), newest first."""
    from engine.io.runs import list_runs as _list

    return _list(folder)


def read_run_curves(run_dir):
    """A run's curves (``engine.io.runs.Curves``: train and val rows of ``metrics.jsonl``)."""
    from engine.io.runs import RunFolder

    return RunFolder(run_dir).read_metrics()


def label_columns(path):
    """The target columns of a labels CSV (header only, torch-free): what a form offers as targets."""
    from engine.io.labels import label_columns as _columns

    return _columns(path)


def read_evaluation(out_dir):
    """An evaluation folder read back (torch-free): its predictions, metrics, ROC curves and the
    kept maps of each slide (``engine.evaluate.results.EvaluationFiles``)."""
    from engine.evaluate.results import read_evaluation as _read

    return _read(out_dir)


def write_labels_csv(path, rows):
    """Write a labels CSV (``slide,label[,split]``, slides relative to the file) atomically."""
    from engine.io.labels import write_labels_csv as _write

    return _write(path, rows)


def checkpoint_weights(path):
    """The ``model.safetensors`` of a checkpoint given as its folder, card or weights file."""
    from engine.io.checkpoints import weights_path

    return weights_path(path)


def write_file(path, data: bytes):
    """Write ``data`` to ``path`` through the engine's one atomic writer (temporary file, fsync,
    rename; 0644-style permissions). Raises :class:`~engine.errors.ResultsError` naming the file
    and the cause (disk full, read-only, not a folder), with nothing half-written left."""
    from engine.io.atomic import write_bytes

    return write_bytes(path, data)


def warm_up() -> None:
    """Import what the first job needs (torch, the streaming engine, the trainer), without
    running anything: the viewer calls it on a worker at start so a job's first event is not
    late by the imports, and so no import happens on the UI thread later."""
    import engine.infer  # noqa: F401
    import engine.train.loop  # noqa: F401  (torch.distributed, the optimisers, the data reader)

    # torch.optim's constructors import torch._dynamo (and sympy) on first use: ~120,000
    # objects and about a second, which would otherwise land in a viewer's first collections.
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 (e.g. a Python dynamo does not support): only the head start is lost
        pass


__all__ += ["Curves", "RunSummary", "checkpoint_weights", "write_file", "list_runs", "read_run_curves", "warm_up", "write_labels_csv",
            "label_columns", "read_evaluation"]
