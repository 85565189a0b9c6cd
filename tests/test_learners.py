"""How many boosting rounds `engage train` keeps (`train_trees_within_log_loss`): the fewest
within a stated validation log loss of the best round (the best round itself at 0)."""

from __future__ import annotations

import numpy as np

from offline import learners
from offline.learners import fewest_rounds, fit_xgboost, trees_within


def test_fewest_rounds_within_the_best_validation_log_loss() -> None:
    curve = [0.70, 0.60, 0.55, 0.549, 0.5485, 0.5484, 0.5490, 0.5000]  # best so far: round 5
    assert fewest_rounds(curve, 5, 0.0) == 6  # the best round itself
    assert fewest_rounds(curve, 5, 0.001) == 4  # 0.549 <= 0.5484 + 0.001
    assert fewest_rounds(curve, 5, 0.1) == 2  # 0.60 <= 0.6484
    assert fewest_rounds([0.5], 0, 0.01) == 1
    # Rounds after the best one are never kept (early stopping's patience rounds).
    assert fewest_rounds(curve, 2, 1.0) == 1


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    logit = X[:, 0] - 0.7 * X[:, 1] + 0.5 * X[:, 2] * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return X, y


def test_a_tolerance_keeps_fewer_trees_than_the_best_round() -> None:
    (X, y), (X_val, y_val) = _data(3000, 1), _data(1500, 2)
    names = [f"f{i}" for i in range(6)]
    assert learners.XGB_TREES_WITHIN == 0.0  # fit_xgboost alone: the best round
    _, best = fit_xgboost("m", names, X, y, X_val, y_val)
    assert best["trees"] == best["best_round_trees"] and best["trees_within_log_loss"] == 0.0
    with trees_within(0.005):
        lean_model, lean = fit_xgboost("m", names, X, y, X_val, y_val)
    assert learners.XGB_TREES_WITHIN == 0.0  # restored
    assert lean["best_round_trees"] == best["best_round_trees"]  # the same boosting
    assert 1 <= lean["trees"] < best["trees"]
    assert lean_model.booster.num_boosted_rounds() == lean["trees"]  # what is served
