"""Compiled trees (scoring/tree_eval.py): XGBoost's margins bit for bit, or not used at all."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xgboost as xgb

from scoring import tree_eval
from scoring.model import Calibrator, ScoringModel

N_FEATURES = 7


def _booster(
    objective: str = "binary:logistic", depth: int = 4, seed: int = 0, rounds: int = 40
) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, N_FEATURES))
    X[rng.random(X.shape) < 0.1] = np.nan  # default directions get learned
    y = ((np.nan_to_num(X[:, 0]) + 0.5 * np.nan_to_num(X[:, 1]) ** 2) > 0.3).astype(float)
    params = {"objective": objective, "max_depth": depth, "eta": 0.3, "nthread": 1,
              "min_child_weight": 20, "seed": seed}  # fmt: skip
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=rounds)


def _rows(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES)) * rng.choice([0.01, 1.0, 100.0], size=(n, N_FEATURES))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[rng.random(X.shape) < 0.02] = np.inf
    X[rng.random(X.shape) < 0.02] = -np.inf
    X[rng.random(X.shape) < 0.05] = 0.0
    return X


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_margins_are_xgboosts_bit_for_bit(depth: int) -> None:
    booster = _booster(depth=depth)
    compiled = tree_eval.build(booster, N_FEATURES)
    assert compiled is not None and compiled.depth <= depth
    for n in (1, 63, 64, 65, 1000):  # around the 64-row block
        X = _rows(n, seed=n)
        want = np.asarray(booster.inplace_predict(X, predict_type="margin"), dtype=np.float32)
        got = compiled.margins(X)
        assert got.dtype == np.float32
        assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), n


@pytest.mark.parametrize("rounds", [1, 8, 13])
def test_rows_without_a_nan_walk_by_order_keys_bit_for_bit(rounds: int) -> None:
    """Rows with no NaN take the order-key walk, eight trees at a time (and the trees past
    the last eight alone): -0.0, infinities, subnormals, values on the thresholds."""
    booster = _booster(depth=5, rounds=rounds)
    compiled = tree_eval.build(booster, N_FEATURES)
    assert compiled is not None
    X = np.nan_to_num(_rows(2000, seed=rounds), nan=-0.0, posinf=np.inf, neginf=-np.inf)
    X[::7, 2] = 1e-42  # float32 subnormals
    X[::11, 3] = -1e-42
    real = np.isfinite(compiled.threshold)
    on = compiled.threshold[real].astype(np.float64)
    X[::5, :] = np.random.default_rng(rounds).choice(on, size=X[::5, :].shape)
    assert not np.isnan(X).any()
    want = np.asarray(booster.inplace_predict(X, predict_type="margin"), dtype=np.float32)
    assert np.array_equal(want.view(np.uint32), compiled.margins(X).view(np.uint32))


def test_order_keys_order_as_the_floats() -> None:
    values = np.array([-np.inf, -3.5, -1e-42, -0.0, 0.0, 1e-42, 2.0, np.inf], dtype=np.float32)
    keys = tree_eval.order_keys(values)
    for a, ka in zip(values.tolist(), keys.tolist(), strict=True):
        for b, kb in zip(values.tolist(), keys.tolist(), strict=True):
            assert (a < b) == (ka < kb), (a, b)


def test_models_it_does_not_cover_or_cannot_reproduce_stay_with_xgboost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tree_eval.build(_booster("reg:squarederror"), N_FEATURES) is None
    lay_out = tree_eval._lay_out

    def off_by_one_ulp(tree, depth, feature, threshold, default_left, leaf):  # type: ignore[no-untyped-def]
        lay_out(tree, depth, feature, threshold, default_left, leaf)
        leaf[0] = np.nextafter(leaf[0], np.float32(np.inf))

    monkeypatch.setattr(tree_eval, "_lay_out", off_by_one_ulp)
    assert tree_eval.build(_booster(), N_FEATURES) is None  # the probe rows see the change


def test_a_served_model_uses_them_and_a_pickled_one_compiles_again() -> None:
    booster = _booster()
    features = [f"f{i}" for i in range(N_FEATURES)]
    model = ScoringModel.from_xgboost("m", booster, features, Calibrator("none"))
    X = _rows(200)
    before = model.margin(X)  # not served yet: XGBoost
    assert "_trees" not in model.__dict__
    model.set_threads(1)
    assert model.__dict__["_trees"] is not None
    assert np.array_equal(model.margin(X).view(np.uint32), before.view(np.uint32))
    copy = pickle.loads(pickle.dumps(model))
    assert "_trees" not in copy.__dict__
    copy.compiled = False  # the setting model_compiled_trees=false
    copy.set_threads(1)
    assert "_trees" not in copy.__dict__
    assert np.array_equal(copy.margin(X).view(np.uint32), before.view(np.uint32))
