"""The model panel (issue 15): a truncated or non-finite model is refused when it is chosen,
not at Run; the demo model's card says it knows only the synthetic demo slides."""

from __future__ import annotations

import pytest
from fake_engine import CLASSES, FakeRunner
from PySide6.QtCore import QSettings

from engine.api import demo_model_dir
from engine.io.checkpoints import ModelCard, build_model, save_checkpoint


@pytest.fixture
def window(qtbot, tmp_path):
    from viewer.main_window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, cache_bytes=64 * 2**20, popups=False, runner=FakeRunner())
    qtbot.addWidget(win)
    yield win
    win.shutdown()


def _model(tmp_path):
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", model_kwargs={"width": 4})
    return save_checkpoint(tmp_path / "model", build_model(card), card)


def _truncate(card_path):
    weights = card_path.parent / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])


def _nan_weights(card_path):
    """NaN weights with a matching sha256 (as a diverged run exported by hand would be)."""
    import hashlib
    import json

    import safetensors.torch
    import torch

    weights = card_path.parent / "model.safetensors"
    state = safetensors.torch.load(weights.read_bytes())
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    data = safetensors.torch.save(state)
    weights.write_bytes(data)
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "sha256": hashlib.sha256(data).hexdigest()}))


@pytest.mark.parametrize("damage, words", [(_truncate, "sha256 mismatch"), (_nan_weights, "non-finite values")])
def test_a_damaged_model_is_refused_when_chosen(qtbot, window, tmp_path, damage, words):
    card_path = _model(tmp_path)
    damage(card_path)
    with qtbot.waitSignal(window.error_reported, timeout=20_000) as blocker:
        window.model_panel.model_chosen.emit(str(card_path))
    assert words in blocker.args[0]
    assert window.model.path is None and not window.model_panel.slide_button.isEnabled()
    assert window.model_panel.status.text().startswith("Could not load the model:")


def test_the_demo_models_panel_says_it_knows_only_synthetic_slides(qtbot, window):
    with qtbot.waitSignal(window.live.card_loaded, timeout=20_000):
        window.model_panel.model_chosen.emit(str(demo_model_dir()))
    use = window.model_panel.card_fields["Intended use"].text()
    assert "synthetic demo slides" in use and "real" in use
    assert "intended_use" not in window.model_panel.card_fields["From"].text()
