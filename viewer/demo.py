"""``make demo`` / ``streamslide-demo`` / ``python -m viewer.demo``: the viewer on a positive demo
slide with the bundled model, its prediction and saliency maps growing live.

Before any window exists, the showcase slide (``engine.api.showcase_slide``) is generated
into the slide cache if it is not there yet (a few seconds, once), and the model is loaded once
to check it. Then:

* with a display, the window opens on the slide fitted to the view, the model is loaded into
  the *Model* panel and a whole-slide run with saliency starts; once saliency arrives it is the
  shown and selected overlay layer. The window stays open for the user.
* without one (or with ``--headless``), the same window runs offscreen; when the run is done,
  the maps (``maps.npz``, a TIFF per layer, ``prediction.json``) and ``demo-view.png`` (the
  view with overlay and legend) are written to ``--out`` and the prediction is printed.

Slides are read and the model runs on the window's workers, as in the viewer; the UI thread
only waits for events. Exit codes: 0 done, 2 bad arguments, 3 the model is missing or does not
load, 4 the run failed or timed out, 5 the demo slide could not be generated, 6 the results
could not be written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, TextIO

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, QSettings, QTimer

from engine.api import check_model as load_and_check
from engine.api import demo_cache_dir, demo_model_dir, ensure_demo_slides, showcase_slide
from engine.errors import CheckpointError
from engine.events import Progress
from viewer.app import application, show_for_user
from viewer.controllers.demo import DemoDriver
from viewer.main_window import MainWindow
from viewer.workers.gc_pauses import freeze_long_lived

EXIT_OK = 0
EXIT_MODEL = 3
EXIT_JOB = 4
EXIT_SLIDE = 5
EXIT_OUTPUT = 6
REBUILD_MODEL = "python resources/train_demo_model.py"
VIEW_PNG = "demo-view.png"
#: The offscreen window: the view inside it (about 900 x 900 px beside the docks) is the PNG.
HEADLESS_WINDOW = (1600, 1000)
#: The bundled model, resolved once: ``--model``'s default and what "bundled" means below.
DEMO_MODEL_DIR = demo_model_dir()


class DemoError(Exception):
    """The demo cannot go on; the message says why and what to do."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def wants_window(env: Mapping[str, str], platform: str = sys.platform) -> bool:
    """True when a window can be shown: a display (X11 or Wayland; always on macOS and Windows)
    and Qt not told to render offscreen."""
    if env.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return False
    return platform in ("darwin", "win32") or bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamslide-demo", description=(
        "Open the viewer on a positive demo slide with the bundled model; its prediction and saliency maps grow "
        "live. Without a display (or with --headless) the maps and a PNG of the view are written to --out."))
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="headless results folder (default: ./demo-output)")
    parser.add_argument("--cache", type=Path, help=f"demo slide folder (default: {demo_cache_dir()}; STREAMSLIDE_CACHE moves it)")
    parser.add_argument("--headless", action="store_true", help="write the results and exit even with a display")
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--timeout", type=float, default=900.0, help="headless: seconds to wait for the run (default: 900)")
    return parser.parse_args(argv)


# -- before any window ------------------------------------------------------------------------
def prepare_slide(cache: Path | None, out: TextIO) -> Path:
    """The showcase slide's path, generating it into ``cache`` when missing (one line on ``out``)."""
    slide = showcase_slide()
    root = Path(cache) if cache is not None else demo_cache_dir()
    started = time.perf_counter()
    generating: list[str] = []

    def announce(_index: int, _total: int, name: str) -> None:
        generating.append(name)
        print(f"Generating the demo slide {name}.svs (4096 x 4096 px, once) in {root} ...", end=" ", file=out, flush=True)

    try:
        root = ensure_demo_slides(root, slides=[slide], progress=announce, labels=False)
    except OSError as exc:
        raise DemoError(EXIT_SLIDE, f"Could not write the demo slide into {root}: {exc}. "
                                    "Free some disk space or choose another folder with --cache.") from exc
    path = slide.path(root)
    if generating:
        print(f"done in {time.perf_counter() - started:.1f} s", file=out, flush=True)
    else:
        print(f"Demo slide: {path} (cached)", file=out, flush=True)
    return path


def check_model(path: Path, out: TextIO) -> None:
    """Load the checkpoint once (off any window; it imports torch); DemoError(EXIT_MODEL) naming
    the file if it fails."""
    bundled = Path(path).resolve() == DEMO_MODEL_DIR.resolve()
    try:
        card = load_and_check(path)
    except CheckpointError as exc:
        what = "The bundled demo model" if bundled else "The model"
        fix = (f"Rebuild it with `{REBUILD_MODEL}` (it writes model.safetensors and model.json there)." if bundled else
               "Pass a checkpoint folder holding model.json and model.safetensors, or leave out --model to use the "
               f"bundled one ({DEMO_MODEL_DIR}).")
        raise DemoError(EXIT_MODEL, f"{what} at {path} is missing or does not load:\n  {exc}\n{fix}") from exc
    print(f"Model: {path} ({card.architecture}, classes {', '.join(card.classes)})", file=out, flush=True)


# -- the window ----------------------------------------------------------------------------------
def open_demo_window(slide_path: Path, model_path: Path, *, settings: QSettings, headless: bool) -> DemoDriver:
    """Make the main window, show it (offscreen at :data:`HEADLESS_WINDOW` when ``headless``,
    else at 95 % of the screen) and start the demo in it. Returns the driver (``.window``)."""
    app = application()
    window = MainWindow(settings=settings, popups=not headless)
    if headless:
        window.resize(*HEADLESS_WINDOW)
        window.show()
    else:
        show_for_user(app, window)
    driver = DemoDriver(window, slide_path, model_path)
    driver.start()
    return driver


