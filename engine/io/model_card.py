"""The model card (``model.json``): everything needed to rebuild and correctly apply a model.

Validated on construction and on reading, every error naming the file and the field. Plain
data, no torch: the viewer's model panel reads cards (through :func:`engine.io.checkpoints.read_model_card`,
which knows where a checkpoint keeps its card) without loading any weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from engine.errors import CheckpointError
from engine.head_arguments import head_arguments
from engine.specs import HEADS, POOLS, TISSUE_MASKS

CARD_FORMAT_VERSION = 1
TASKS = ("classification", "multilabel", "regression")  # mirrors engine.io.labels.TASKS
#: Fields a classification card leaves out, so its model.json is what it was before tasks existed.
_TASK_FIELDS = ("task", "targets", "target_mean", "target_std")
#: Fields a card from before heads and tissue masks leaves out (None or empty): it reads as it did.
_HEAD_FIELDS = ("head", "head_kwargs", "tissue_mask", "tissue_params")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUILDER_ARGS = ("num_classes", "split", "pool")  # set from the card's own fields, never from model_kwargs
#: The largest streaming tile a card may ask for: a 65536² RGB float tile is already 48 GiB.
MAX_TILE_SIZE = 1 << 16
#: The largest integer a card's ``model_kwargs`` may hold (widths, channels): a card is read
#: from an untrusted file, and builders allocate what it asks for.
MAX_MODEL_KWARG = 4096


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild and correctly apply a model, stored as ``model.json``.

    ``input_mpp`` is in µm per level-0-equivalent pixel and is preferred over ``input_level``
    (levels differ between scanners). ``normalization_mean``/``std`` apply to RGB in [0, 1].
    ``tile_size`` is the streaming tile edge in input pixels.
    ``task``: "classification" (``classes`` are the class names, softmax), "multilabel"
    (``classes`` are the labels, one sigmoid each) or "regression" (``classes`` are the targets;
    the network's outputs are standardised, output * ``target_std`` + ``target_mean`` is in the
    targets' units). ``targets``: the labels CSV column(s) the model was trained on.
    """

    architecture: str
    classes: tuple[str, ...]
    split: str
    pool: str = "max"
    model_kwargs: dict = field(default_factory=dict)
    input_mpp: float | None = None
    input_level: int | None = None
    normalization_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    normalization_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tile_size: int = 1024
    provenance: dict = field(default_factory=dict)
    sha256: str = ""
    task: str = "classification"
    targets: tuple[str, ...] = ()
    target_mean: tuple[float, ...] | None = None
    target_std: tuple[float, ...] | None = None
    head: str | None = None
    head_kwargs: dict = field(default_factory=dict)
    tissue_mask: str | None = None
    tissue_params: dict = field(default_factory=dict)

    @property
    def head_name(self) -> str:
        """The head the model was built with: ``head``, or ``pool`` for cards from before heads."""
        return self.head or self.pool

    def __post_init__(self) -> None:
        _validate_card(self, "<ModelCard>")

    def to_json(self) -> dict:
        d = {"format_version": CARD_FORMAT_VERSION}
        d.update({f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)})
        for key in ("classes", "normalization_mean", "normalization_std", "targets", "target_mean", "target_std"):
            d[key] = None if d[key] is None else list(d[key])
        if self.task == "classification" and not self.targets:
            for key in _TASK_FIELDS:
                del d[key]
        for key in _HEAD_FIELDS:
            if d[key] is None or d[key] == {}:
                del d[key]
        return d

    def to_units(self, outputs):
        """A regression network's standardised outputs (..., targets) in the targets' units
        (numpy or torch); other tasks' outputs unchanged."""
        if self.task != "regression":
            return outputs
        import numpy as np

        return outputs * np.asarray(self.target_std) + np.asarray(self.target_mean)

    @classmethod
    def from_json(cls, d: dict, *, source: str = "<dict>") -> ModelCard:
        """Build a card from parsed JSON; ``source`` (the file) is named in every error."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: a model card must be a JSON object, got {type(d).__name__}; "
                                  "re-export the model with save_checkpoint")
        d = dict(d)
        version = d.pop("format_version", None)
        if version != CARD_FORMAT_VERSION:
            raise CheckpointError(f"{source}: field 'format_version' is {version!r}, this StreamSlide reads "
                                  f"version {CARD_FORMAT_VERSION}; re-export the model or update StreamSlide")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if unknown := sorted(set(d) - names):
            raise CheckpointError(f"{source}: unknown field(s) {', '.join(unknown)}; "
                                  "the card was edited by hand or written by another tool")
        if missing := sorted(required - set(d)):
            raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}; re-export the model")
        # Fill the fields directly so validation errors name the file, not "<ModelCard>".
        card = object.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in d:
                value = d[f.name]
            else:
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            object.__setattr__(card, f.name, value)
        _validate_card(card, source)
        return card


def _validate_card(card: ModelCard, source: str) -> None:
    """Check types and ranges in place, normalising JSON lists to tuples and ints to floats."""

    def bad(name: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: field '{name}' {why} (got {getattr(card, name)!r}); "
                               "fix or re-export the card")

    def put(name: str, value: Any) -> None:
        object.__setattr__(card, name, value)  # frozen: normalise once, here

    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    for name in ("architecture", "split"):
        if not isinstance(getattr(card, name), str) or not getattr(card, name):
            raise bad(name, "must be a non-empty string")
    classes = card.classes
    if (not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise bad("classes", "must be a non-empty list of distinct non-empty strings")
    put("classes", tuple(classes))
    if card.pool not in POOLS:
        raise bad("pool", f"must be one of {', '.join(POOLS)}")
    for name in ("model_kwargs", "provenance"):
        value = getattr(card, name)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad(name, "must be an object with string keys")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise bad(name, "must hold only JSON values (strings, finite numbers, lists, objects)") from None
    if clash := sorted(set(card.model_kwargs) & set(_BUILDER_ARGS)):
        raise bad("model_kwargs", f"must not set {', '.join(clash)}: those come from the card's own fields")
    for key, value in card.model_kwargs.items():
        if is_int(value) and not 0 <= value <= MAX_MODEL_KWARG:
            raise bad("model_kwargs", f"'{key}' = {value} is out of range: integer model arguments must be "
                                      f"between 0 and {MAX_MODEL_KWARG}")
        if not (value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 64)):
            raise bad("model_kwargs", f"'{key}' must be a number, a boolean, a short string or null")
    if card.input_mpp is not None:
        if not is_number(card.input_mpp) or card.input_mpp <= 0:
            raise bad("input_mpp", "must be a positive number of µm per pixel, or null")
        put("input_mpp", float(card.input_mpp))
    if card.input_level is not None and (not is_int(card.input_level) or card.input_level < 0):
        raise bad("input_level", "must be a non-negative integer, or null")
    for name in ("normalization_mean", "normalization_std"):
        value = getattr(card, name)
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(is_number(v) for v in value):
            raise bad(name, "must be three finite numbers (R, G, B)")
        put(name, tuple(float(v) for v in value))
    if any(s <= 0 for s in card.normalization_std):
        raise bad("normalization_std", "must be positive")
    if not is_int(card.tile_size) or not 0 < card.tile_size <= MAX_TILE_SIZE:
        raise bad("tile_size", f"must be a positive integer of at most {MAX_TILE_SIZE} pixels")
    if card.task not in TASKS:
        raise bad("task", f"must be one of {', '.join(TASKS)}")
    if not isinstance(card.targets, (list, tuple)) or not all(isinstance(t, str) and t for t in card.targets):
        raise bad("targets", "must be a list of column names")
    put("targets", tuple(card.targets))
    for name in ("target_mean", "target_std"):
        value = getattr(card, name)
        if card.task != "regression":
            if value is not None:
                raise bad(name, "applies to regression cards only; must be null")
            continue
        if (not isinstance(value, (list, tuple)) or len(value) != len(card.classes)
                or not all(is_number(v) for v in value)):
            raise bad(name, f"must be one finite number per target ({len(card.classes)})")
        put(name, tuple(float(v) for v in value))
    if card.task == "regression" and any(s <= 0 for s in card.target_std):
        raise bad("target_std", "must be positive")
    _validate_head(card, bad)
    if not isinstance(card.sha256, str) or (card.sha256 and not _SHA256.fullmatch(card.sha256)):
        raise bad("sha256", "must be 64 lowercase hex digits, or empty before saving")



def _validate_head(card: ModelCard, bad) -> None:
    """``head`` and its arguments, and the tissue mask the model was trained with."""
    if card.head is not None:
        if card.head not in HEADS:
            raise bad("head", f"is not a head this StreamSlide knows; it must be one of {', '.join(HEADS)} "
                              "(a newer StreamSlide may have written it: update StreamSlide)")
        if card.head in POOLS and card.head != card.pool:
            raise bad("head", f"is '{card.head}' but field 'pool' is '{card.pool}'; they must agree")
    if not isinstance(card.head_kwargs, dict):
        raise bad("head_kwargs", "must be an object")
    try:
        head_arguments(card.head_name, card.head_kwargs)
    except ValueError as exc:
        raise bad("head_kwargs", str(exc)) from None
    if card.tissue_mask is not None and card.tissue_mask not in TISSUE_MASKS:
        raise bad("tissue_mask", f"must be one of {', '.join(TISSUE_MASKS)}, or null")
    if not isinstance(card.tissue_params, dict) or not all(isinstance(k, str) for k in card.tissue_params):
        raise bad("tissue_params", "must be an object with string keys")
    from engine.slides.tissue import TissueParams

    try:
        TissueParams(**card.tissue_params)
    except (TypeError, ValueError) as exc:  # SpecError is a ValueError
        raise bad("tissue_params", f"are not tissue detection parameters ({exc})") from None
