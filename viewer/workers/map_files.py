"""Worker jobs of the live maps: load a model's card (checking its weights), write a slide's
maps, read maps back as display layers (``engine.api`` is torch-free to import; the model
check imports torch, on this worker)."""

from __future__ import annotations

import numpy as np

from engine.api import MapLayer, check_model, read_maps, write_maps
from engine.events import Prediction
from engine.geometry import Box, MapGeometry
from viewer.model.layers import PREDICTION, LayerKey, layer_keys
from viewer.model.overlays import finite_range

#: A reloaded display layer: its key, where it lies, its values and their finite range.
DisplayLayer = tuple[LayerKey, MapGeometry, np.ndarray, tuple[float, float]]


def read_card(path: str) -> tuple[str, object]:
    """A model's card, once its weights were checked as a run would check them (sha256,
    finiteness, shapes): a truncated or damaged model is refused when it is chosen, not at Run."""
    return path, check_model(path)


def write_maps_job(out_dir: str, planes: dict[str, tuple[list[np.ndarray], tuple]], slide_path: str,
                   classes: tuple[str, ...], prediction: Prediction | None, slide_l0_size: tuple[int, int] | None = None,
                   slide_mpp: float | None = None) -> dict[str, str]:
    """Stack display planes (per map source: its layers' values and its level-0 box) back into
    engine layers and write them, the TIFFs registered to the slide (its level-0 size and MPP)."""
    layers = {source: MapLayer(np.stack(arrays) if source == PREDICTION else arrays[0], l0_box)
              for source, (arrays, l0_box) in planes.items()}
    return write_maps(out_dir, layers, slide_path=slide_path, classes=classes, prediction=prediction,
                      slide_l0_size=slide_l0_size, slide_mpp=slide_mpp)


def read_maps_job(path: str) -> tuple[str, list[DisplayLayer]]:
    """Read ``maps.npz`` into display layers."""
    layers, meta = read_maps(path)
    classes = tuple(meta.get("classes", ()))
    out = []
    for source, layer in layers.items():
        planes = layer.values if layer.values.ndim == 3 else layer.values[None]
        geometry = MapGeometry(Box.of(layer.l0_box), planes.shape[1:])
        # A file whose class list and planes disagree shows the planes that have a name.
        keys = layer_keys(source, classes or tuple(str(k) for k in range(len(planes))))
        for key, plane in zip(keys, planes, strict=False):
            plane = np.ascontiguousarray(plane, np.float32)
            out.append((key, geometry, plane, finite_range(plane)))
    return path, out
