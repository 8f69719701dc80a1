"""The demo's script: walks a main window through it, one event at a time on the UI thread.

Open the showcase slide (fitted), load the model, run the whole slide with saliency on, and show
the saliency layer when it arrives; once the run is done, hide the faint saliency so the salient
cells stand out. The driver sets the inference settings model and asks the live maps to run, as
the Model panel's buttons do; it reads no widget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.events import Finished
from viewer.model.layers import SALIENCY, LayerKey

#: Saliency cells below this are transparent: only exact zeros (pixels the class score does not
#: depend on at all; with a max-pool head, most of the slide), so the slide shows in its own
#: colours around the saliency instead of under the colormap's black.
NO_GRADIENT = 1e-30
#: Once the run is done, saliency below this share of its maximum is hidden.
SALIENCY_SHOWN_FROM = 0.1


class DemoDriver(QObject):
    """Drives ``window`` (a :class:`viewer.main_window.MainWindow`) through the demo;
    ``result`` / ``failure`` hold how it ended."""

    run_started = Signal(object)  # Job
    finished = Signal(object)  # Finished
    failed = Signal(str)

    def __init__(self, window, slide_path: Path, model_path: Path) -> None:
        super().__init__(window)
        self.window, self.live = window, window.live
        self.slide_key = str(Path(slide_path).resolve())
        self.model_path = str(model_path)
        self.job = None
        self.result: Finished | None = None
        self.failure: str | None = None
        self.saliency_shown = False
        self._model_requested = False
        window.slides.slide_shown.connect(self._on_slide_shown)
        self.live.card_loaded.connect(self._on_card_loaded)
        self.live.job_finished.connect(self._on_job_finished)
        self.live.job_failed.connect(self._on_job_failed)
        window.error_reported.connect(self._on_error)

    def start(self) -> None:
        self.window.slides.show_or_open(self.slide_key)  # opened on a worker; slide_shown follows

    def _on_slide_shown(self, key: str) -> None:
        if key != self.slide_key or self._model_requested:
            return
        self._model_requested = True
        self.window.view.fit()
        stack = self.live.stack_for(key)
        stack.set_style(SALIENCY, threshold=NO_GRADIENT)  # before any patch: coloured so from the first
        self.live.layer_revealed.connect(self._on_layer_revealed)
        self.live.reveal_when_ready(key, SALIENCY)
        self.live.load_model(self.model_path)  # card read on a worker; card_loaded follows

    def _on_card_loaded(self, path: str) -> None:
        if path != self.model_path or self.job is not None:
            return
        self.live.settings.set(saliency=True)
        self.job = self.live.run("slide")
        if self.job is None:
            self._fail("the whole-slide run could not be started (no slide or no model shown)")
            return
        self.run_started.emit(self.job)

    def _on_layer_revealed(self, path: str, key: LayerKey) -> None:
        if path == self.slide_key and key == SALIENCY:
            self.saliency_shown = True

    def _on_job_finished(self, job, finished: Finished) -> None:
        if self.job is None or job.job_id != self.job.job_id:
            return
        stack = self.live.stack_for(self.slide_key)
        layer = stack.layers.get(SALIENCY)
        if layer is not None and layer.data_max > 0:
            # A max-pooled head's gradient reaches a few cells strongly and many faintly;
            # the faint ones drew dark squares all over the tissue. The threshold is in the
            # Overlays panel for the user to lower.
            threshold = SALIENCY_SHOWN_FROM * float(layer.data_max)
            shown = layer.values[np.isfinite(layer.values) & (layer.values >= threshold)]
            # Colours span the shown cells' 95th percentile, not the one strongest cell (the
            # live range also kept headroom for values still to come).
            top = float(np.percentile(shown, 95)) if shown.size else float(layer.data_max)
            stack.set_style(SALIENCY, threshold=threshold, vmin=0.0, vmax=max(top, threshold * 1.01), auto_range=False)
        self.result = finished
        self.finished.emit(finished)

    def _on_job_failed(self, job, message: str) -> None:
        if self.job is not None and job.job_id == self.job.job_id:
            self._fail(message)

    def _on_error(self, message: str) -> None:
        if self.job is None:  # the slide or the model card could not be read: nothing will run
            self._fail(message)

    def _fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
            self.failed.emit(message)
