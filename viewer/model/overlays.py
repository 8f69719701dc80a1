"""The map layers of one slide: assembled float maps, their colour bytes, styles and the active
layer (the one whose legend is drawn). Plain Python: ``viewer.render.overlay`` paints them.

Planes: ``l0_`` is level-0 slide pixels; ``map_`` cells index a layer's (h, w) map, whose cells
tile ``MapGeometry.l0_box`` evenly. A layer keeps the float map (for the value readout, exports
and re-colouring) and a premultiplied BGRA array of the same shape. Patches arrive already
colour-mapped by the job worker; the UI thread only copies their bytes in. A style change that
alters the colours re-maps the whole layer through ``submit`` (a worker), never in a slot.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.geometry import Box, MapGeometry
from viewer.model.layers import PREDICTION, LayerKey, LayerStyle, colourize, default_style
from viewer.model.notify import Notifier

log = logging.getLogger(__name__)

#: Auto-ranged layers (saliency) grow their range in steps of this factor, so a job re-maps a
#: layer only a handful of times however many patches raise the maximum.
AUTO_RANGE_HEADROOM = 1.5

#: ``BackgroundRunner.submit``'s shape: ``submit(fn, *args, on_done=, on_error=)``.
Submit = Callable[..., object]
#: Runs a callable once the event loop turns (patches of one burst then repaint once).
CallSoon = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class LayerPatch:
    """One layer's piece of a patch, colour-mapped on the worker with style ``version``."""

    key: LayerKey
    values: np.ndarray  # (h, w) float32
    bgra: np.ndarray  # (h, w, 4) uint8 premultiplied
    version: int
    finite_min: float  # for auto ranges and "fit range"; NaN when the patch has no finite value
    finite_max: float


@dataclass(frozen=True)
class ColouredPatch:
    """A :class:`engine.events.MapPatch` split into display layers, ready for the UI thread.
    ``map_r0, map_c0``: the patch's first cell in the map."""

    generation: int
    geometry: MapGeometry
    map_r0: int
    map_c0: int
    layers: tuple[LayerPatch, ...]

    @property
    def l0_box(self) -> Box:
        h, w = self.layers[0].values.shape
        return self.geometry.cells_to_l0(self.map_c0, self.map_r0, self.map_c0 + w, self.map_r0 + h)


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, NaN when there are none (worker threads)."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (float("nan"), float("nan"))


def recolour(values: np.ndarray, style: LayerStyle) -> np.ndarray:
    """Worker job: the whole layer's BGRA under ``style``."""
    return colourize(values, style)


class Layer:
    """One display layer (a class's probability, or saliency). Lives on the UI thread.

    ``bgra`` is replaced (not written into) when a whole-layer re-map arrives; a painter that
    wraps it in an image re-wraps it when it sees another array.
    """

    def __init__(self, key: LayerKey, geometry: MapGeometry, style: LayerStyle) -> None:
        self.key, self.geometry, self.style = key, geometry, style
        h, w = geometry.shape
        self.values = np.full((h, w), np.nan, np.float32)
        self.bgra = np.zeros((h, w, 4), np.uint8)
        self.data_min = self.data_max = float("nan")
        self.auto_ranged = False  # the auto range has been fitted to this layer's data once
        self.recolour_in_flight = False
        self.needs_recolour = False
        #: Map regions (r0, r1, c0, c1, style version) written since the in-flight re-map read the map.
        self.written_since_recolour: list[tuple[int, int, int, int, int]] = []

    def write(self, map_r0: int, map_c0: int, part: LayerPatch) -> None:
        h, w = part.values.shape
        if (map_r0, map_c0) == (0, 0) and (h, w) == self.values.shape:
            # A patch replacing the whole map (an attention map normalised at the end of its run)
            # replaces its range too, and an auto range fits it afresh.
            self.data_min = self.data_max = float("nan")
            self.auto_ranged = False
        self.values[map_r0 : map_r0 + h, map_c0 : map_c0 + w] = part.values
        self.bgra[map_r0 : map_r0 + h, map_c0 : map_c0 + w] = part.bgra
        if self.recolour_in_flight:
            self.written_since_recolour.append((map_r0, map_r0 + h, map_c0, map_c0 + w, part.version))
        elif part.version != self.style.version:
            self.needs_recolour = True
        self.note_range(part.finite_min, part.finite_max)

    def note_range(self, finite_min: float, finite_max: float) -> None:
        if not math.isnan(finite_max):
            self.data_min = finite_min if math.isnan(self.data_min) else min(self.data_min, finite_min)
            self.data_max = finite_max if math.isnan(self.data_max) else max(self.data_max, finite_max)

    def take_recolour(self, version: int, bgra: np.ndarray) -> None:
        """Install a whole-layer re-map made with style ``version``."""
        self.recolour_in_flight = False
        writes, self.written_since_recolour = self.written_since_recolour, []
        if version != self.style.version:
            self.needs_recolour = True  # the style moved on while it ran
            return
        for r0, r1, c0, c1, patch_version in writes:
            if patch_version == version:
                bgra[r0:r1, c0:c1] = self.bgra[r0:r1, c0:c1]  # newer cells, already right
            else:
                self.needs_recolour = True
        self.bgra = np.ascontiguousarray(bgra)

    def value_at(self, l0_x: float, l0_y: float) -> float | None:
        cell = self.geometry.cell_at(l0_x, l0_y)
        if cell is None:
            return None
        value = float(self.values[cell])
        return None if math.isnan(value) else value


