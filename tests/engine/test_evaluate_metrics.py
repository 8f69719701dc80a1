"""Cohort metrics checked against values computed by hand on a fixed predictions file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine import metrics as m
from engine.evaluate.files import predictions_text, read_predictions
from engine.evaluate.report import cohort_metrics, format_table

BINARY = """slide,patient,label,pred_label,prob_benign,prob_tumour
s1,pA,benign,benign,0.9,0.1
s2,pA,benign,benign,0.6,0.4
s3,pB,benign,benign,0.65,0.35
s4,pC,tumour,tumour,0.2,0.8
s5,pC,tumour,benign,0.7,0.3
s6,pD,tumour,tumour,0.1,0.9
"""
REGRESSION = """slide,ki67,pred_ki67
s1,1,1.5
s2,2,1.4
s3,3,3.5
s4,4,3.9
s5,5,6.0
"""


@pytest.fixture
def binary(tmp_path):
    (tmp_path / "p.csv").write_text(BINARY)
    return read_predictions(tmp_path / "p.csv", "classification")


def test_binary_auc_accuracy_balanced_accuracy_and_confusion_by_hand(binary):
    result = cohort_metrics(binary, threshold=0.5, n_boot=200)
    s = result["slides"]
    # Positives score 0.8, 0.3, 0.9; negatives 0.1, 0.4, 0.35: 0.8 and 0.9 beat all three, 0.3 beats one.
    assert s["auc"]["value"] == pytest.approx(7 / 9) and s["macro_auc"]["value"] == pytest.approx(7 / 9)
    # At 0.5: s5 (0.3) is the one mistake; benign recall 3/3, tumour recall 2/3.
    assert s["accuracy"] == pytest.approx(5 / 6) and s["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["confusion_matrix"]["counts"] == [[3, 0], [1, 2]]
    assert "probability >= 0.5" in s["decision"]
    lo, hi = s["auc"]["ci95"]
    assert lo <= 7 / 9 <= hi and 0 <= lo < hi <= 1
    at = cohort_metrics(binary, threshold=0.32, n_boot=0)["slides"]
    # At 0.32: s2 (0.4) and s3 (0.35) become false positives, s5 stays a false negative.
    assert at["confusion_matrix"]["counts"] == [[1, 2], [1, 2]]
    assert at["accuracy"] == pytest.approx(3 / 6) and at["balanced_accuracy"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert "ci95" not in at["auc"]


def test_patients_aggregate_by_mean_or_max(binary):
    mean = cohort_metrics(binary, patient_aggregate="mean", threshold=0.6, n_boot=0)["patients"]
    # pA (0.1+0.4)/2 = 0.25, pB 0.35 | pC (0.8+0.3)/2 = 0.55, pD 0.9: separated.
    assert mean["n"] == 4 and mean["auc"]["value"] == 1.0 and mean["aggregate"] == "mean over each patient's slides"
    assert mean["accuracy"] == pytest.approx(3 / 4)  # at 0.6 pC's mean 0.55 is called benign
    mx = cohort_metrics(binary, patient_aggregate="max", threshold=0.6, n_boot=0)["patients"]
    # max: pA 0.4, pB 0.35 | pC 0.8, pD 0.9: all right at 0.6.
    assert mx["accuracy"] == 1.0 and mx["confusion_matrix"]["counts"] == [[2, 0], [0, 2]]


def test_a_patient_whose_slides_disagree_is_left_out_and_named(tmp_path):
    (tmp_path / "p.csv").write_text(BINARY.replace("s4,pC", "s4,pA"))
    result = cohort_metrics(read_predictions(tmp_path / "p.csv", "classification"), n_boot=0)
    assert result["patients"]["mixed_patients"] == ["pA"] and result["patients"]["n"] == 3
    assert "left out (slides disagree): pA" in format_table(result)


def test_regression_spearman_pearson_mae_r2_by_hand(tmp_path):
    (tmp_path / "r.csv").write_text(REGRESSION)
    pred = read_predictions(tmp_path / "r.csv", "regression")
    t = cohort_metrics(pred, n_boot=300, seed=1)["slides"]["targets"]["ki67"]
    # Ranks of the predictions 2,1,3,4,5: d² sums to 2, rho = 1 - 6*2 / (5*(25-1)) = 0.9.
    assert t["spearman"]["value"] == pytest.approx(0.9)
    assert t["mae"]["value"] == pytest.approx((0.5 + 0.6 + 0.5 + 0.1 + 1.0) / 5)
    assert t["r2"]["value"] == pytest.approx(1 - (0.25 + 0.36 + 0.25 + 0.01 + 1.0) / 10)
    # Deviations: truth (-2, -1, 0, 1, 2), prediction (-1.76, -1.86, 0.24, 0.64, 2.74) about 3.26.
    assert t["pearson"]["value"] == pytest.approx(11.5 / math.sqrt(10 * 14.532))
    lo, hi = t["spearman"]["ci95"]
    assert -1 <= lo <= 0.9 <= hi <= 1
    assert cohort_metrics(pred, n_boot=300, seed=1)["slides"] == cohort_metrics(pred, n_boot=300, seed=1)["slides"]
    assert "ki67: Spearman 0.900" in format_table(cohort_metrics(pred, n_boot=0))


def test_multilabel_per_label_and_macro_auc_by_hand():
    from engine.evaluate.report import Predictions

    truths = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], float)
    probs = np.array([[0.9, 0.2], [0.3, 0.6], [0.2, 0.7], [0.1, 0.8]])
    result = cohort_metrics(Predictions("multilabel", ("a", "b"), ("1", "2", "3", "4"), truths, probs), n_boot=100)
    labels = result["slides"]["labels"]
    # a: positives 0.9, 0.2 against 0.3, 0.1 -> (2 + 1) / 4; b: positives 0.6, 0.7 against 0.2, 0.8 -> (1 + 1) / 4.
    assert labels["a"]["auc"]["value"] == pytest.approx(0.75) and labels["b"]["auc"]["value"] == pytest.approx(0.5)
    assert result["slides"]["macro_auc"]["value"] == pytest.approx(0.625)


def test_predictions_round_trip_through_the_csv(binary, tmp_path):
    text = predictions_text(binary, ("label",))
    assert text == BINARY
    (tmp_path / "again.csv").write_text(text)
    again = read_predictions(tmp_path / "again.csv", "classification")
    assert np.array_equal(again.outputs, binary.outputs) and again.patients == binary.patients


def test_roc_curve_area_is_the_auc_and_bootstrap_is_seeded():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 50).astype(float)  # ties
    positive = rng.random(50) < 0.5
    fpr, tpr = m.roc_curve(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(m.roc_auc(scores, positive))
    assert m.auc_interval(scores, positive, n=300, seed=4) == m.auc_interval(scores, positive, n=300, seed=4)
    assert m.auc_interval(scores, positive, n=300, seed=4) != m.auc_interval(scores, positive, n=300, seed=5)


def test_balanced_accuracy_and_confusion_of_three_classes():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 2])
    assert m.confusion_matrix(labels, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert m.balanced_accuracy(labels, predicted, 3) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1) and math.isnan(m.pearson([1, 1], [1, 2]))
    names, agg = m.aggregate_by_patient(["a", "b", "a"], np.array([[1.0], [5.0], [3.0]]), "max")
    assert names == ["a", "b"] and agg.tolist() == [[3.0], [5.0]]
