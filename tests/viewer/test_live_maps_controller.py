"""viewer.controllers.live_maps without any widget: it reads the models (settings, model choice,
the shown slide's viewport) to build specs, keeps one overlay stack per slide, queues and
supersedes jobs, reports failures, and round-trips map files. The runner is the fake engine."""

from __future__ import annotations

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from fake_engine import CLASSES, FakeRunner, cell_value

from engine.geometry import Box
from engine.io.checkpoints import ModelCard, build_model, save_checkpoint
from viewer.controllers.live_maps import LiveMaps
from viewer.model.inference import InferenceSettings, ModelChoice
from viewer.model.layers import SALIENCY, LayerKey
from viewer.model.viewport import Viewport
from viewer.model.workspace import RecentFiles, Workspace

TUMOUR = LayerKey("prediction", "tumour")


class Harness:
    """The controller with its models, as the main window composes them (no widgets)."""

    def __init__(self, runner) -> None:
        self.workspace = Workspace(RecentFiles())
        self.settings = InferenceSettings()
        self.model = ModelChoice(RecentFiles())
        self.errors: list[str] = []
        self.runner = runner
        self.live = LiveMaps(self.workspace, self.settings, self.model, self.errors.append, runner)

    def show(self, key: str, l0_size=(4096, 3072)) -> None:
        if key not in self.workspace.slides:
            source = SimpleNamespace(dimensions=l0_size, mpp=(0.5, 0.5))  # header fields only: no pixels are read
            self.workspace.add(key, SimpleNamespace(slide_id=len(self.workspace.slides) + 1, source=source))
            self.workspace.slides[key].viewport = Viewport(*l0_size, 800, 600)
        self.workspace.show(key)

    @property
    def viewport(self) -> Viewport:
        return self.workspace.current.viewport


@pytest.fixture
def gate():
    gate = threading.Event()
    yield gate
    gate.set()


@pytest.fixture
def harness(qtbot, gate):
    h = Harness(FakeRunner(gate=gate))
    h.show("/slides/a.svs")
    h.model.loaded("/models/m/model.json", SimpleNamespace(classes=CLASSES))
    yield h
    h.live.shutdown()


def test_runs_take_the_settings_and_the_viewport_from_the_models(qtbot, harness, gate):
    gate.set()
    harness.settings.set(device="cpu", saliency=False, low_memory=True)
    harness.viewport.set_scale(0.5)
    harness.viewport.center_on(1000, 800)
    with qtbot.waitSignal(harness.live.job_finished, timeout=10_000) as done:
        job = harness.live.run("view")
    spec = harness.runner.calls[-1]
    assert job.label == "a.svs · view" and done.args[0] is job and not done.args[1].cancelled
    assert (spec.slide_path, spec.model_path, spec.device, spec.saliency, spec.low_memory) == (
        "/slides/a.svs", "/models/m/model.json", "cpu", False, True)
    vis = harness.viewport.l0_visible_box()
    assert Box.of(spec.l0_region) == vis.outer_int()
    stack = harness.live.stack
    assert set(stack.layers) == {LayerKey("prediction", "normal"), TUMOUR}  # saliency was off
    assert stack.layers[TUMOUR].value_at(vis.x0 + 10, vis.y0 + 10) == pytest.approx(cell_value(0, 0))
    assert harness.live.values_at((vis.x0 + 10, vis.y0 + 10)) == [(TUMOUR, pytest.approx(cell_value(0, 0)))]
    assert harness.live.can_export_maps


def test_nothing_runs_without_a_model_or_a_slide(qtbot, gate):
    h = Harness(FakeRunner(gate=gate))
    try:
        h.show("/slides/a.svs")
        assert h.live.run("slide") is None  # no model yet
        h.model.loaded("/m.json", SimpleNamespace(classes=CLASSES))
        assert h.model.runnable
        h.workspace.close_current()
        assert h.live.run("slide") is None and not h.model.runnable and not h.live.can_load_maps
        assert not h.runner.calls
    finally:
        h.live.shutdown()


def test_a_region_run_waits_for_its_rectangle(qtbot, harness, gate):
    gate.set()
    assert harness.live.run("region") is None and harness.settings.region_mode  # the view draws next
    with qtbot.waitSignal(harness.live.job_finished, timeout=10_000):
        job = harness.live.run_region(Box(1000, 900, 2000, 1600))
    assert not harness.settings.region_mode and job.label == "a.svs · region"
    assert Box.of(harness.runner.calls[-1].l0_region) == Box(1000, 900, 2000, 1600)


def test_a_new_run_on_the_same_slide_supersedes_the_old_one(qtbot, harness, gate):
    first = harness.live.run("slide")
    qtbot.waitUntil(lambda: harness.runner.patches_sent == 1, timeout=10_000)
    second = harness.live.run("view")
    assert first.token.cancelled and first.superseded and not second.superseded
    with qtbot.waitSignal(harness.live.job_finished, timeout=10_000, check_params_cb=lambda job, fin: job is second):
        gate.set()
    assert harness.live.stack.generation == second.generation


