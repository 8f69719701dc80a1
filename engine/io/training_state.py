"""The full state of a training run, saved and restored exactly, without pickle.

A training checkpoint is a folder: the model as a normal checkpoint (``model.safetensors`` +
``model.json``, loadable by the viewer), plus ``state.safetensors`` (optimiser moments, RNG
states: every tensor) and ``state.json`` (the rest: optimiser hyper-parameters, scheduler,
loss scaler, epoch and step counters, and the sha256 of ``state.safetensors``).

The folder is written whole under a temporary name and swapped in by
:func:`engine.io.atomic.replace_folder`: at every instant one complete checkpoint exists, at
``NAME`` or (after a crash mid-swap) at ``.NAME.old``, which :func:`find_checkpoint` recovers.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.io import atomic
from engine.io.checkpoints import ModelCard, load_checkpoint, read_model_card, save_checkpoint, weights_path

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
STATE_FORMAT = 1


# --- nested state <-> JSON + named tensors -----------------------------------------------------

def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for ``obj`` with every tensor or array moved to ``tensors`` under a path-like key."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        # Stored as int64/float64 tensors: safetensors' torch side lacks some numpy dtypes (uint32).
        wide = obj.astype(np.float64 if obj.dtype.kind == "f" else np.int64)
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide))
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        # Non-string keys (an optimiser's parameter indices) keep their type as pairs.
        return {"__items__": [[_encode(k, f"{key}.k{i}", tensors), _encode(v, f"{key}.{i}", tensors)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at '{key}' in a training checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


# --- RNG states ----------------------------------------------------------------------------

def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


# --- saving and loading ------------------------------------------------------------------------

def _complete(directory: Path) -> bool:
    return (directory / STATE_JSON).exists()  # written last


def find_checkpoint(directory: str | Path) -> Path | None:
    """The complete training checkpoint at ``directory``, recovering one left at ``.NAME.old`` by a
    crash between the two renames of a save; None when there is none."""
    return atomic.recover_folder(directory, _complete)


def save_training_state(directory: str | Path, model: torch.nn.Module, card: ModelCard, *,
                        optimizer: torch.optim.Optimizer, scheduler=None, scaler=None,
                        counters: dict | None = None) -> Path:
    """Write model, optimiser, scheduler, scaler, RNG states and ``counters`` (JSON values: epoch,
    step, ...) atomically as the folder ``directory``. Non-finite weights are refused
    (:class:`~engine.errors.CheckpointError`) and the previous checkpoint is kept."""
    import safetensors.torch

    directory = Path(directory)
    find_checkpoint(directory)  # first put a checkpoint stranded by a crash back in place

    def fill(new: Path) -> None:
        save_checkpoint(new, model, card)  # refuses non-finite weights
        tensors: dict[str, torch.Tensor] = {}
        body = {
            "format_version": STATE_FORMAT,
            "counters": counters or {},
            "optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": _encode(scheduler.state_dict() if scheduler is not None else None, "scheduler", tensors),
            "scaler": _encode(scaler.state_dict() if scaler is not None else None, "scaler", tensors),
            "rng": _encode(rng_states(), "rng", tensors),
        }
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"optimiser or scaler state '{name}' is not finite; not saving {directory}")
        blob = safetensors.torch.save(tensors)
        body["state_sha256"] = hashlib.sha256(blob).hexdigest()
        text = json.dumps(body, indent=1, allow_nan=False).encode("utf-8")
        # The JSON last: it is what marks the folder complete.
        atomic.replace_together([(new / STATE_TENSORS, blob), (new / STATE_JSON, text)], error=CheckpointError)

    return atomic.replace_folder(directory, fill, error=CheckpointError)


def load_training_state(directory: str | Path, model: torch.nn.Module, *, optimizer=None, scheduler=None,
                        scaler=None, restore_rng: bool = True) -> dict:
    """Restore everything :func:`save_training_state` wrote into the given objects (in place);
    returns the saved counters. The model's weights are verified against their sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    found = find_checkpoint(directory)
    if found is None:
        raise CheckpointError(f"no training checkpoint in {directory} (expected {STATE_JSON} there)")
    _load_weights_exactly(found, model)
    try:
        body = json.loads((found / STATE_JSON).read_text(encoding="utf-8"))
        blob = (found / STATE_TENSORS).read_bytes()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"could not read the training state in {found}: {exc}") from exc
    if body.get("format_version") != STATE_FORMAT:
        raise CheckpointError(f"{found / STATE_JSON}: format_version {body.get('format_version')!r}, "
                              f"this StreamSlide reads {STATE_FORMAT}")
    if hashlib.sha256(blob).hexdigest() != body.get("state_sha256"):
        raise CheckpointError(f"{found / STATE_TENSORS} does not match the sha256 in {STATE_JSON}; "
                              "the files were modified or mixed from two saves")
    try:
        tensors = safetensors_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{found / STATE_TENSORS} is not readable ({exc})") from exc
    if optimizer is not None:
        optimizer.load_state_dict(_decode(body["optimizer"], tensors))
    if scheduler is not None and body["scheduler"] is not None:
        scheduler.load_state_dict(_decode(body["scheduler"], tensors))
    if scaler is not None and body["scaler"]:
        scaler.load_state_dict(_decode(body["scaler"], tensors))
    if restore_rng:
        set_rng_states(_decode(body["rng"], tensors))
    return body["counters"]


def _load_weights_exactly(found: Path, model: torch.nn.Module) -> None:
    """Load the saved weights into ``model`` keeping their saved dtype's values bit for bit.

    ``load_checkpoint`` verifies the card, sha256, keys and shapes, but builds a float32 model;
    a float64 run must get its float64 weights back unrounded, so they are copied from the
    verified file into the caller's model.
    """
    from safetensors.torch import load as safetensors_load

    load_checkpoint(found)  # all the checks, and a clear error for a damaged checkpoint
    data = weights_path(found).read_bytes()
    if hashlib.sha256(data).hexdigest() != read_model_card(found).sha256:
        raise CheckpointError(f"{weights_path(found)} changed while it was being loaded; try again")
    model.load_state_dict(safetensors_load(data), strict=True)
