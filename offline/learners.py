"""The two learners, each returned as a calibrated serving `ScoringModel`.

Logistic regression (StandardScaler + LogisticRegression) is the seed project's baseline
learner; XGBoost (hist) is the main model. Both stop/calibrate on the validation rows only;
given `val_groups` (the user of each validation row) the calibration weighs every user the same
(`offline.calibration.fit_calibrator`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import xgboost as xgb
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from offline.calibration import fit_calibrator
from scoring.model import ScoringModel

XGB_PARAMS: dict[str, object] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "max_depth": 6,
    "learning_rate": 0.05,
    "min_child_weight": 20,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 5.0,
    "max_bin": 128,
    "nthread": 2,
    "seed": 0,
}
XGB_MAX_ROUNDS = 600
XGB_EARLY_STOP = 30
#: Keep the fewest rounds whose validation log loss is within this much of the best round's
#: (0: the best round). Set for one training by `trees_within` (`train_trees_within_log_loss`).
XGB_TREES_WITHIN = 0.0


@contextmanager
def trees_within(log_loss: float) -> Iterator[None]:
    """`fit_xgboost` keeps the fewest rounds within `log_loss` of the best validation log loss
    while this is open (as `offline.train.xgboost_seed` sets the seed)."""
    global XGB_TREES_WITHIN
    before, XGB_TREES_WITHIN = XGB_TREES_WITHIN, log_loss
    try:
        yield
    finally:
        XGB_TREES_WITHIN = before


def fewest_rounds(val_log_loss: Sequence[float], best: int, within: float) -> int:
    """How many rounds to keep: the fewest whose validation log loss is at most the best
    round's (`best`, counted from 0) + `within`. Why: every event is scored by every tree, so
    the serving cost is the tree count, and the last rounds before early stopping often buy
    a thousandth of log loss for a third of the trees (docs/performance.md)."""
    limit = val_log_loss[best] + within
    return next(i for i, loss in enumerate(val_log_loss[: best + 1]) if loss <= limit) + 1


def fit_xgboost(
    name: str,
    features: Sequence[str],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    val_groups: np.ndarray | None = None,
) -> tuple[ScoringModel, dict[str, object]]:
    """Boost until validation log loss stops improving, then calibrate on validation."""
    dtrain = xgb.QuantileDMatrix(X_train, label=y_train, max_bin=XGB_PARAMS["max_bin"])
    dval = xgb.DMatrix(X_val, label=y_val)
    history: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        XGB_PARAMS,
        dtrain,
        num_boost_round=XGB_MAX_ROUNDS,
        evals=[(dval, "val")],
        early_stopping_rounds=XGB_EARLY_STOP,
        evals_result=history,
        verbose_eval=False,
    )
    # Keep only the trees up to the best round (or the fewest within XGB_TREES_WITHIN of it):
    # serving and contributions then agree.
    best = booster.best_iteration
    booster = booster[: fewest_rounds(history["val"]["logloss"], best, XGB_TREES_WITHIN)]
    margin = np.asarray(booster.inplace_predict(X_val, predict_type="margin"))
    calibrator, cal_scores = fit_calibrator(margin, y_val, val_groups)
    model = ScoringModel.from_xgboost(name, booster, list(features), calibrator)
    info = {"trees": booster.num_boosted_rounds(), "best_round_trees": best + 1,
            "trees_within_log_loss": XGB_TREES_WITHIN, "calibration": calibrator.method,
            "calibration_cv_log_loss": cal_scores}  # fmt: skip
    return model, info


def fit_logreg(
    name: str,
    features: Sequence[str],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    val_groups: np.ndarray | None = None,
) -> tuple[ScoringModel, dict[str, object]]:
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    pipeline.fit(X_train, y_train)
    model = ScoringModel.from_logreg(name, pipeline, list(features), calibrator=None)  # type: ignore[arg-type]
    calibrator, cal_scores = fit_calibrator(model.margin(X_val), y_val, val_groups)
    model.calibrator = calibrator
    return model, {"calibration": calibrator.method, "calibration_cv_log_loss": cal_scores}


LEARNERS = {"xgboost": fit_xgboost, "logreg": fit_logreg}
