"""The *Score against annotations* panel against a hand-computed case: a 4 x 4 map and a square
outline; the scores follow the outline's edits, the class chosen and the layer shown, and are
computed on a worker."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PySide6.QtCore import QTimer

from engine.annotations import Annotation
from engine.geometry import Box, MapGeometry
from viewer.controllers.scoring import Scoring
from viewer.model.annotations import AnnotationDocument
from viewer.model.layers import SALIENCY, LayerKey
from viewer.model.overlays import OverlayStack, finite_range
from viewer.widgets.score_panel import ScorePanel
from viewer.workers import score_jobs
from viewer.workers.background import BackgroundRunner

GRID = MapGeometry(Box(0, 0, 40, 40), (4, 4))  # cells of 10 x 10 level-0 px
SALIENCY_VALUES = np.array([[1, 1, 0, 0],
                            [1, 1, 0, 0],
                            [0, 0, 0, 0],
                            [0, 0, 0, 2]], np.float32)
TUMOUR = LayerKey("prediction", "tumour")


@pytest.fixture
def panel(qtbot):
    runner = BackgroundRunner(workers=1)
    stack = OverlayStack(runner.submit, lambda f: QTimer.singleShot(0, f))
    stack.add_layer(SALIENCY, GRID, SALIENCY_VALUES, finite_range(SALIENCY_VALUES))
    tumour = np.full((4, 4), 0.5, np.float32)
    tumour[3, 3] = np.nan  # not computed: not scored
    stack.add_layer(TUMOUR, GRID, tumour, finite_range(tumour))
    stack.set_active(SALIENCY)
    doc = AnnotationDocument()
    doc.add([Annotation.rectangle(Box(0, 0, 20, 20), class_name="Tumor"),
             Annotation.rectangle(Box(20, 0, 40, 10), class_name="Stroma")])
    scoring = Scoring(lambda: None)
    widget = ScorePanel(scoring)
    qtbot.addWidget(widget)
    scoring.set_stack(stack)
    scoring.set_document(doc)
    yield widget, scoring, stack, doc
    scoring.shutdown()
    runner.shutdown()


def _next(qtbot, scoring, action=None):
    with qtbot.waitSignal(scoring.scored, timeout=10_000) as got:
        if action is not None:
            action()
    return got.args[0]


def test_scores_match_the_hand_computed_case_and_follow_the_edits(qtbot, panel):
    widget, scoring, stack, doc = panel
    assert widget.class_combo.currentText() == "Tumor"  # CAMELYON's tumour class is chosen first
    result = scoring.last or _next(qtbot, scoring)
    # Inside: the top-left 2 x 2 cells, mass 4 of 6; 4 of 16 cells; AUC: each inside 1 beats the
    # 11 outside zeros and loses to the outside 2: 11/12.
    assert result["layer"] == "saliency" and result["class"] == "Tumor"
    assert result["mass_inside"] == pytest.approx(4 / 6) and result["even_share"] == pytest.approx(4 / 16)
    assert result["pixel_auc"] == pytest.approx(11 / 12)
    assert (result["cells"], result["cells_inside"]) == (16, 4)
    qtbot.waitUntil(lambda: widget.fields["Mass inside"].text() == "66.7 %")
    assert widget.fields["Even map"].text() == "25.0 %" and widget.fields["Pixel AUC"].text() == "0.917"
    assert widget.fields["Lift"].text() == "2.667×"

    # The outline moves onto the bottom-right cell: mass 2 of 6, 1 of 16 cells, AUC 1.
    result = _next(qtbot, scoring, lambda: doc.move([0], 30, 30))
    assert result["mass_inside"] == pytest.approx(2 / 6) and result["even_share"] == pytest.approx(1 / 16)
    assert result["pixel_auc"] == pytest.approx(1.0)

    # Another class: the Stroma strip covers cells (0, 2) and (0, 3), both 0.
    widget.class_combo.setCurrentIndex(widget.class_combo.findText("Stroma"))
    result = _next(qtbot, scoring, lambda: widget.class_combo.activated.emit(widget.class_combo.currentIndex()))
    assert result["class"] == "Stroma" and result["mass_inside"] == 0 and result["even_share"] == pytest.approx(2 / 16)

    # Another layer shown: the prediction's NaN cell is left out.
    result = _next(qtbot, scoring, lambda: stack.set_active(TUMOUR))
    assert result["layer"] == "prediction: tumour" and (result["cells"], result["cells_inside"]) == (15, 2)
    assert result["mass_inside"] == pytest.approx(2 / 15)


def test_scoring_runs_on_a_worker_and_says_when_there_is_nothing_to_score(qtbot, panel, monkeypatch):
    widget, scoring, stack, doc = panel
    threads = []
    real = score_jobs.score_plane

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(score_jobs, "score_plane", spy)
    _next(qtbot, scoring, scoring.refresh)
    assert threads and threading.main_thread() not in threads
    with qtbot.waitSignal(scoring.unavailable, timeout=10_000) as why:
        doc.delete(range(len(doc)))
    assert "annotations with an area" in why.args[0]
    qtbot.waitUntil(lambda: "annotations with an area" in widget.status.text())
    assert widget.fields["Mass inside"].text() == "—"


def test_a_choice_scores_at_once_and_live_changes_stay_throttled(qtbot, panel):
    """A choice the user makes scores when the event loop turns; map changes after it are still
    gathered for REFRESH_MS (an earlier version left the throttle at 0 ms after the first choice,
    so a live run rescored on every patch)."""
    from viewer.controllers.scoring import REFRESH_MS

    _, scoring, _, _ = panel
    _next(qtbot, scoring, lambda: scoring.set_class("Stroma"))
    assert scoring._timer.interval() == REFRESH_MS
    scoring._on_map_changed()
    assert scoring._timer.isActive() and scoring._timer.interval() == REFRESH_MS
