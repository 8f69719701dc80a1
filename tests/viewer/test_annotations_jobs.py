"""Annotation file jobs: large files go through the helper process and come back the same,
errors included; the sidecar path falls back when the slide's folder is not writable."""

from __future__ import annotations

import numpy as np
import pytest

from engine.annotations import Annotation, AnnotationError, AnnotationSet, load_annotations
from viewer.workers import annotation_jobs
from viewer.workers.annotation_jobs import load_job, save_job, shutdown_helper, sidecar_path


@pytest.fixture
def big_set():
    t = np.linspace(0, 2 * np.pi, 30_000, endpoint=False)
    ring = np.column_stack([5000 + 4000 * np.cos(t), 5000 + 4000 * np.sin(t)])
    return AnnotationSet([Annotation.polygon(ring, class_name="Tumor", name="big")], classes={"Tumor": (1, 2, 3)})


def test_large_files_round_trip_through_the_helper_process(tmp_path, big_set, monkeypatch):
    submitted = []
    real_helper = annotation_jobs._helper
    monkeypatch.setattr(annotation_jobs, "_helper", lambda: submitted.append(1) or real_helper())
    try:
        path, version, warnings = save_job(big_set, str(tmp_path / "big.geojson"), 7)
        assert (version, warnings) == (7, ()) and len(submitted) == 1
        assert (tmp_path / "big.geojson").stat().st_size > annotation_jobs.IN_PROCESS_MAX_BYTES
        result = load_job(path)
        assert len(submitted) == 2
        assert result.annotations == load_annotations(path).annotations == big_set
        bad = tmp_path / "bad.geojson"
        bad.write_bytes(b"[" + b" " * (annotation_jobs.IN_PROCESS_MAX_BYTES + 10) + b'{"type": 3}]')
        with pytest.raises(AnnotationError, match="bad.geojson"):
            load_job(str(bad))
    finally:
        shutdown_helper()


def test_small_files_stay_in_this_process(tmp_path, monkeypatch):
    monkeypatch.setattr(annotation_jobs, "_helper", lambda: pytest.fail("a small file needs no helper process"))
    small = AnnotationSet([Annotation.point(1, 2)])
    path, _, _ = save_job(small, str(tmp_path / "sub" / "small.geojson"), 1)
    assert load_job(path).annotations == small


def test_sidecar_beside_the_slide_or_in_the_fallback_folder(tmp_path, monkeypatch):
    slide = tmp_path / "a.svs"
    assert sidecar_path(str(slide), str(tmp_path / "fb")) == tmp_path / "a.svs.annotations.geojson"
    monkeypatch.setattr(annotation_jobs.os, "access", lambda path, mode: False)
    assert sidecar_path(str(slide), str(tmp_path / "fb")) == tmp_path / "fb" / "a.svs.annotations.geojson"
    assert sidecar_path(str(slide), None) == tmp_path / "a.svs.annotations.geojson"
