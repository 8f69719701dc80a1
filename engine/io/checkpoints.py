"""Model files users keep: a folder holding ``model.safetensors`` and ``model.json``.

The weights are safetensors (tensors only, nothing executable); the card
(:class:`~engine.io.model_card.ModelCard`: architecture, split, classes, input level or MPP,
normalisation, tile size, provenance) ends with the sha256 of the weights file, so a
half-updated pair fails loudly. This module alone knows a checkpoint's file names. Both files
are written through :mod:`engine.io.atomic`; plain state dicts from elsewhere are read by
:mod:`engine.io.state_dicts`.

Every failure is :class:`engine.errors.CheckpointError`, naming the file and what to do.
This module imports torch lazily, so :func:`read_model_card` works without it (GUI model panel).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import CheckpointError
from engine.io import atomic
from engine.io.model_card import ModelCard

if TYPE_CHECKING:
    import torch

    from engine.models import SplitNet

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
_MAX_CARD_BYTES = 1 << 20  # a card is a few KB; refuse to parse something that is clearly not one

__all__ = ["CARD_NAME", "WEIGHTS_NAME", "ModelCard", "build_model", "card_path", "check_finite", "few_keys",
           "load_checkpoint", "read_file_bytes", "read_model_card", "save_checkpoint", "weights_path"]

# --- paths -------------------------------------------------------------------------------

def card_path(path: str | os.PathLike) -> Path:
    """The ``model.json`` of a checkpoint given as its folder, card or weights file."""
    return _card_and_weights(path)[0]


def weights_path(path: str | os.PathLike) -> Path:
    """The ``model.safetensors`` of a checkpoint given as its folder, card or weights file."""
    return _card_and_weights(path)[1]


def _card_and_weights(path: str | os.PathLike) -> tuple[Path, Path]:
    """A folder, its ``model.json`` or its ``model.safetensors`` -> (card path, weights path)."""
    path = Path(path)
    if path.is_dir():
        return path / CARD_NAME, path / WEIGHTS_NAME
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix(".json"), path.with_suffix(".safetensors")
    raise CheckpointError(f"{path}: expected a checkpoint folder, a {CARD_NAME} or a {WEIGHTS_NAME}"
                          + ("" if path.exists() else " (nothing exists at that path)"))


def read_file_bytes(path: Path, what: str) -> bytes:
    """The bytes of a model file; a missing or unreadable one is a CheckpointError saying ``what`` it is."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}; a checkpoint folder holds {CARD_NAME} and "
                              f"{WEIGHTS_NAME}, written together by save_checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"could not read {what} {path}: {e}") from e


def read_model_card(path: str | Path) -> ModelCard:
    """Read and validate ``model.json`` (path: folder, card or weights file). Does not import torch."""
    card_path, _ = _card_and_weights(path)
    try:
        size = card_path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"model card not found: {card_path}; export the model with save_checkpoint, "
                              f"which writes {CARD_NAME} beside {WEIGHTS_NAME}") from None
    if size > _MAX_CARD_BYTES:
        raise CheckpointError(f"{card_path} is {size} bytes, too large for a model card; is it the right file?")
    raw = read_file_bytes(card_path, "model card")

    def no_constants(name: str) -> None:  # JSON has no NaN/Infinity; Python's parser would accept them
        raise ValueError(f"{name} is not valid JSON")

    try:
        d = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{card_path} is not valid JSON ({e}); the file is damaged or not a model card; "
                              "re-export the model") from None
    return ModelCard.from_json(d, source=str(card_path))


