"""PNG exports go through the engine's atomic writer: the usual permissions, nothing
half-written, and a clear message when the folder cannot hold the file."""

from __future__ import annotations

import os

import pytest
from PySide6.QtGui import QColor, QImage

from engine.errors import ResultsError
from viewer.workers.export import save_png


@pytest.fixture
def image():
    img = QImage(32, 16, QImage.Format.Format_ARGB32)
    img.fill(QColor(10, 200, 30))
    return img


def test_a_png_export_is_written_whole_with_the_usual_permissions(qapp, image, tmp_path):
    old = os.umask(0o022)
    try:
        out = save_png(image, str(tmp_path / "view.png"))
    finally:
        os.umask(old)
    written = QImage(out)
    assert (written.width(), written.height()) == (32, 16) and QColor(written.pixel(3, 3)).green() == 200
    assert os.stat(out).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.png"]  # no temporary file left


def test_a_png_export_into_a_file_path_says_what_is_in_the_way(qapp, image, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(ResultsError, match="not-a-folder"):
        save_png(image, str(blocker / "view.png"))
    assert blocker.read_text() == "x"
