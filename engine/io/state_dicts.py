"""Weights from elsewhere: plain state dicts (torchvision, timm, training scripts), read safely.

``.safetensors`` holds tensors only. ``.pt``/``.pth``/``.bin``/``.ckpt`` files are pickles: they
are scanned statically and refused if they reference anything outside torch's weights-only
allowlist, then read with ``torch.load(..., weights_only=True)`` named explicitly, so no
environment variable (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) can turn the load into full
unpickling. Every failure is :class:`engine.errors.CheckpointError`, naming the file.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError
from engine.io.checkpoints import check_finite, few_keys, read_file_bytes

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def import_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict: ``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt`` (torch zip or legacy).

    Pickled files are refused if they reference globals outside torch's weights-only allowlist,
    and are only ever read with ``weights_only=True``. ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers are unwrapped and ``module.`` prefixes (DataParallel) stripped.
    """
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load as safetensors_load

        data = read_file_bytes(path, "weights file")
        try:
            obj = safetensors_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated; "
                                  "download or export it again") from e
    elif path.suffix in TORCH_SUFFIXES:
        data = read_file_bytes(path, "weights file")
        _refuse_unsafe_pickle(data, path)
        try:
            # weights_only=True written explicitly: torch ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD then;
            # mmap=False so a global torch.utils.serialization config cannot change how bytes are read.
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True, mmap=False)
        except Exception as e:  # noqa: BLE001 -- torch raises many types for bad input; each one is re-raised
            # torch's message advises weights_only=False; keep only the diagnosis, not that advice.
            names = re.findall(r"GLOBAL (\S+) was not an allowed global", str(e))
            detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", str(e), re.S)
            why = (f"it references {', '.join(names)}" if names
                   else detail.group(1).strip() if detail else f"{type(e).__name__}: {str(e)[:300]}")
            raise CheckpointError(f"refused to load {path}: {why}; it is truncated, not a plain state dict, or "
                                  "unsafe; convert it to .safetensors in a trusted environment") from None
    else:
        raise CheckpointError(f"{path}: unsupported weights file type '{path.suffix}'; "
                              f"use .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    return _plain_state_dict(obj, path)


def _plain_state_dict(obj: Any, path: Path) -> dict:
    import torch

    for wrapper in ("state_dict", "model"):  # training-script checkpoints (timm, Lightning, ...)
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of named tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  "expected a plain state dict (name -> tensor)")
        name = key.removeprefix("module.")
        if name in out:
            raise CheckpointError(f"{path}: '{key}' and '{name}' both appear after stripping 'module.'")
        out[name] = value
    return out


def _refuse_unsafe_pickle(data: bytes, path: Path) -> None:
    """Refuse, before any unpickling, a file whose pickle names globals outside the weights-only allowlist.

    The weights-only unpickler would refuse them too; checking first means the refusal does not
    depend on how torch's loader is configured, and the error can name every offending global.
    """
    import torch

    unsafe: list[str] | None = None
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception:  # noqa: BLE001 -- torch's scanner only parses protocol 2; fall back to ours below
            unsafe = None
    if unsafe is None:
        unsafe = [g for g in _pickle_globals(data) if not _expected_state_dict_global(g)]
    if unsafe:
        raise CheckpointError(f"refused to load {path}: its pickle references {', '.join(sorted(unsafe))}, "
                              "which a plain state dict never needs and which could run code; nothing was "
                              "loaded; if you trust the file, convert it to .safetensors in a sandbox")


def _expected_state_dict_global(name: str) -> bool:
    # Used only where torch's allowlist scan cannot parse the pickle: tensors rebuild through
    # torch.* and dicts through OrderedDict. The weights-only unpickler still has the last word.
    return name.startswith("torch.") or name == "collections.OrderedDict"


def _pickle_globals(data: bytes) -> set[str]:
    """Globals named by the pickle stream(s) in ``data``, found by disassembly only (nothing runs).

    Handles any protocol, the pickles inside a torch zip (``*/data.pkl``) and the consecutive
    pickles at the start of a legacy torch file. ``STACK_GLOBAL`` takes its names from the two
    preceding strings; anything built more cleverly is reported as ``<dynamic global>``.
    """
    import pickletools

    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            pkls = [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    else:
        pkls = [data]
    found: set[str] = set()
    for blob in pkls:
        stream = io.BytesIO(blob)
        # A legacy file is exactly five pickles, then raw storage bytes; stopping at five keeps
        # tensor data (which may happen to start like a pickle) from being read as opcodes.
        for _ in range(5):
            memo: dict[int, Any] = {}
            recent: list[Any] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        found.add(".".join(arg.split(" ", 1)))
                    elif op.name == "STACK_GLOBAL":
                        mod, name = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                        found.add(f"{mod}.{name}" if isinstance(mod, str) and isinstance(name, str)
                                  else "<dynamic global>")
                    elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                        memo[len(memo) if op.name == "MEMOIZE" else arg] = recent[-1] if recent else None
                    elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                        recent.append(memo.get(arg))
                    else:
                        is_text = "UNICODE" in op.name or "STRING" in op.name
                        recent.append(arg if is_text and isinstance(arg, str) else None)
            except ValueError:  # not (or no longer) a pickle: the end of the pickled part
                break
            if stream.tell() >= len(blob) or blob[stream.tell()] != 0x80:  # next is not PROTO: no more pickles
                break
    return found


def load_pretrained_backbone(model: torch.nn.Module, path: str | Path, *, skip_classifier: bool = True) -> list[str]:
    """Load e.g. torchvision/timm ImageNet ResNet weights into ``model`` by parameter name.

    The classifier (``fc.*``, and a head's ``pooling.*``) is skipped when it is absent or its shape differs (another number
    of classes) and ``skip_classifier`` is true; every other key must be present with the same
    shape. Missing ``num_batches_tracked`` counters (old torchvision files) are tolerated: they
    are counters, not weights. Returns the model keys left at their initial values, sorted.
    """
    state = import_state_dict(path)
    own = model.state_dict()
    loadable, skipped, problems = {}, [], []
    for key, target in own.items():
        # The head's own parameters (GeM's exponent, attention's MLP: ``pooling.*``) are never in a
        # backbone file; they keep their initial values, as a new classifier does.
        is_classifier = key.startswith("fc.") or (key.startswith("pooling.") and key not in state)
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            if is_classifier and skip_classifier:
                skipped.append(key)
            else:
                problems.append(f"missing {key}")
        elif tuple(state[key].shape) != tuple(target.shape):
            if is_classifier and skip_classifier:
                skipped.append(key)
            else:
                problems.append(f"{key} has shape {tuple(state[key].shape)}, model has {tuple(target.shape)}")
        else:
            loadable[key] = state[key]
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"unexpected {few_keys(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems[:6])}"
                              f"{' …' if len(problems) > 6 else ''}; is it the same architecture "
                              "(e.g. resnet34 weights for a resnet34)?")
    check_finite(loadable, str(path))
    model.load_state_dict(loadable, strict=False)
    return sorted(skipped)