def test_jobs_on_other_slides_queue_and_keep_their_own_maps(qtbot, harness, gate):
    queued = []
    harness.live.queue_changed.connect(queued.append)
    first = harness.live.run("slide")
    qtbot.waitUntil(lambda: first.state == "running", timeout=10_000)  # the worker's word reached the UI thread
    harness.show("/slides/b.svs", l0_size=(1024, 1024))
    second = harness.live.run("view")
    assert second.state == "queued" and queued[-1] == 1
    finished = []
    harness.live.job_finished.connect(lambda job, fin: finished.append(job))
    gate.set()
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=20_000)
    assert finished == [first, second] and queued[-1] == 0
    assert harness.live.stacks["/slides/b.svs"].layers[TUMOUR].geometry.l0_box.x1 <= 1024
    assert harness.live.stacks["/slides/a.svs"].layers[TUMOUR].geometry.l0_box.x1 == 4096


def test_closing_a_slide_cancels_its_jobs_and_drops_its_maps(qtbot, harness, gate):
    job = harness.live.run("slide")
    qtbot.waitUntil(lambda: harness.runner.patches_sent == 1, timeout=10_000)
    harness.workspace.close_current()
    assert job.token.cancelled and job.superseded and "/slides/a.svs" not in harness.live.stacks
    assert harness.live.stack is None
    gate.set()
    qtbot.waitUntil(lambda: harness.live.jobs.running is None and not harness.live.jobs.jobs, timeout=10_000)


@pytest.mark.parametrize("kind", ["model", "slide"])
def test_runner_errors_are_reported(qtbot, kind):
    h = Harness(FakeRunner(fail=kind))
    try:
        h.show("/slides/a.svs")
        h.model.loaded("/m.json", SimpleNamespace(classes=CLASSES))
        with qtbot.waitSignal(h.live.job_failed, timeout=10_000) as failed:
            h.live.run("slide")
        assert ("not a StreamSlide model" if kind == "model" else "could not be read") in failed.args[1]
        assert h.errors and h.errors[-1].startswith("The model run on a.svs failed.")
    finally:
        h.live.shutdown()


def test_reveal_waits_for_a_queued_job_then_shows_only_its_layer(qtbot, harness, gate):
    first = harness.live.run("slide")
    qtbot.waitUntil(lambda: first.state == "running", timeout=10_000)
    harness.show("/slides/b.svs", l0_size=(1024, 1024))
    second = harness.live.run("view")
    assert second.state == "queued"  # so the reveal waits for its start
    revealed = []
    harness.live.layer_revealed.connect(lambda path, key: revealed.append((path, key)))
    harness.live.reveal_when_ready("/slides/b.svs", SALIENCY, second)
    gate.set()
    qtbot.waitUntil(lambda: bool(revealed), timeout=20_000)
    stack = harness.live.stacks["/slides/b.svs"]
    assert revealed == [("/slides/b.svs", SALIENCY)] and stack.active == SALIENCY
    assert [k for k in stack.layers if stack.style_for(k).visible] == [SALIENCY] and first.state == "done"
    qtbot.waitUntil(lambda: second.state == "done", timeout=10_000)


def test_maps_round_trip_through_files(qtbot, harness, gate, tmp_path):
    gate.set()
    with qtbot.waitSignal(harness.live.job_finished, timeout=10_000):
        harness.live.run("slide")
    stack = harness.live.stack
    saved = {key: layer.values.copy() for key, layer in stack.layers.items()}
    with qtbot.waitSignal(harness.live.maps_written, timeout=30_000) as written:
        harness.live.export_maps(str(tmp_path / "maps"))
    assert {"maps_npz", "prediction_json", "saliency_heatmap_tiff", "saliency_values_tiff"} <= set(written.args[0])
    # Registered to the slide: the float TIFF spans the slide's level-0 size at the map's cell size.

    layer = stack.layers[SALIENCY]
    cell = layer.geometry.l0_box.width / layer.values.shape[1]
    slide_w, slide_h = harness.workspace.current.shared.source.dimensions
    with tifffile.TiffFile(written.args[0]["saliency_values_tiff"]) as tif:
        assert tif.pages[0].shape == (math.ceil(slide_h / cell), math.ceil(slide_w / cell))
    with qtbot.waitSignal(harness.live.maps_loaded, timeout=30_000):
        harness.live.load_maps(written.args[0]["maps_npz"])
    assert set(stack.layers) == set(saved) and stack.generation < 0  # never a job's generation
    for key, values in saved.items():
        np.testing.assert_array_equal(stack.layers[key].values, values)
    qtbot.waitUntil(lambda: stack.painted, timeout=10_000)


def test_model_cards_are_read_on_a_worker_into_the_model_choice(qtbot, harness, tmp_path):
    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", input_mpp=0.5, tile_size=512,
                     model_kwargs={"width": 4})
    good = save_checkpoint(tmp_path / "good", build_model(card), card)
    with qtbot.waitSignal(harness.live.card_loaded, timeout=10_000):
        harness.live.load_model(str(good))
    assert harness.model.path == str(good) and harness.model.card.architecture == "smallnet"
    assert harness.model.recent.paths[0] == str(good.resolve()) and harness.model.error is None
    bad = tmp_path / "bad" / "model.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    harness.live.load_model(str(bad))
    qtbot.waitUntil(lambda: harness.model.error is not None, timeout=10_000)
    assert harness.model.path == str(good) and harness.errors[-1].startswith("Could not load the model.")
