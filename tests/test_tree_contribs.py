"""Compiled contributions (scoring/tree_contribs.py): XGBoost's approximate `pred_contribs`
bit for bit, or not used at all."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import xgboost as xgb

from scoring import tree_contribs
from scoring.model import Calibrator, ScoringModel
from tests.test_tree_eval import N_FEATURES, _booster, _rows


def _finite_rows(n: int, seed: int = 1) -> np.ndarray:
    """`_rows` without infinities (an XGBoost DMatrix refuses them): huge values instead."""
    X = _rows(n, seed)
    X[np.isinf(X)] = np.sign(X[np.isinf(X)]) * 1e30
    return X


def _xgboost_contribs(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    out = booster.predict(xgb.DMatrix(X), pred_contribs=True, approx_contribs=True)
    return np.asarray(out[:, :-1], dtype=np.float32)


@pytest.mark.parametrize("depth", [1, 3, 6])
def test_contributions_are_xgboosts_bit_for_bit(depth: int) -> None:
    booster = _booster(depth=depth, seed=depth)
    compiled = tree_contribs.build(booster, N_FEATURES)
    assert compiled is not None
    for n in (1, 7, 500):
        X = _finite_rows(n, seed=n)
        got = compiled.contributions(X)
        assert got.dtype == np.float32 and got.shape == (n, N_FEATURES)
        want = _xgboost_contribs(booster, X)
        assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), n


def test_models_it_does_not_cover_or_cannot_reproduce_stay_with_xgboost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tree_contribs.build(_booster("reg:squarederror"), N_FEATURES) is None
    means = tree_contribs._means

    def off_by_one_ulp(tree):  # type: ignore[no-untyped-def]
        out = means(tree)
        out[0] = np.nextafter(out[0], np.float32(np.inf))  # every root's mean value
        return out

    monkeypatch.setattr(tree_contribs, "_means", off_by_one_ulp)
    assert tree_contribs.build(_booster(), N_FEATURES) is None  # the probe rows see it


def test_a_served_model_explains_with_them_and_the_numbers_do_not_change() -> None:
    booster = _booster()
    features = [f"f{i}" for i in range(N_FEATURES)]
    model = ScoringModel.from_xgboost("m", booster, features, Calibrator("none"))
    X = _finite_rows(300)
    before = model.contributions(X)  # not served yet: XGBoost
    model.set_threads(1)
    assert model.__dict__["_contribs"] is not None
    assert np.array_equal(model.contributions(X).view(np.uint32), before.view(np.uint32))
    assert model.reason_dicts(model.contributions(X)) == model.reason_dicts(before)
    copy = pickle.loads(pickle.dumps(model))
    assert "_contribs" not in copy.__dict__  # compiled again where it is served
    exact = model.contributions(X, exact=True)  # TreeSHAP: still XGBoost's own
    assert not np.array_equal(exact, before)
