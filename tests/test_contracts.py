"""The one direction of DESIGN.md at run time: importing every engine module loads no Qt.

The static rules (engine never imports Qt or the viewer, the viewer only the engine's public
modules, no cycles) are import-linter contracts in pyproject.toml, checked by `make test`. This
test adds what a static graph cannot see: a third-party package that pulls Qt in transitively.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "viewer", "shiboken6")


def test_importing_every_engine_module_loads_no_qt():
    code = (
        "import importlib, pkgutil, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    if m.name.endswith('__main__'): continue\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_importing_the_viewer_model_loads_no_qt_and_no_torch():
    code = (
        "import importlib, pkgutil, sys, viewer.model\n"
        "for m in pkgutil.walk_packages(viewer.model.__path__, 'viewer.model.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6', 'pyqtgraph', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
