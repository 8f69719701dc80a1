"""Frozen job specs: what to run, decided on the caller's thread and never changed after.

Every box is an :class:`~engine.geometry.Box` in the slide's level-0 pixel plane, half-open.
One place decides every default: the field defaults below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.devices import DEVICES, check_device_name
from engine.errors import SpecError
from engine.geometry import Box
from engine.head_arguments import HEADS, head_arguments

__all__ = ["DEVICES", "GRAPH_BUDGET_AUTO_SHARE", "HEADS", "POOLS", "TISSUE_MASKS", "EvaluationSpec", "InferenceSpec",
           "TrainingSpec", "parse_bytes"]

#: The global pools a classifier head may end in (a spec's ``pool``, a model card's): max or mean.
POOLS = ("max", "avg")
#: Where a slide's pooled cells come from: its detected tissue ("auto") or every cell ("none").
TISSUE_MASKS = ("auto", "none")


def _check_tissue_mask(value, *, optional: bool) -> None:
    if value is None and optional:
        return
    if value not in TISSUE_MASKS:
        raise SpecError(f"tissue_mask '{value}' is not one of {', '.join(TISSUE_MASKS)}"
                        + (" (or None: as the model card says)" if optional else ""))


def _check_tissue_params(value: dict) -> None:
    from engine.slides.tissue import TissueParams

    try:
        TissueParams(**dict(value))
    except TypeError as exc:
        raise SpecError(f"tissue_params: {exc}") from None


@dataclass(frozen=True)
class InferenceSpec:
    """What to run: one model over one slide (a region of it, or its tissue bounding box).

    ``level``/``mpp`` choose the pyramid level read (default: the model card's input MPP, else its
    level, else 0). ``tile_size`` defaults to the model card's. ``device`` is one of
    :data:`DEVICES` (from :mod:`engine.devices`): "auto" (CUDA when available), "cpu", "cuda", or "cuda:N"
    (under ``torchrun``, "auto" and "cuda" take the local rank's GPU).
    With ``saliency``, the input gradient of the class score (``saliency_class``, default the
    predicted class) is streamed and averaged over ``saliency_cell`` x ``saliency_cell`` input
    pixels. With ``out_dir``, results are written there. ``priority_l0_box`` makes the
    prediction map start where the user is looking. ``low_memory`` gives freed memory back to
    the OS after every tile (CPU): peak memory then stays flat with the slide's size, at about
    20% more time (see StreamHooks.release_every).

    With ``regions``, the job covers the union of the areas of the ``include_classes``
    annotations (none named: all) less those of the ``exclude_classes``, exactly: the bounding box
    of that area (within ``l0_region`` when given) is read, blocks whose output cells all lie
    outside it are skipped, and map cells whose centre lies outside it are NaN and left out of
    the slide-level pool (see :mod:`engine.infer`). When no annotation is left to include (no
    ``include_classes``, and every annotation with an area is of an ``exclude_classes`` class),
    the job covers its usual region (``l0_region``, else the tissue box) less the excluded areas.

    Boxes may be given as ``(x0, y0, x1, y1)``; they are stored as :class:`~engine.geometry.Box`.
    A spec that cannot run raises :class:`~engine.errors.SpecError` when it is made.
    """

    slide_path: str
    model_path: str
    l0_region: Box | None = None
    level: int | None = None
    mpp: float | None = None
    tile_size: int | None = None
    device: str = "auto"
    saliency: bool = True
    saliency_class: int | None = None
    saliency_cell: int = 8
    out_dir: str | None = None
    #: Level-0 box to compute first (e.g. the view on screen); the rest of the region follows.
    priority_l0_box: Box | None = None
    low_memory: bool = False
    #: Run inside annotated regions: an annotation file (GeoJSON / ASAP XML) or an
    #: ``engine.annotations.AnnotationSet``; see the class notes.
    regions: object = None
    include_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = ()
    #: Pool (and compute) only the slide's tissue: "auto", "none", or None (as the model card says).
    tissue_mask: str | None = None

    def __post_init__(self) -> None:
        _check_tissue_mask(self.tissue_mask, optional=True)
        for name in ("l0_region", "priority_l0_box"):
            object.__setattr__(self, name, _optional_box(name, getattr(self, name)))
        check_device_name(self.device)
        for name in ("include_classes", "exclude_classes"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.regions is None and (self.include_classes or self.exclude_classes):
            raise SpecError("include_classes and exclude_classes name classes of the regions; give regions too")
        if self.tile_size is not None and self.tile_size < 1:
            raise SpecError(f"tile_size must be a positive number of input pixels (or None: the model's), "
                            f"got {self.tile_size}")
        if self.saliency_cell < 1:
            raise SpecError(f"saliency_cell must be at least 1 input pixel, got {self.saliency_cell}")
        if self.saliency_class is not None and self.saliency_class < 0:
            raise SpecError(f"saliency_class must be a class index (0 or more) or None (the predicted class), "
                            f"got {self.saliency_class}")


def _optional_box(name: str, value) -> Box | None:
    if value is None:
        return None
    try:
        return Box.of(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{name} must be a box (x0, y0, x1, y1) in level-0 pixels, got {value!r}") from exc


@dataclass(frozen=True)
class TrainingSpec:
    """What to train: a labelled slide set, a model, and how (one place decides every default).

    Data: ``labels`` is a CSV ``slide,label[,split]`` (paths relative to it) or a folder per class;
    slides without a split go to validation with probability ``val_fraction`` (stratified, seeded).
    Each slide is read at ``level`` or the level nearest ``mpp`` (µm/px), cropped to its tissue
    box when ``tissue_crop``, and padded or cropped to ``input_size`` x ``input_size`` level pixels
    (None: its own size). ``augment`` draws flips, 90° rotations and per-channel colour gains and
    offsets of at most ``colour_jitter`` (on RGB in [0, 1]).
    Model: ``model`` is a registered architecture split after stage ``split`` (None: its default)
    into a streamed trunk (``tile_size`` input pixels per tile; ``streaming=False`` runs it
    conventionally) and a conventional head; ``pretrained`` is a state-dict file (torchvision /
    timm names) loaded before training. BatchNorm in the trunk is frozen (running statistics).
    Optimisation: ``optimizer`` "sgd" or "adamw"; ``schedule`` "cosine" or "constant" after
    ``warmup_steps`` linear warm-up steps; one optimiser step per ``accumulate`` slides (per rank);
    ``class_weights`` None, "balanced", or one weight per class.
    Numerics: ``dtype`` "float32" or "float64" (exactness checks); on GPU ``mixed_precision``
    (bf16, else fp16 with loss scaling); ``channels_last`` (NHWC) tiles on every device;
    ``low_memory`` gives freed memory back to the OS after every tile (CPU): peak memory then stays
    flat with the slide's size, at about 20% more time (see StreamingModule.release_every).
    From scratch (no ``pretrained``, nothing resumed), BatchNorm statistics are first estimated
    from centred crops of the first ``calibrate_norms`` training slides (0: keep PyTorch's initial mean 0 / variance 1, which fit no layer once frozen).
    Run: ``out_dir`` receives ``last/`` and ``best/`` (chosen by validation ``monitor``: "auc",
    "accuracy" or "loss"), ``metrics.jsonl`` and ``spec.json``; ``resume`` continues from
    ``out_dir/last`` (the spec may change only the epochs, the learning rate and how the run is
    run: see ``engine.train.checkpointer.RESUME_MAY_CHANGE``); a folder holding another run is
    refused unless ``resume`` or ``overwrite`` (its run files are removed first); ``checkpoint_every`` also saves ``last`` every N optimiser steps (0: at epoch
    ends only); ``max_nonfinite`` consecutive skipped steps stop the run.
    Task: ``task`` "classification" (one label column of class names, cross-entropy),
    "multilabel" (several 0/1 columns, sigmoid + binary cross-entropy) or "regression" (numeric
    columns standardised from the training split; ``loss`` "mse" or "huber"); ``targets`` names the
    target columns (None: every column but slide, split and patient). ``monitor`` also takes
    "macro_auc" (classification, multilabel) and "spearman", "pearson", "mae", "r2" (regression).
    ``folds`` > 1 runs that many cross-validation folds (patients never straddle train and test),
    one run folder ``out_dir/fold-<k>`` each, and a summary across them.
    ``graph_budget``: bytes a streamed training step may keep of its blocks' forward graphs so
    backward recomputes only the rest (exact either way; see engine.streaming.keep); "auto":
    :data:`GRAPH_BUDGET_AUTO_SHARE` of the device's free memory when the run starts; None: every
    block recomputed.
    Head: ``head`` one of :data:`HEADS` (None: ``pool``, "max" or "avg"; giving "max" or "avg"
    here sets ``pool`` too), ``head_kwargs`` its arguments (GeM ``p``, ``eps``; attention ``hidden``;
    see :mod:`engine.head_arguments`). ``tissue_mask`` "auto": each slide's tissue (``tissue_params``, the
    fields of :class:`engine.slides.tissue.TissueParams`) on the trunk's output grid; cells outside
    take no part in the pool or the attention, and blocks without tissue are not computed; "none":
    every cell. A labels CSV ``annotations`` column (an annotation file per slide) makes that
    slide's mask the area of its ``include_classes`` annotations (none named: all) less its
    ``exclude_classes``.
    Staged training: the first ``freeze_trunk_epochs`` epochs train the head on the frozen trunk
    (its maps cached in the run folder when ``augment`` is off); then the trunk is unfrozen, with
    learning rate ``finetune_lr`` and tile ``finetune_tile`` when given (None: ``lr``, ``tile_size``).
    """

    labels: str
    out_dir: str
    model: str = "resnet34"
    split: str | None = None
    pool: str = "max"
    model_kwargs: dict = field(default_factory=dict)
    pretrained: str | None = None
    classes: tuple[str, ...] | None = None
    level: int | None = None
    mpp: float | None = None
    input_size: int | None = None
    tissue_crop: bool = True
    normalization_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    normalization_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    augment: bool = True
    colour_jitter: float = 0.05
    val_fraction: float = 0.2
    streaming: bool = True
    tile_size: int = 1024
    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    accumulate: int = 1
    class_weights: str | tuple[float, ...] | None = None
    device: str = "auto"
    dtype: str = "float32"
    mixed_precision: bool = True
    channels_last: bool = True
    low_memory: bool = False
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 0
    monitor: str = "auc"
    max_nonfinite: int = 3
    prefetch: int = 2
    calibrate_norms: int = 4
    task: str = "classification"
    targets: tuple[str, ...] | None = None
    loss: str = "mse"
    folds: int = 1
    graph_budget: int | str | None = None
    head: str | None = None
    head_kwargs: dict = field(default_factory=dict)
    tissue_mask: str = "auto"
    tissue_params: dict = field(default_factory=dict)
    include_classes: tuple[str, ...] = ()
    exclude_classes: tuple[str, ...] = ()
    freeze_trunk_epochs: int = 0
    finetune_lr: float | None = None
    finetune_tile: int | None = None

    # The choices of the fields that name one (not dataclass fields: no annotation). The CLI's
    # argument choices and the trainer read them from here.
    OPTIMIZERS = ("sgd", "adamw")
    SCHEDULES = ("cosine", "constant")
    MONITORS = ("auc", "accuracy", "loss", "spearman", "pearson", "mae", "r2", "macro_auc")
    MONITORS_LOWER_IS_BETTER = ("loss", "mae")
    DTYPES = ("float32", "float64")
    TASKS = ("classification", "multilabel", "regression")
    LOSSES = ("mse", "huber")
    #: The monitors each task's validation reports.
    TASK_MONITORS = {"classification": ("auc", "accuracy", "loss", "macro_auc"),
                     "multilabel": ("auc", "accuracy", "loss", "macro_auc"),
                     "regression": ("loss", "spearman", "pearson", "mae", "r2")}

    def __post_init__(self) -> None:
        """Refuse a spec that cannot run, naming the field (:class:`~engine.errors.SpecError`).
        Only the values themselves are checked; files (labels, weights) are opened by the run."""
        for name, choices in (("optimizer", self.OPTIMIZERS), ("schedule", self.SCHEDULES),
                              ("monitor", self.MONITORS), ("dtype", self.DTYPES), ("task", self.TASKS),
                              ("loss", self.LOSSES)):
            if getattr(self, name) not in choices:
                raise SpecError(f"{name} '{getattr(self, name)}' is not one of {', '.join(choices)}")
        for name in ("epochs", "accumulate", "tile_size", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise SpecError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.resume and self.overwrite:
            raise SpecError("resume and overwrite exclude each other: continue the run in out_dir, or replace it")
        gb = self.graph_budget
        if gb is not None and gb != "auto" and (isinstance(gb, bool) or not isinstance(gb, int) or gb < 0):
            raise SpecError(f"graph_budget must be a number of bytes (0 or more), 'auto' or None, got {gb!r}")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise SpecError(f"class_weights must be None, 'balanced' or one number per class, "
                            f"got '{self.class_weights}'")
        if self.monitor not in self.TASK_MONITORS[self.task]:
            raise SpecError(f"monitor '{self.monitor}' does not apply to {self.task}; "
                            f"use one of {', '.join(self.TASK_MONITORS[self.task])}")
        if self.targets is not None:
            if isinstance(self.targets, str):
                object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip()))
            else:
                object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
                raise SpecError(f"targets must name at least one column, got {self.targets!r}")
            if self.task == "classification" and len(self.targets) != 1:
                raise SpecError(f"classification trains one label column, targets names {len(self.targets)}: "
                                f"{', '.join(self.targets)}; use task 'multilabel' or 'regression'")
        if self.task == "regression" and self.class_weights is not None:
            raise SpecError("class_weights apply to classification and multilabel, not regression")
        if self.task != "classification" and self.classes is not None:
            raise SpecError(f"classes apply to classification; for {self.task} name the columns with targets")
        if self.folds < 1:
            raise SpecError(f"folds must be at least 1, got {self.folds}")
        if self.folds > 1 and self.resume:
            raise SpecError("resume continues one run; resume a fold by training into its fold-<k> folder")
        if self.head is not None and self.head not in HEADS:
            raise SpecError(f"head '{self.head}' is not one of {', '.join(HEADS)}")
        if self.head in POOLS:
            object.__setattr__(self, "pool", self.head)
        try:
            head_arguments(self.head_name, self.head_kwargs)
        except ValueError as exc:
            raise SpecError(f"head_kwargs: {exc}") from None
        object.__setattr__(self, "head_kwargs", dict(self.head_kwargs))
        if self.pool not in POOLS:
            raise SpecError(f"pool '{self.pool}' is not one of {', '.join(POOLS)}")
        _check_tissue_mask(self.tissue_mask, optional=False)
        _check_tissue_params(self.tissue_params)
        object.__setattr__(self, "tissue_params", dict(self.tissue_params))
        for name in ("include_classes", "exclude_classes"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.freeze_trunk_epochs < 0:
            raise SpecError(f"freeze_trunk_epochs must be 0 or more, got {self.freeze_trunk_epochs}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise SpecError(f"finetune_lr must be a positive learning rate (or None: lr), got {self.finetune_lr}")
        if self.finetune_tile is not None and self.finetune_tile < 1:
            raise SpecError(f"finetune_tile must be at least 1 input pixel (or None: tile_size), got {self.finetune_tile}")
        if self.freeze_trunk_epochs == 0 and (self.finetune_lr is not None or self.finetune_tile is not None):
            raise SpecError("finetune_lr and finetune_tile apply once the trunk is unfrozen after "
                            "freeze_trunk_epochs head-only epochs; give freeze_trunk_epochs (--freeze-trunk-epochs K) "
                            "too, or use lr and tile_size")

    @property
    def head_name(self) -> str:
        """The head trained: ``head``, or ``pool`` when no head is named."""
        return self.head or self.pool

    def as_json(self) -> dict:
        """The spec as JSON values (tuples as lists), as a run folder's ``spec.json`` keeps it."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class EvaluationSpec:
    """What to evaluate: a trained model on every slide of a labels CSV (a held-out cohort).

    The labels are read with the model's task and targets (from its card; ``targets`` overrides the
    column names). Each slide is read at the card's MPP or level (``level``/``mpp`` override), cropped to its tissue
    box (``tissue_crop``) and padded or cropped to ``input_size`` (None: its own size), then
    streamed with ``tile_size`` (default: the card's). ``out_dir`` receives ``predictions.csv``,
    ``metrics.json`` and ``plot.svg``. ``threshold``: a binary classifier's class-1 probability at
    which accuracy and the confusion matrix count a positive (None: arg-max). With a ``patient``
    column, slides are also aggregated per patient by ``patient_aggregate`` ("max" or "mean").
    Intervals: ``bootstrap`` seeded resamples (``seed``), 95%.
    """

    model: str
    labels: str
    out_dir: str
    device: str = "auto"
    targets: tuple[str, ...] | None = None
    level: int | None = None
    mpp: float | None = None
    input_size: int | None = None
    tissue_crop: bool = True
    tile_size: int | None = None
    dtype: str = "float32"
    threshold: float | None = None
    patient_aggregate: str = "mean"
    bootstrap: int = 2000
    seed: int = 0
    prefetch: int = 2
    #: "auto", "none", or None: as the model card says (see TrainingSpec.tissue_mask).
    tissue_mask: str | None = None
    #: Also write each slide's prediction map, ``out_dir/maps/<slide folder>/maps.npz`` (and its
    #: TIFFs), from the same streamed pass: a viewer reopens a slide's maps without recomputing.
    keep_maps: bool = False

    PATIENT_AGGREGATES = ("max", "mean")

    def __post_init__(self) -> None:
        check_device_name(self.device)
        _check_tissue_mask(self.tissue_mask, optional=True)
        if self.patient_aggregate not in self.PATIENT_AGGREGATES:
            raise SpecError(f"patient_aggregate '{self.patient_aggregate}' is not one of "
                            f"{', '.join(self.PATIENT_AGGREGATES)}")
        if self.dtype not in TrainingSpec.DTYPES:
            raise SpecError(f"dtype '{self.dtype}' is not one of {', '.join(TrainingSpec.DTYPES)}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise SpecError(f"threshold must be between 0 and 1 (a class-1 probability), got {self.threshold}")
        if self.bootstrap < 0:
            raise SpecError(f"bootstrap must be 0 (no intervals) or more resamples, got {self.bootstrap}")
        if self.tile_size is not None and self.tile_size < 1:
            raise SpecError(f"tile_size must be at least 1, got {self.tile_size}")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip()))
        elif self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))

    def as_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


#: "auto" graph budget: this share of the free device memory (CPU: MemAvailable; CUDA: free
#: memory) when the run starts; the rest stays for the stitched map, the input and other processes.
GRAPH_BUDGET_AUTO_SHARE = 0.5

_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int | str:
    """A byte count as typed: "123", "512M", "2G", "1.5g", "2GiB" (binary units), or "auto"."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    if t == "AUTO":
        return "auto"
    unit = t[-1:] if t[-1:] in _SUFFIXES else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        raise SpecError(f"expected bytes (e.g. 2G, 512M, 1000000) or 'auto', got '{text}'") from None
    if value < 0:
        raise SpecError(f"a byte count cannot be negative, got '{text}'")
    return int(value * _SUFFIXES[unit])
