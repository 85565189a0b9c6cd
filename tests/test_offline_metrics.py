"""Metrics on cases small enough to compute by hand, and the calibration choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offline.calibration import fit_calibrator
from offline.metrics import (
    accuracy,
    all_metrics,
    expected_calibration_error,
    log_loss,
    pr_auc,
    rmse,
    roc_auc,
    roc_auc_ci,
)


def test_roc_auc_counts_pairs_and_ties_half():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(y, np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(3.5 / 4)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.3, 2000), 0, 1)
    auc, lo, hi = roc_auc_ci(y, p, n_boot=300)
    assert lo < auc < hi and hi - lo < 0.06
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(y, p))


def test_pointwise_metrics():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.4, 0.3, 0.1])
    assert accuracy(y, p) == pytest.approx(0.75)  # 0.3 is the one miss
    assert rmse(y, p) == pytest.approx(math.sqrt((0.04 + 0.16 + 0.49 + 0.01) / 4))
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.3) + math.log(0.9)) / 4
    assert log_loss(y, p) == pytest.approx(expected)
    # ranked: 0.8(+) 0.4(-) 0.3(+) 0.1(-): precision at the positives 1/1 and 2/3
    assert pr_auc(y, p) == pytest.approx((1 + 2 / 3) / 2)


def test_ece_with_equal_width_bins():
    # bin [0.2,0.3): p=0.25 x2, one positive -> |0.25-0.5| ; bin [0.9,1]: p=0.95 x2, both pos
    y = np.array([1, 0, 1, 1])
    p = np.array([0.25, 0.25, 0.95, 0.95])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.25 + 0.5 * 0.05)
    assert expected_calibration_error(np.array([1]), np.array([1.0])) == pytest.approx(0.0)
    m = all_metrics(y, p, n_boot=10)
    assert m["n"] == 4 and m["positive_rate"] == 0.75


def test_calibration_picks_the_method_with_lower_out_of_fold_log_loss():
    rng = np.random.default_rng(0)
    # A step-shaped truth: Platt's smooth sigmoid cannot follow it, isotonic can.
    m = rng.normal(0, 1, 6000)
    y = (rng.random(6000) < np.where(m > 0.3, 0.9, 0.45)).astype(int)
    cal, scores = fit_calibrator(m, y)
    assert set(scores) == {"isotonic", "sigmoid"}
    assert cal.method == min(scores, key=scores.get) == "isotonic"
    # Few rows with a truly logistic truth: isotonic overfits, Platt wins.
    m = rng.normal(0, 1.5, 150)
    y = (rng.random(150) < 1 / (1 + np.exp(-m))).astype(int)
    cal, scores = fit_calibrator(m, y)
    assert cal.method == "sigmoid" and scores["sigmoid"] < scores["isotonic"]
    p = cal(m)
    assert np.all((p > 0) & (p < 1)) and np.all(np.diff(p[np.argsort(m)]) >= 0)
