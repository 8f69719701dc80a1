"""Model files users keep: ``model.safetensors`` + ``model.json``, and safe import of plain state dicts.

A checkpoint is a folder holding the weights (safetensors: tensors only, nothing executable)
and a human-readable model card (architecture, trunk/head split, classes, input level or MPP,
normalisation, tile size, provenance, and the sha256 of the weights file). Both files are
written atomically; the sha256 ties them together, so a half-updated pair fails loudly.

Plain ``.pt``/``.pth``/``.bin`` state dicts (torchvision, timm) are pickles. They are scanned
statically and refused if they reference anything outside torch's weights-only allowlist, and
then read with ``torch.load(..., weights_only=True)`` named explicitly, so no environment
variable (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) can turn the load into full unpickling.

Every failure is :class:`engine.errors.CheckpointError`, naming the file and what to do.
This module imports torch lazily, so :func:`read_model_card` works without it (GUI model panel).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from engine.models import SplitNet

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
CARD_FORMAT_VERSION = 1
POOLS = ("max", "avg")  # mirrors engine.models.split.POOLS, kept here so cards need no torch
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_MAX_CARD_BYTES = 1 << 20  # a card is a few KB; refuse to parse something that is clearly not one
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUILDER_ARGS = ("num_classes", "split", "pool")  # set from the card's own fields, never from model_kwargs


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild and correctly apply a model, stored as ``model.json``.

    ``input_mpp`` is in µm per level-0-equivalent pixel and is preferred over ``input_level``
    (levels differ between scanners). ``normalization_mean``/``std`` apply to RGB in [0, 1].
    ``tile_size`` is the streaming tile edge in input pixels.
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

    def __post_init__(self) -> None:
        _validate_card(self, "<ModelCard>")

    def to_json(self) -> dict:
        d = {"format_version": CARD_FORMAT_VERSION}
        d.update({f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)})
        for key in ("classes", "normalization_mean", "normalization_std"):
            d[key] = list(d[key])
        return d

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
    if not is_int(card.tile_size) or card.tile_size <= 0:
        raise bad("tile_size", "must be a positive integer (pixels)")
    if not isinstance(card.sha256, str) or (card.sha256 and not _SHA256.fullmatch(card.sha256)):
        raise bad("sha256", "must be 64 lowercase hex digits, or empty before saving")


# --- paths -------------------------------------------------------------------------------

def _card_and_weights(path: str | Path) -> tuple[Path, Path]:
    """A folder, its ``model.json`` or its ``model.safetensors`` -> (card path, weights path)."""
    path = Path(path)
    if path.is_dir():
        return path / CARD_NAME, path / WEIGHTS_NAME
    if path.suffix in (".json", ".safetensors"):
        return path.with_suffix(".json"), path.with_suffix(".safetensors")
    raise CheckpointError(f"{path}: expected a checkpoint folder, a {CARD_NAME} or a {WEIGHTS_NAME}"
                          + ("" if path.exists() else " (nothing exists at that path)"))


def _read_bytes(path: Path, what: str) -> bytes:
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
    raw = _read_bytes(card_path, "model card")

    def no_constants(name: str) -> None:  # JSON has no NaN/Infinity; Python's parser would accept them
        raise ValueError(f"{name} is not valid JSON")

    try:
        d = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{card_path} is not valid JSON ({e}); the file is damaged or not a model card; "
                              "re-export the model") from None
    return ModelCard.from_json(d, source=str(card_path))


# --- atomic writes -----------------------------------------------------------------------

def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` durably to a temporary file beside ``name`` (same file system, so replace is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are files to share, not secrets
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync; NTFS journals renames itself
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # makes the renames themselves survive a power cut
    finally:
        os.close(fd)


def save_checkpoint(directory: str | Path, model: torch.nn.Module, card: ModelCard) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (with the weights' sha256) into ``directory``.

    Both files are fully written and fsynced as temporaries before either replaces an existing
    file, so a failure while serialising or writing leaves a previous checkpoint untouched. The
    card must describe the model (same architecture, keys and shapes); non-finite weights are
    refused. Returns the path of ``model.json``.
    """
    import safetensors.torch
    import torch

    directory = Path(directory)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, f"the model being saved to {directory}")
    for attr in ("split", "pool"):
        if hasattr(model, attr) and getattr(model, attr) != getattr(card, attr):
            raise CheckpointError(f"card says {attr}='{getattr(card, attr)}' but the model has "
                                  f"'{getattr(model, attr)}'; make the card match the model before saving")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = build_model(card).state_dict()
    _check_keys_and_shapes(expected, state, card.architecture, "the model being saved", card)
    try:
        weights = safetensors.torch.save(state, metadata={"format": "pt"})
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not serialise the weights for {directory}: {e}") from e
    card = dataclasses.replace(card, sha256=hashlib.sha256(weights).hexdigest())
    text = json.dumps(card.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    temps: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        temps.append(_write_temp(directory, WEIGHTS_NAME, weights))
        temps.append(_write_temp(directory, CARD_NAME, text.encode("utf-8")))
        # Weights first: between the two renames the old card no longer matches the new weights'
        # sha256, so an interrupted update is refused at load rather than silently mixed.
        os.replace(temps[0], directory / WEIGHTS_NAME)
        os.replace(temps[1], directory / CARD_NAME)
        temps.clear()
        _fsync_dir(directory)
    except OSError as e:
        raise CheckpointError(f"could not write the checkpoint in {directory}: {e}; "
                              "check the folder is writable and has free space") from e
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return directory / CARD_NAME


# --- loading -----------------------------------------------------------------------------

def build_model(card: ModelCard) -> SplitNet:
    """A freshly initialised model of the card's architecture, split and pool (weights not loaded)."""
    from engine.models import create_model

    try:
        model = create_model(card.architecture, num_classes=len(card.classes), split=card.split,
                             pool=card.pool, **card.model_kwargs)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build '{card.architecture}' from the model card: {e}") from e
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
    data = _read_bytes(weights_path, "weights file")
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
    model = build_model(card)
    _check_keys_and_shapes(model.state_dict(), state, card.architecture, str(weights_path), card)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def _check_keys_and_shapes(expected: dict, got: dict, architecture: str, source: str,
                           card: ModelCard | None = None) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {_few(unexpected)}")
    if shapes:
        k = shapes[0]
        parts.append(f"shape mismatch in {_few(shapes)} (e.g. {k}: expected {tuple(expected[k].shape)}, "
                     f"got {tuple(got[k].shape)})")
    guess = _guess_architecture(got, card) if card is not None else None
    hint = (f"the weights look like '{guess}'; fix 'architecture' in the card" if guess
            else "check the card's architecture, classes and model_kwargs")
    raise CheckpointError(f"weights in {source} do not match architecture '{architecture}': "
                          f"{'; '.join(parts)}; {hint}")


def _few(keys: list[str], n: int = 4) -> str:
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


def _check_finite(state: dict, what: str) -> None:
    import torch

    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{what} has non-finite values (NaN or inf) in {_few(bad)}; "
                              "training diverged or the weights are corrupt; use an earlier checkpoint")


# --- importing plain state dicts -----------------------------------------------------------

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

        data = _read_bytes(path, "weights file")
        try:
            obj = safetensors_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated; "
                                  "download or export it again") from e
    elif path.suffix in TORCH_SUFFIXES:
        data = _read_bytes(path, "weights file")
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

    The classifier (``fc.*``) is skipped when it is absent or its shape differs (another number
    of classes) and ``skip_classifier`` is true; every other key must be present with the same
    shape. Missing ``num_batches_tracked`` counters (old torchvision files) are tolerated: they
    are counters, not weights. Returns the model keys left at their initial values, sorted.
    """
    state = import_state_dict(path)
    own = model.state_dict()
    loadable, skipped, problems = {}, [], []
    for key, target in own.items():
        is_classifier = key.startswith("fc.")
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
        problems.append(f"unexpected {_few(unexpected)}")
    if problems:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {'; '.join(problems[:6])}"
                              f"{' …' if len(problems) > 6 else ''}; is it the same architecture "
                              "(e.g. resnet34 weights for a resnet34)?")
    _check_finite(loadable, str(path))
    model.load_state_dict(loadable, strict=False)
    return sorted(skipped)
