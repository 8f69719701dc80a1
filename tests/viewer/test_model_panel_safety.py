"""The model panel (issue 15): a truncated or non-finite model is refused when it is chosen,
not at Run; the demo model's card says it knows only the synthetic demo slides."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings

from engine.api import demo_model_dir
from engine.io.checkpoints import ModelCard, build_model, save_checkpoint
from fake_engine import CLASSES, FakeRunner


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


def test_a_truncated_model_is_refused_when_chosen(qtbot, window, tmp_path):
    card_path = _model(tmp_path)
    weights = card_path.parent / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with qtbot.waitSignal(window.error_reported, timeout=20_000) as blocker:
        window.model_panel.model_chosen.emit(str(card_path))
    assert "sha256 mismatch" in blocker.args[0]
    assert window.model.path is None and not window.model_panel.slide_button.isEnabled()
    assert window.model_panel.status.text().startswith("Could not load the model:")


def test_the_demo_models_panel_says_it_knows_only_synthetic_slides(qtbot, window):
    with qtbot.waitSignal(window.live.card_loaded, timeout=20_000):
        window.model_panel.model_chosen.emit(str(demo_model_dir()))
    use = window.model_panel.card_fields["Intended use"].text()
    assert "synthetic demo slides" in use and "real" in use
    assert "intended_use" not in window.model_panel.card_fields["From"].text()
