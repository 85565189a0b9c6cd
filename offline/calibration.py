"""Fit the probability calibration on the validation set, choosing isotonic or Platt.

The choice is made by cross-validated log loss *within* the validation set: scored in-sample,
isotonic regression would always win because it can memorise the validation labels.
"""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from offline.metrics import log_loss
from scoring.model import Calibrator

METHODS = ("isotonic", "sigmoid")


def fit_method(method: str, margin: np.ndarray, y: np.ndarray) -> Calibrator:
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margin, y)
        return Calibrator("isotonic", knots_x=iso.X_thresholds_, knots_y=iso.y_thresholds_)
    if method == "sigmoid":
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(margin.reshape(-1, 1), y)
        return Calibrator("sigmoid", a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))
    raise ValueError(f"unknown calibration method {method!r}")


def cv_log_loss(method: str, margin: np.ndarray, y: np.ndarray, folds: int = 5) -> float:
    """Out-of-fold log loss of `method` on the validation rows."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    losses, weights = [], []
    for fit_idx, held_idx in splitter.split(margin, y):
        cal = fit_method(method, margin[fit_idx], y[fit_idx])
        losses.append(log_loss(y[held_idx], cal(margin[held_idx])))
        weights.append(len(held_idx))
    return float(np.average(losses, weights=weights))


def fit_calibrator(margin: np.ndarray, y: np.ndarray) -> tuple[Calibrator, dict[str, float]]:
    """The method with the lower out-of-fold validation log loss, refit on all of validation."""
    margin = np.asarray(margin, dtype=np.float64)
    y = np.asarray(y).astype(int)
    folds = int(min(5, np.bincount(y, minlength=2).min()))
    if folds < 2:  # one class only: nothing to calibrate against
        return Calibrator("sigmoid"), {}
    scores = {m: cv_log_loss(m, margin, y, folds) for m in METHODS}
    best = min(scores, key=lambda m: scores[m])
    return fit_method(best, margin, y), scores