# -- headless ------------------------------------------------------------------------------------
def wait_until(condition, timeout_s: float, what: str, exit_code: int = EXIT_JOB) -> None:
    """Run the event loop until ``condition()`` holds; DemoError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    wake = QTimer(interval=100)  # the loop sleeps until an event arrives: this one checks the clock
    wake.start()
    try:
        while not condition():
            if time.monotonic() > deadline:
                raise DemoError(exit_code, f"Gave up after {timeout_s:g} s waiting for {what}.")
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
    finally:
        wake.stop()


class _Outputs(QObject):
    """What the window's workers report back while the results are written (bound slots)."""

    def __init__(self, window: MainWindow, out: TextIO) -> None:
        super().__init__(window)
        self.out = out
        self.maps: dict[str, str] | None = None
        self.png: str | None = None
        self.phase: str | None = None
        window.live.maps_written.connect(self._on_maps)
        window.slides.export_done.connect(self._on_png)
        window.live.job_progress.connect(self._on_progress)

    def _on_maps(self, written: dict) -> None:
        self.maps = written

    def _on_png(self, path: str) -> None:
        self.png = path

    def _on_progress(self, _job, progress: Progress) -> None:
        if progress.phase != self.phase:  # one line per phase: enough to show it is moving
            self.phase = progress.phase
            print(f"  {progress.phase}: {progress.total} tiles ({progress.elapsed_s:.1f} s so far)", file=self.out, flush=True)


def describe_output(kind: str) -> str:
    """What a file of ``engine.api.write_maps`` holds, from its kind ("maps_npz", ...)."""
    if kind == "maps_npz":
        return "float maps: class probabilities and saliency, with their level-0 boxes"
    if kind == "prediction_json":
        return "slide-level prediction"
    if kind.endswith("_values_tiff"):
        return f"{kind.removesuffix('_values_tiff').replace('_', ' ')} map, float TIFF registered to the slide"
    return f"{kind.removesuffix('_heatmap_tiff').replace('_', ' ')} map, colour-mapped TIFF registered to the slide"


def run_headless(driver: DemoDriver, out_dir: Path, timeout_s: float, out: TextIO) -> int:
    """Wait for the run, then write the maps and the view PNG into ``out_dir``; print the prediction."""
    window = driver.window
    outputs = _Outputs(window, out)
    started = time.perf_counter()
    print("Running the model on the whole slide (offscreen) ...", file=out, flush=True)
    wait_until(lambda: driver.result is not None or driver.failure is not None, timeout_s, "the model run")
    if driver.failure is not None:
        raise DemoError(EXIT_JOB, f"The model run failed: {driver.failure}")
    if driver.result.cancelled:
        raise DemoError(EXIT_JOB, "The model run was cancelled before it finished.")
    print(f"Run done in {time.perf_counter() - started:.1f} s", file=out, flush=True)

    view, stack = window.view, window.live.stack
    errors_before = len(window.errors)

    def painted() -> bool:  # every visible tile read and filtered, every layer coloured with its final style
        return stack.painted and not view.moving and not view.missing_visible_tiles()

    def failed_or(done) -> bool:
        if len(window.errors) > errors_before:
            raise DemoError(EXIT_OUTPUT, f"Could not write the results: {window.errors[-1]}")
        return done()

    wait_until(lambda: failed_or(painted), 120, "the view to be painted", EXIT_OUTPUT)
    window.live.export_maps(str(out_dir))
    wait_until(lambda: failed_or(lambda: outputs.maps is not None), 120, "the maps to be written", EXIT_OUTPUT)
    window.export_view(str(out_dir / VIEW_PNG))
    wait_until(lambda: failed_or(lambda: outputs.png is not None), 60, f"{VIEW_PNG} to be written", EXIT_OUTPUT)

    prediction = driver.result.prediction
    if prediction is not None:
        ranked = sorted(zip(prediction.classes, prediction.probabilities, strict=True), key=lambda cp: -cp[1])
        print(f"Slide-level prediction: {prediction.label} (" + ", ".join(f"{c} {p:.3f}" for c, p in ranked) + ")", file=out)
    print(f"Wrote into {out_dir}:", file=out)
    print(f"  {outputs.png}  (the view: saliency overlay and its legend)", file=out)
    for kind, path in outputs.maps.items():
        print(f"  {path}  ({describe_output(kind)})", file=out)
    out.flush()
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    headless = args.headless or not wants_window(os.environ)
    if headless and QCoreApplication.instance() is None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # this process only: no window pops up
    try:
        check_model(args.model, out)  # first: a missing model should not wait for a slide
        slide = prepare_slide(args.cache, out)
        if headless:
            try:
                args.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DemoError(EXIT_OUTPUT, f"Cannot create the output folder {args.out}: {exc}; choose another with --out.") from exc
    except DemoError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    if not headless:
        app = application()
        driver = open_demo_window(slide, args.model, settings=QSettings("StreamSlide", "viewer"), headless=False)
        print("The viewer is open: the prediction map grows on the slide, then the saliency map. Close the window to quit.", file=out, flush=True)
        freeze_long_lived()
        return app.exec()

    with tempfile.TemporaryDirectory(prefix="streamslide-demo-") as tmp:
        # A throw-away settings file: a headless run leaves the user's recent files alone.
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        driver = open_demo_window(slide, args.model, settings=settings, headless=True)
        try:
            return run_headless(driver, args.out, args.timeout, out)
        except DemoError as exc:
            print(exc, file=sys.stderr)
            return exc.exit_code
        finally:
            settings.sync()  # nothing is pending when the folder goes
            driver.window.shutdown()  # cancels and waits for every worker
            driver.window.close()
            driver.window.deleteLater()


if __name__ == "__main__":
    sys.exit(main())
