"""The trunk maps of a staged run's head-only epochs, cached on disk in the run folder.

While the trunk is frozen (``TrainingSpec.freeze_trunk_epochs``) and the slides are not
augmented, a slide's trunk map is the same every epoch: it is computed once, written to
``<run>/map-cache/<set>-<index>.npz`` (``set`` "train" or "val", ``index`` the slide's position in
that set, never its name; with its tissue or annotation mask beside it) and read back in later
epochs, so those cost only the head.

Maps are kept in half precision (a slide whose map leaves float16's range is kept in float32)
and float64 runs keep float64 maps, so exactness checks stay exact. Every file is written
through :mod:`engine.io.atomic`: a killed run leaves only whole maps. ``manifest.json`` holds a
key hashed from what the maps depend on (the input options, the slide files with their sizes
and modification times, the trunk's weights and statistics, the cache dtype); a cache whose key
differs, or without a manifest, is stale and is removed before use, never trusted. The trainer
removes the cache when the trunk is unfrozen, at the end of the run and on a clean cancel.

Every rank writes the maps of the slides it trains on (names from indices, written atomically,
so two ranks writing one map is safe); rank 0 alone checks, creates and removes the folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from engine.errors import TrainingError
from engine.io import atomic
from engine.io.labels import SlideRecord
from engine.specs import TrainingSpec

CACHE_FOLDER = "map-cache"
MANIFEST = "manifest.json"
_VERSION = 1  # of the cache's layout and key: a cache of another version is stale
#: The spec fields a slide's trunk map depends on besides the slides and the trunk's weights.
_INPUT_FIELDS = ("level", "mpp", "input_size", "tissue_crop", "normalization_mean", "normalization_std",
                 "dtype", "model", "model_kwargs", "split", "streaming", "tissue_mask", "tissue_params",
                 "include_classes", "exclude_classes")
_FP16_MAX = float(np.finfo(np.float16).max)


def cache_dtype(spec: TrainingSpec) -> np.dtype:
    """float16, or float64 for float64 runs (exactness checks)."""
    return np.dtype(np.float64) if spec.dtype == "float64" else np.dtype(np.float16)


def _slide_fingerprint(records: Sequence[SlideRecord]) -> list:
    rows = []
    for r in records:
        try:
            st = Path(r.path).stat()
            rows.append([str(r.path), st.st_size, st.st_mtime_ns])
        except OSError:  # reported when the slide is read; the key just cannot match a cache of it
            rows.append([str(r.path), None, None])
    return rows


def trunk_digest(trunk: torch.nn.Module) -> str:
    """sha256 of the trunk's parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in trunk.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(spec: TrainingSpec, train_set: Sequence[SlideRecord], val_set: Sequence[SlideRecord],
              trunk: torch.nn.Module) -> str:
    """What the cached maps depend on, hashed: a cache made under another key is stale."""
    spec_json = spec.as_json()
    what = {"version": _VERSION, "inputs": {k: spec_json.get(k) for k in _INPUT_FIELDS},
            "cache_dtype": cache_dtype(spec).name, "train": _slide_fingerprint(train_set),
            "val": _slide_fingerprint(val_set), "trunk": trunk_digest(trunk)}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class MapCache:
    """The maps of one run folder's cache, under one key (see the module docstring)."""

    def __init__(self, run_path: str | Path, key: str, dtype: np.dtype | type = np.float16):
        self.folder = Path(run_path) / CACHE_FOLDER
        self.key, self.dtype = key, np.dtype(dtype)
        self.writes = 0  # maps written by this process (for the tests and the benchmark)

    def prepare(self) -> None:
        """Rank 0, before any rank reads or writes: remove a stale cache, then write the manifest."""
        manifest = self.folder / MANIFEST
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            found = None
        if isinstance(found, dict) and found.get("key") == self.key and found.get("dtype") == self.dtype.name:
            return
        self.remove()  # another trunk, slide list or spec; or a folder whose manifest was never written
        atomic.make_folder(self.folder, error=TrainingError)
        atomic.write_json(manifest, {"key": self.key, "dtype": self.dtype.name, "version": _VERSION,
                                     "made_by": "engine.train staged training (removed at the end of the run)"},
                          error=TrainingError)

    def path(self, name: str) -> Path:
        """The file of entry ``name`` ("train-3", "val-0": from indices, never from slide names)."""
        return self.folder / f"{name}.npz"

    def load(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Entry ``name`` as cached, (map, mask or None), or None when it is not (yet) there or unreadable."""
        try:
            with np.load(self.path(name), allow_pickle=False) as entry:
                fmap = entry["map"]
                mask = entry["mask"] if "mask" in entry.files else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        if fmap.ndim != 4 or (mask is not None and (mask.ndim != 4 or mask.dtype != np.bool_)):
            return None
        return torch.from_numpy(fmap), (torch.from_numpy(mask) if mask is not None else None)

    def store(self, name: str, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Write ``fmap`` (N, C, h, w) as entry ``name``, with its ``mask`` (bool (N or 1, 1, h, w)
        on the same grid) when given; returns the map as cached (rounded to the cache dtype, on the
        CPU), which is what this and every later epoch trains on. Cells of blocks the mask left out
        are NaN, as the streamed trunk leaves them (the head never reads them)."""
        array = fmap.detach().to("cpu", torch.float64 if self.dtype == np.float64 else torch.float32).numpy()
        dtype = self.dtype
        if dtype == np.float16 and np.abs(np.where(np.isfinite(array), array, 0.0)).max(initial=0.0) > _FP16_MAX:
            dtype = np.dtype(np.float32)  # float16 would turn its largest values into inf
        array = np.ascontiguousarray(array.astype(dtype))
        arrays = {"map": array}
        if mask is not None:
            arrays["mask"] = np.ascontiguousarray(mask.detach().cpu().numpy().astype(np.bool_))
        atomic.write_with(self.path(name), lambda f: np.savez(f, allow_pickle=False, **arrays), error=TrainingError)
        self.writes += 1
        return torch.from_numpy(array)

    def remove(self) -> None:
        """Remove the cache folder and everything in it (nothing to do when there is none)."""
        try:
            shutil.rmtree(self.folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TrainingError(f"could not remove the trunk-map cache {self.folder}: {atomic.describe(exc)}; "
                                "remove it by hand (it is only a cache)") from exc
