"""Write and read a job's maps: ``maps.npz`` (float arrays with level-0 geometry), one tiled
TIFF image per layer (colour-mapped, openable by this viewer and other tools), ``prediction.json``.

Every file is written through :mod:`engine.io.atomic`, so a crash or a full disk never leaves
a half-written result under the final name; a failed write is a
:class:`~engine.errors.ResultsError` naming the file and the cause.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.colormaps import colorize_rgb
from engine.errors import ResultsError
from engine.events import L0Box, Prediction
from engine.geometry import Box
from engine.io import atomic


@dataclass(frozen=True)
class MapLayer:
    """A whole map: ``values`` ((K, h, w) or (h, w) float32) covering ``l0_box`` on the slide."""

    values: np.ndarray
    l0_box: L0Box


def write_maps(out_dir: str | os.PathLike, layers: dict[str, MapLayer], *, slide_path: str,
               classes: tuple[str, ...], prediction: Prediction | None, slide_mpp: float | None = None,
               extra: dict | None = None) -> dict[str, str]:
    """Write the maps and the prediction; returns ``{kind: path}`` of what was written."""
    from engine.io.svs import write_svs_array

    out = atomic.make_folder(out_dir)
    written: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, layer in layers.items():
        arrays[f"{name}"] = np.asarray(layer.values, dtype=np.float32)
        arrays[f"{name}_l0_box"] = np.asarray(Box.of(layer.l0_box).as_tuple(), dtype=np.float64)
    meta = {"slide": str(slide_path), "classes": list(classes), "layers": sorted(layers),
            **(extra or {})}
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    npz = out / "maps.npz"
    atomic.write_with(npz, lambda f: np.savez_compressed(f, **arrays))
    written["maps_npz"] = str(npz)

    for name, layer in layers.items():
        l0_box = Box.of(layer.l0_box)  # a Box or an (x0, y0, x1, y1) tuple
        for label, plane in _planes(name, layer.values, classes):
            hi = 1.0 if name == "prediction" else float(np.nanmax(plane)) if np.isfinite(plane).any() else 1.0
            rgb = colorize_rgb(plane, "viridis", 0.0, hi)
            cell_l0 = l0_box.width / plane.shape[1]
            tif = out / f"{label}.tif"
            mpp = slide_mpp * cell_l0 if slide_mpp else None
            write_svs_array(tif, np.ascontiguousarray(rgb), mpp=mpp, app_mag=None, tile=256)
            written[f"{label}_tiff"] = str(tif)

    if prediction is not None:
        doc = {"slide": str(slide_path), "classes": list(prediction.classes),
               "probabilities": list(prediction.probabilities), "label": prediction.label, **(extra or {})}
        pj = out / "prediction.json"
        atomic.write_json(pj, doc, indent=2)
        written["prediction_json"] = str(pj)
    return written


def _planes(name: str, values: np.ndarray, classes: tuple[str, ...]):
    if values.ndim == 3:
        for k in range(values.shape[0]):
            cls = classes[k] if k < len(classes) else str(k)
            yield f"{name}_{cls}", values[k]
    else:
        yield name, values


def read_maps(path: str | os.PathLike) -> tuple[dict[str, MapLayer], dict]:
    """Read ``maps.npz`` (or the folder holding it) back into layers and its metadata."""
    p = Path(path)
    if p.is_dir():
        p = p / "maps.npz"
    try:
        with np.load(p, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta_json"]).decode())
            layers = {name: MapLayer(data[name], tuple(float(v) for v in data[f"{name}_l0_box"]))
                      for name in meta["layers"]}
    except (OSError, KeyError, ValueError) as exc:
        raise ResultsError(f"{p} is not a StreamSlide maps file ({type(exc).__name__}: {exc}); "
                           "choose the maps.npz a job wrote") from exc
    return layers, meta
