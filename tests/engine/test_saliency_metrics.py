"""Saliency localisation scores used by bench/resolution.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.metrics import saliency_localisation


def test_a_map_on_the_lesion_scores_one_and_an_even_map_scores_the_lesion_share():
    lesion = np.zeros((10, 10), bool)
    lesion[2:4, 5:9] = True  # 8 of 100 cells
    on_target = lesion * 3.0
    perfect = saliency_localisation(on_target, lesion)
    assert perfect["mass_in_lesion"] == 1.0 and perfect["pixel_auc"] == 1.0 and perfect["lesion_share"] == 0.08
    even = saliency_localisation(np.ones((10, 10)), lesion)
    assert even["mass_in_lesion"] == pytest.approx(0.08) and even["pixel_auc"] == 0.5


def test_signs_do_not_cancel_and_glass_is_left_out():
    lesion = np.zeros((4, 4), bool)
    lesion[0, 0] = True
    saliency = np.full((4, 4), 0.1)
    saliency[0, 0] = -1.0  # a gradient's sign says which way, not where: magnitudes count
    tissue = np.zeros((4, 4), bool)
    tissue[:2, :2] = True
    score = saliency_localisation(saliency, lesion, tissue)
    assert score["mass_in_lesion"] == pytest.approx(1.0 / 1.3) and score["lesion_share"] == 0.25
    assert score["pixel_auc"] == 1.0


def test_no_lesion_gives_nan_auc_and_shapes_must_match():
    assert math.isnan(saliency_localisation(np.ones((3, 3)), np.zeros((3, 3), bool))["pixel_auc"])
    with pytest.raises(ValueError, match="differ in shape"):
        saliency_localisation(np.ones((3, 3)), np.zeros((2, 3), bool))
