"""Serving wrapper and registry: round trip, current pointer, wrong feature hash refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engage.settings import Settings
from features.aggregates import FeatureParams
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES, feature_hash
from offline.dataset import build_dataset
from offline.learners import fit_logreg, fit_xgboost
from offline.splits import temporal_split
from scoring.model import ModelBundle
from scoring.registry import FeatureHashMismatch, ModelNotFound, ModelRegistry
from tests.offline_synth import synthetic_log


@pytest.fixture(scope="module")
def trained():
    events, meta = synthetic_log(n_users=40, per_user=30)
    data = build_dataset(events, meta)
    s = temporal_split(data)
    args = (data.X[s.train], data.y[s.train], data.X[s.val], data.y[s.val])
    xgb_model, _ = fit_xgboost("interaction-xgboost", INTERACTION_FEATURES, *args)
    lr_model, _ = fit_logreg("interaction-logreg", INTERACTION_FEATURES, *args)
    n = len(PROPENSITY_FEATURES)
    prop, _ = fit_logreg(
        "propensity-logreg", PROPENSITY_FEATURES,
        data.X[s.train, :n], data.y[s.train], data.X[s.val, :n], data.y[s.val],
    )  # fmt: skip
    return data, xgb_model, lr_model, prop


def _bundle(trained, hash_: str | None = None) -> ModelBundle:
    _, xgb_model, _, prop = trained
    return ModelBundle(
        version="", feature_hash=hash_ or feature_hash(FeatureParams()), interaction=xgb_model,
        propensity=prop, metrics={"auc": 0.7}, log_range={"min_ts": 1, "max_ts": 2},
    )  # fmt: skip


def test_contributions_add_up_to_the_margin(trained):
    data, xgb_model, lr_model, _ = trained
    X = data.X[:200]
    for model in (xgb_model, lr_model):
        p = model.predict_proba(X)
        assert p.shape == (200,) and np.all((p > 0) & (p < 1))
        c = model.contributions(X)
        assert c.shape == (200, len(INTERACTION_FEATURES))
        bias = model.margin(X) - c.sum(axis=1)
        assert np.allclose(bias, bias[0], atol=1e-4)  # the same constant for every row
    exact = xgb_model.contributions(X, exact=True)
    assert np.allclose(exact.sum(1), xgb_model.contributions(X).sum(1), atol=1e-4)
    # logistic regression: exactly coef * standardized x
    std = (X - lr_model.mean) / lr_model.scale
    assert np.allclose(lr_model.contributions(X), std * lr_model.coef)
    with pytest.raises(ValueError):
        xgb_model.predict_proba(X[:, :5])


def test_top_reasons_orders_by_magnitude(trained):
    _, _, lr_model, _ = trained
    row = np.zeros(len(INTERACTION_FEATURES))
    row[[2, 7, 9]] = [0.5, -2.0, 1.0]
    reasons = lr_model.top_reasons(row, k=2)
    assert reasons == [(INTERACTION_FEATURES[7], -2.0), (INTERACTION_FEATURES[9], 1.0)]
    assert lr_model.top_reasons_batch(np.vstack([row, row]), k=2) == [reasons, reasons]


def test_register_load_and_current_pointer(tmp_path, trained):
    registry = ModelRegistry(Settings(data_dir=tmp_path))
    assert registry.current_version() is None and registry.list() == []
    with pytest.raises(ModelNotFound):
        registry.load()
    first = registry.register(_bundle(trained))
    assert registry.current_version() == first
    second = registry.register(_bundle(trained), make_current=False)
    assert second != first and registry.current_version() == first
    loaded = registry.load()
    assert loaded.version == first and loaded.metrics == {"auc": 0.7}
    X = trained[0].X[:50]
    assert np.allclose(loaded.interaction.predict_proba(X), trained[1].predict_proba(X))
    manifest = registry.manifest(first)
    assert manifest["models"]["interaction"]["features"] == list(INTERACTION_FEATURES)
    assert manifest["models"]["propensity"]["features"] == list(PROPENSITY_FEATURES)
    assert manifest["feature_hash"] == feature_hash(FeatureParams())
    registry.set_current(second)
    assert registry.current_version() == second
    assert [m["current"] for m in registry.list()] == [False, True]
    assert not list((tmp_path / "models").glob(".*"))  # no staging/temp leftovers


def test_wrong_feature_hash_is_refused_with_both_hashes(tmp_path, trained):
    registry = ModelRegistry(Settings(data_dir=tmp_path))
    version = registry.register(_bundle(trained, hash_="0123456789abcdef"))
    with pytest.raises(FeatureHashMismatch) as err:
        registry.load(version)
    assert "0123456789abcdef" in str(err.value) and registry.code_hash in str(err.value)
    # Other feature params change the hash the running code expects.
    other = dataclasses.replace(FeatureParams(), session_gap_ms=5 * 60_000)
    good = ModelRegistry(Settings(data_dir=tmp_path)).register(_bundle(trained))
    with pytest.raises(FeatureHashMismatch):
        ModelRegistry(Settings(data_dir=tmp_path), other).load(good)