class OverlayStack:
    """All map layers of one slide, bottom to top, their styles and the active layer.

    Notifies ``changed(l0_box)`` with the level-0 box that needs repainting (None: everything)
    and ``layers_changed()`` when layers come or go. Styles are also published as an immutable
    dict (:attr:`styles`) that job workers read without locks: the dict is replaced, never mutated.
    """

    def __init__(self, submit: Submit, call_soon: CallSoon) -> None:
        self._submit, self._call_soon = submit, call_soon
        self.layers: dict[LayerKey, Layer] = {}
        self.styles: dict[LayerKey, LayerStyle] = {}
        self.active: LayerKey | None = None
        self.generation = 0
        self.changed = Notifier()
        self.layers_changed = Notifier()
        self._defaulted: set[LayerKey] = set()  # keys whose style nobody has set yet
        # Patches of one burst repaint once: their boxes are merged until the event loop turns.
        self._dirty_l0: Box | None = None
        self._flush_pending = False

    # -- generations and patches -----------------------------------------------------------
    def begin(self, generation: int) -> None:
        """Accept patches of ``generation`` only, from now on, into fresh layers."""
        self.generation = generation
        self.clear()

    def style_for(self, key: LayerKey) -> LayerStyle:
        return self.styles.get(key) or default_style(key)

    def add_patch(self, patch: ColouredPatch) -> bool:
        """Copy a coloured patch in; False (and nothing changes) when its generation is stale."""
        if patch.generation != self.generation:
            return False
        added = False
        for part in patch.layers:
            layer = self.layers.get(part.key)
            if layer is None:
                layer = self._new_layer(part.key, patch.geometry)
                added = True
            layer.write(patch.map_r0, patch.map_c0, part)
            self._grow_auto_range(layer)
            self._schedule_recolour(layer)
        if added:
            self.layers_changed.emit()
            self.changed.emit(None)
        else:
            self._dirty_l0 = patch.l0_box if self._dirty_l0 is None else self._dirty_l0.union(patch.l0_box)
            if not self._flush_pending:
                self._flush_pending = True
                self._call_soon(self._flush_dirty)
        return True

    def _flush_dirty(self) -> None:
        self._flush_pending = False
        box, self._dirty_l0 = self._dirty_l0, None
        if box is not None:
            self.changed.emit(box)

    def add_layer(self, key: LayerKey, geometry: MapGeometry, values: np.ndarray, value_range: tuple[float, float]) -> None:
        """Show a whole float map (a reloaded ``maps.npz``; ``value_range`` from
        :func:`finite_range` on the worker that read it); colour-mapped on a worker."""
        layer = self._new_layer(key, geometry)
        layer.values = np.ascontiguousarray(values, np.float32)
        layer.note_range(*value_range)
        layer.needs_recolour = True
        self._grow_auto_range(layer)
        self._schedule_recolour(layer)
        self.layers_changed.emit()

    def _new_layer(self, key: LayerKey, geometry: MapGeometry) -> Layer:
        """A fresh layer. Until the user styles them, only the last class's probability is
        shown (classes arrive in order, and the last is usually the positive one; several
        translucent layers at once only muddle), and it is the active layer, whose legend
        is drawn. Saliency starts hidden."""
        if key not in self.styles:
            shown = key.source == PREDICTION
            self._set_default_style(key, default_style(key).changed(visible=shown))
            if shown:
                for other in self.layers:
                    if other in self._defaulted and other.source == PREDICTION:
                        self._set_default_style(other, self.styles[other].changed(visible=False))
                        self.layers[other].style = self.styles[other]
        layer = Layer(key, geometry, self.style_for(key))
        self.layers[key] = layer
        if self.active not in self.layers or (layer.style.visible and not self.layers[self.active].style.visible):
            self.active = key
        return layer

    def clear(self) -> None:
        self.layers.clear()
        self.active = None
        self.layers_changed.emit()
        self.changed.emit(None)

    # -- styles ------------------------------------------------------------------------------
    def _set_default_style(self, key: LayerKey, style: LayerStyle) -> None:
        self.styles = {**self.styles, key: style}
        self._defaulted.add(key)

    def set_style(self, key: LayerKey, **changes) -> LayerStyle:
        """Change a layer's style (the user's edits; also the auto range)."""
        self._defaulted.discard(key)
        style = self.style_for(key).changed(**changes)
        self.styles = {**self.styles, key: style}
        layer = self.layers.get(key)
        if layer is not None:
            remap = not style.maps_like(layer.style)
            layer.style = style
            if remap:
                layer.needs_recolour = True
                self._schedule_recolour(layer)
            self.changed.emit(None)
        return style

    def set_active(self, key: LayerKey | None) -> None:
        self.active = key
        self.changed.emit(None)

    def show_only(self, key: LayerKey) -> None:
        """Show ``key`` as the active layer and hide every other layer."""
        for other in self.layers:
            if other != key and self.style_for(other).visible:
                self.set_style(other, visible=False)
        self.set_style(key, visible=True)
        self.set_active(key)

    def _grow_auto_range(self, layer: Layer) -> None:
        style = layer.style
        if not style.auto_range or math.isnan(layer.data_max) or layer.data_max <= style.vmin:
            return
        if layer.data_max > style.vmax or not layer.auto_ranged:
            # The first fit is tight; later ones grow geometrically while tiles finish.
            vmax = layer.data_max * (AUTO_RANGE_HEADROOM if layer.auto_ranged else 1.0)
            layer.auto_ranged = True
            self.set_style(layer.key, vmax=vmax, auto_range=True)

    def fit_range(self, key: LayerKey) -> None:
        """Set the range to the layer's data so far (0 .. max for non-negative maps)."""
        layer = self.layers.get(key)
        if layer is not None and not math.isnan(layer.data_max):
            vmin = min(0.0, layer.data_min)
            self.set_style(key, vmin=vmin, vmax=max(layer.data_max, vmin + 1e-12), auto_range=False)

    def _schedule_recolour(self, layer: Layer) -> None:
        if not layer.needs_recolour or layer.recolour_in_flight:
            return
        layer.needs_recolour = False
        layer.recolour_in_flight = True
        # No copy of the float map: only this (UI) thread writes it, and any region it
        # writes while the worker reads is listed in written_since_recolour and fixed up.
        self._submit(recolour, layer.values, layer.style, on_done=_RecolourDone(self, layer, layer.style.version),
                     on_error=self._recolour_failed)

    def _recolour_failed(self, message: str) -> None:
        # Only a bug gets here (recolour is plain numpy on a valid style); keep it visible.
        log.error("re-colouring a map layer failed: %s", message)

    def take_recolour(self, layer: Layer, version: int, bgra: np.ndarray) -> None:
        if self.layers.get(layer.key) is not layer:
            return  # the layer was replaced by a newer run meanwhile
        layer.take_recolour(version, bgra)
        self._schedule_recolour(layer)
        self.changed.emit(None)

    # -- reading -----------------------------------------------------------------------------
    def values_at(self, l0_x: float, l0_y: float) -> list[tuple[LayerKey, float]]:
        """(layer, value) of the visible layers under a level-0 point (None-valued ones left out)."""
        out = []
        for layer in self.layers.values():
            value = layer.value_at(l0_x, l0_y) if layer.style.visible else None
            if value is not None:
                out.append((layer.key, value))
        return out

    @property
    def painted(self) -> bool:
        """Every layer is coloured with its current style (no re-map running or owed)."""
        return all(not layer.recolour_in_flight and not layer.needs_recolour for layer in self.layers.values())


class _RecolourDone:
    """A re-map's result, bound to the layer and style version it was made for. A callable
    object rather than a lambda, so the background runner calls a plain bound method on
    the UI thread."""

    def __init__(self, stack: OverlayStack, layer: Layer, version: int) -> None:
        self.stack, self.layer, self.version = stack, layer, version

    def __call__(self, bgra: np.ndarray) -> None:
        self.stack.take_recolour(self.layer, self.version, bgra)