def save_checkpoint(directory: str | Path, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (with the weights' sha256) into ``directory``.

    Both files are fully written and fsynced as temporaries before either replaces an existing
    file, so a failure while serialising or writing leaves a previous checkpoint untouched. The
    card must describe the model (same architecture, keys and shapes); non-finite weights are
    refused. Returns the path of ``model.json``.
    """
    import safetensors.torch

    directory = Path(directory)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    check_finite(state, f"the model being saved to {directory}")
    for attr in ("split", "pool"):
        if hasattr(model, attr) and getattr(model, attr) != getattr(card, attr):
            raise CheckpointError(f"card says {attr}='{getattr(card, attr)}' but the model has "
                                  f"'{getattr(model, attr)}'; make the card match the model before saving")
    _check_keys_and_shapes(meta_state_dict(card), state, card.architecture, "the model being saved", card)
    try:
        weights = safetensors.torch.save(state, metadata={"format": "pt"})
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not serialise the weights for {directory}: {e}") from e
    card = dataclasses.replace(card, sha256=hashlib.sha256(weights).hexdigest())
    text = json.dumps(card.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    atomic.make_folder(directory, error=CheckpointError)
    # Weights first: between the two renames the old card no longer matches the new weights'
    # sha256, so an interrupted update is refused at load rather than silently mixed.
    atomic.replace_together([(directory / WEIGHTS_NAME, weights), (directory / CARD_NAME, text.encode("utf-8"))],
                            error=CheckpointError)
    return directory / CARD_NAME


# --- loading -----------------------------------------------------------------------------

def build_model(card: ModelCard, source: str = "the model card") -> SplitNet:
    """A freshly initialised model of the card's architecture, split and pool (weights not loaded);
    ``source`` (the card's file) is named in the error when the card's fields cannot build one."""
    from engine.models import create_model

    try:
        model = create_model(card.architecture, num_classes=len(card.classes), split=card.split,
                             pool=card.pool, head=card.head, head_kwargs=card.head_kwargs or None,
                             **card.model_kwargs)
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{source}: cannot build '{card.architecture}' from fields 'architecture' and "
                              f"'model_kwargs': {e}; fix the card or re-export the model") from e
    stages = getattr(type(model), "stage_names", ())
    if card.split not in stages:  # SplitNet only checks when trunk() is first called
        raise CheckpointError(f"split '{card.split}' is not a stage of {card.architecture}; "
                              f"choose one of {', '.join(stages)}")
    return model


def load_checkpoint(path: str | Path, *, device: str = "cpu") -> tuple[SplitNet, ModelCard]:
    """Load a checkpoint (folder, ``model.json`` or ``model.safetensors``); the model is in eval mode.

    Verifies the weights' sha256 against the card, then that their keys and shapes are exactly
    those of the card's architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    card = read_model_card(path)
    _, weights_path = _card_and_weights(path)
    # One read: the bytes that are hashed are the bytes that are parsed (no swap in between).
    data = read_file_bytes(weights_path, "weights file")
    if not card.sha256:
        raise CheckpointError(f"the card for {weights_path} has no sha256, so the weights cannot be verified; "
                              "re-export the model with save_checkpoint")
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise CheckpointError(f"sha256 mismatch for {weights_path}: the file was modified, truncated or "
                              f"replaced without its {CARD_NAME} (expected {card.sha256[:12]}…, "
                              f"got {digest[:12]}…); re-export the model")
    try:
        state = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({e}); re-export the model") from e
    check_finite(state, str(weights_path))
    # The card's architecture is built on the meta device first (shapes, no memory): a card asking
    # for a huge model that its weights do not hold is refused before anything is allocated.
    source = str(card_path(path))
    _check_keys_and_shapes(meta_state_dict(card, source), state, card.architecture, str(weights_path), card)
    model = build_model(card, source)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def meta_state_dict(card: ModelCard, source: str = "the model card") -> dict:
    """The state dict (shapes only, on the meta device) of the model ``card`` describes."""
    import torch

    with torch.device("meta"):
        return build_model(card, source).state_dict()


def _check_keys_and_shapes(expected: dict, got: dict, architecture: str, source: str,
                           card: ModelCard | None = None) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {few_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected {few_keys(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"shape mismatch in {few_keys(shapes)} (e.g. {k}: expected {tuple(expected[k].shape)}, "
                     f"got {tuple(got[k].shape)})")
    guess = _guess_architecture(got, card) if card is not None else None
    hint = (f"the weights look like '{guess}'; fix 'architecture' in the card" if guess
            else "check the card's architecture, classes and model_kwargs")
    raise CheckpointError(f"weights in {source} do not match architecture '{architecture}': "
                          f"{'; '.join(parts)}; {hint}")


def few_keys(keys: list[str], n: int = 4) -> str:
    """How many keys, and the first few: for error messages."""
    shown = ", ".join(keys[:n])
    return f"{len(keys)} key(s): {shown}" + (", …" if len(keys) > n else "")


def _guess_architecture(state: dict, card: ModelCard) -> str | None:
    """The registered architecture whose keys and shapes fit ``state`` exactly, if any (built on meta)."""
    import torch

    from engine.models import create_model, list_models

    for name in list_models():
        if name == card.architecture:
            continue
        try:
            with torch.device("meta"):
                sd = create_model(name, num_classes=len(card.classes), **card.model_kwargs).state_dict()
        except (TypeError, ValueError):  # e.g. model_kwargs this builder does not take
            continue
        if sd.keys() == state.keys() and all(tuple(sd[k].shape) == tuple(state[k].shape) for k in sd):
            return name
    return None


def check_finite(state: dict, what: str) -> None:
    """Refuse NaN or inf weights: they would be saved or loaded without anyone noticing."""
    import torch

    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{what} has non-finite values (NaN or inf) in {few_keys(bad)}; "
                              "training diverged or the weights are corrupt; use an earlier checkpoint")

