"""Fit the probability calibration on the validation set, choosing isotonic or Platt.

The choice is made by cross-validated log loss *within* the validation set: scored in-sample,
isotonic regression would always win because it can memorise the validation labels.

Rows can be weighted by group (`groups`: the user of each row), so that every user counts
once. Why: a calibration window is a handful of users (63 in MovieLens' temporal validation
period), and with row weights its base rate is set by the few heaviest raters (the top five
have a third of the rows), whose deviation from the model does not carry over to the next
period. In a forward-chaining backtest over the training and validation periods only
(`offline.calibration_backtest`, which never reads the test period) per-user weights lowered the
interaction XGBoost's next-period mean ECE (0.026 -> 0.023) and log loss; on MovieLens' test
period they did not help (0.0341 -> 0.0344). See docs/offline.md.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from offline.metrics import EPS
from scoring.model import Calibrator

METHODS = ("isotonic", "sigmoid")


def group_weights(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Row weights giving every group the same total weight, scaled to mean 1 (so Platt's
    tiny regularisation means the same as unweighted); all ones without groups."""
    if groups is None:
        return np.ones(n)
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    if len(inverse) != n:
        raise ValueError(f"{len(inverse)} groups for {n} rows")
    w = 1.0 / counts[inverse]
    return w * (n / w.sum())


def weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(np.average(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)), weights=w))


def fit_method(
    method: str, margin: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None
) -> Calibrator:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(margin, y, sample_weight=weights)
        return Calibrator("isotonic", knots_x=iso.X_thresholds_, knots_y=iso.y_thresholds_)
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6, max_iter=1000)
        platt.fit(margin.reshape(-1, 1), y, sample_weight=weights)
        return Calibrator("sigmoid", a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))
    raise ValueError(f"unknown calibration method {method!r}")


def cv_log_loss(
    method: str,
    margin: np.ndarray,
    y: np.ndarray,
    folds: int = 5,
    weights: np.ndarray | None = None,
) -> float:
    """Out-of-fold (weighted) log loss of `method` on the validation rows."""
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    losses, fold_weights = [], []
    for fit_idx, held_idx in splitter.split(margin, y):
        cal = fit_method(method, margin[fit_idx], y[fit_idx], w[fit_idx])
        losses.append(weighted_log_loss(y[held_idx], cal(margin[held_idx]), w[held_idx]))
        fold_weights.append(w[held_idx].sum())
    return float(np.average(losses, weights=fold_weights))


def fit_calibrator(
    margin: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None
) -> tuple[Calibrator, dict[str, float]]:
    """The method with the lower out-of-fold validation log loss, refit on all of validation.

    With `groups` (the user of each row) every user weighs the same in the fits and the
    losses; without, every row does (the original rule).
    """
    margin = np.asarray(margin, dtype=np.float64)
    y = np.asarray(y).astype(int)
    folds = int(min(5, np.bincount(y, minlength=2).min()))
    if folds < 2:  # one class only: nothing to calibrate against
        return Calibrator("sigmoid"), {}
    w = group_weights(groups, len(y))
    scores = {m: cv_log_loss(m, margin, y, folds, w) for m in METHODS}
    best = min(scores, key=lambda m: scores[m])
    return fit_method(best, margin, y, w), scores
