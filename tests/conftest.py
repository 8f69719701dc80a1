"""Shared fixtures. Qt must be told to render offscreen before any QApplication exists."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

SHARED_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture
def real_slide_path() -> Path:
    """The real H&E slide CI puts beside the checkout; skipped on a plain clone."""
    if not SHARED_SLIDE.exists():
        pytest.skip(f"real slide not present at {SHARED_SLIDE} (only CI and dev machines have ../shared)")
    return SHARED_SLIDE
