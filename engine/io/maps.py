"""Write and read a job's maps: ``maps.npz`` (float arrays with level-0 geometry), pyramidal TIFFs
per map plane registered to the whole slide (colour-mapped and float; ASAP, QuPath and OpenSlide
overlay them on the slide), ``prediction.json``.
Layers: "prediction" (classes, h, w), and (h, w) maps such as "saliency", "tissue" (the tissue
mask a masked run used, 1 on tissue) and "attention" (an attention head's weights).

Every file is written through :mod:`engine.io.atomic`, so a crash or a full disk never leaves
a half-written result under the final name; a failed write is a
:class:`~engine.errors.ResultsError` naming the file and the cause.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ResultsError
from engine.events import L0Box, Prediction
from engine.geometry import Box
from engine.io import atomic
from engine.io.paths import is_safe_name, safe_child


@dataclass(frozen=True)
class MapLayer:
    """A whole map: ``values`` ((K, h, w) or (h, w) float32) covering ``l0_box`` on the slide."""

    values: np.ndarray
    l0_box: L0Box


MAPS_NPZ = "maps.npz"
PREDICTION_JSON = "prediction.json"


def write_maps(out_dir: str | os.PathLike, layers: dict[str, MapLayer], *, slide_path: str,
               classes: tuple[str, ...], prediction: Prediction | None, slide_mpp: float | None = None,
               slide_l0_size: tuple[int, int] | None = None, extra: dict | None = None) -> dict[str, str]:
    """Write the maps and the prediction; returns ``{kind: path}`` of what was written.

    The files of one call are written together: every file is staged under a temporary name
    before any of them replaces a file of an earlier result, the earlier result's files that
    this one does not write again are removed, and every record carries the call's ``run_id``,
    so the folder never mixes two runs. ``prediction.json`` is always written (its
    ``probabilities`` and ``label`` null when a cancelled run got no prediction). TIFF names
    come from :func:`engine.io.paths.file_parts` (class names only when plainly safe), the real
    class of each file is listed under ``files`` in ``maps.npz`` and ``prediction.json``.

    The TIFFs are registered to the slide (:mod:`engine.io.heatmap_tiff`): per plane an RGBA
    ``<label>.heatmap.tif`` and a float32 ``<label>.values.tif`` spanning ``slide_l0_size``
    (None: read from ``slide_path``'s header; the map boxes' extent when it cannot be opened,
    recorded as ``heatmaps.spans == "maps"``), with ``slide_mpp`` in the resolution tags.
    """
    from engine.io.heatmap_tiff import registered_files, slide_extent

    out = atomic.make_folder(out_dir)
    run_id = uuid.uuid4().hex
    if slide_l0_size is None:
        slide_l0_size, extent = slide_extent(slide_path, [layer.l0_box for layer in layers.values()])
    else:
        extent = "slide"
    tiffs = registered_files(layers, tuple(slide_l0_size), slide_mpp, classes=classes)
    files = {f.file_name: {"layer": f.layer, "class": f.class_name, "kind": f.kind} for f in tiffs}
    record = {"slide": str(slide_path), "classes": list(classes), "run_id": run_id, "files": files,
              "heatmaps": {"l0_size": list(slide_l0_size), "spans": extent}, **(extra or {})}
    arrays: dict[str, np.ndarray] = {}
    for name, layer in layers.items():
        arrays[f"{name}"] = np.asarray(layer.values, dtype=np.float32)
        arrays[f"{name}_l0_box"] = np.asarray(Box.of(layer.l0_box).as_tuple(), dtype=np.float64)
    meta = {**record, "layers": sorted(layers)}
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    staged: list[tuple[Path, atomic.Content]] = []
    written: dict[str, str] = {}
    for f in tiffs:
        tif = safe_child(out, f.file_name)
        staged.append((tif, f.fill))
        written[f.output_kind] = str(tif)
    doc = {"slide": str(slide_path), "classes": list(classes),
           "probabilities": list(prediction.probabilities) if prediction is not None else None,
           "label": prediction.label if prediction is not None else None, **record}
    if prediction is not None:
        doc["classes"] = list(prediction.classes)
    npz, pj = safe_child(out, MAPS_NPZ), safe_child(out, PREDICTION_JSON)
    staged.append((npz, lambda f: np.savez_compressed(f, **arrays)))
    staged.append((pj, (json.dumps(doc, indent=2) + "\n").encode("utf-8")))
    stale = [p for p in _files_of_earlier_result(out) if p not in {path for path, _ in staged}]
    atomic.replace_together(staged, before_replace=lambda: _remove(stale))
    written["maps_npz"] = str(npz)
    written["prediction_json"] = str(pj)
    return written


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _files_of_earlier_result(out: Path) -> list[Path]:
    """The TIFFs an earlier call wrote into ``out``, from its record (its ``files``, or for
    records older than that, the names it derived from its layers and classes). Only names
    this module could have written are returned, each checked to lie in ``out``."""
    meta = None
    for reader in (_npz_meta, _json_record):
        try:
            meta = reader(out)
        except (OSError, KeyError, ValueError, TypeError):
            meta = None
        if isinstance(meta, dict):
            break
    if not isinstance(meta, dict):
        return []
    names: list[str] = []
    if isinstance(meta.get("files"), dict):
        names = list(meta["files"])
    else:
        classes = tuple(c for c in meta.get("classes", ()) if isinstance(c, str))
        for layer in meta.get("layers", ()):
            if layer == "prediction":
                names += [f"prediction_{c}.tif" for c in classes]
            elif isinstance(layer, str):
                names.append(f"{layer}.tif")
    found = []
    for name in names:
        if isinstance(name, str) and name.endswith(".tif") and is_safe_name(name):
            found.append(safe_child(out, name))
    return found


def _npz_meta(out: Path) -> dict:
    with np.load(out / MAPS_NPZ, allow_pickle=False) as data:
        return json.loads(bytes(data["meta_json"]).decode())


def _json_record(out: Path) -> dict:
    return json.loads((out / PREDICTION_JSON).read_text(encoding="utf-8"))


def recorded_slide(out_dir: str | os.PathLike) -> str | None:
    """The slide whose results ``out_dir`` holds (from its ``prediction.json``: the resolved
    ``slide_path`` a job records, else ``slide`` as given), or None."""
    try:
        record = _json_record(Path(out_dir))
        slide = record.get("slide_resolved") or record.get("slide")
    except (OSError, ValueError, AttributeError):
        return None
    return slide if isinstance(slide, str) else None


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
