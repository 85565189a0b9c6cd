"""Calibration: per-user weights, choices made without the test rows, the bundle round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engage.settings import Settings
from features.aggregates import FeatureParams
from features.vector import INTERACTION_FEATURES, feature_hash
from offline.calibration import fit_calibrator, fit_method, group_weights
from offline.calibration_backtest import RULES, backtest, summary
from offline.dataset import Dataset, build_dataset
from offline.learners import fit_xgboost
from offline.splits import temporal_split
from offline.train import fit_one
from scoring.model import ModelBundle
from scoring.registry import ModelRegistry
from tests.offline_synth import synthetic_log


@pytest.fixture(scope="module")
def data() -> Dataset:
    events, meta = synthetic_log(n_users=80, per_user=30)
    return build_dataset(events, meta)


def _with_test_period_changed(data: Dataset) -> Dataset:
    """The same dataset with every test-period row's label flipped and features scrambled."""
    test = temporal_split(data).test
    assert len(test) > 100
    X, y = data.X.copy(), data.y.copy()
    y[test] = 1 - y[test]
    X[test] = np.random.default_rng(1).permutation(X[test].ravel()).reshape(X[test].shape)
    return dataclasses.replace(data, X=X, y=y)


def test_group_weights_give_every_group_the_same_total():
    groups = np.array(["a"] * 6 + ["b"] * 3 + ["c"], dtype=object)
    w = group_weights(groups, len(groups))
    totals = [w[groups == g].sum() for g in ("a", "b", "c")]
    assert np.allclose(totals, totals[0]) and w.mean() == pytest.approx(1.0)
    assert np.array_equal(group_weights(None, 4), np.ones(4))
    with pytest.raises(ValueError):
        group_weights(groups, 3)


def test_one_row_per_user_is_the_unweighted_rule():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 1.5, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-m))).astype(int)
    plain, plain_scores = fit_calibrator(m, y)
    per_user, user_scores = fit_calibrator(m, y, np.arange(400).astype(str))
    assert plain.method == per_user.method
    assert plain.a == pytest.approx(per_user.a) and plain.b == pytest.approx(per_user.b)
    assert plain_scores == pytest.approx(user_scores)


def test_a_heavy_user_does_not_set_the_calibration_alone():
    """600 rows of one always-engaged user against 60 users engaged 30% of the time."""
    rng = np.random.default_rng(0)
    users = np.array(["heavy"] * 600 + [f"u{i}" for i in range(60) for _ in range(10)])
    y = np.r_[np.ones(600), (rng.random(600) < 0.3)].astype(int)
    m = rng.normal(0, 0.1, len(y))  # margins that carry no information
    by_rows = fit_method("sigmoid", m, y)
    by_users = fit_method("sigmoid", m, y, group_weights(users, len(y)))
    zero = np.zeros(1)
    assert by_rows(zero)[0] == pytest.approx(y.mean(), abs=0.02)  # 0.65: the heavy user's pull
    fair = np.mean([y[users == u].mean() for u in np.unique(users)])  # ~0.31
    assert by_users(zero)[0] == pytest.approx(fair, abs=0.02)


def test_fitting_and_calibrating_never_read_the_test_rows(data):
    changed = _with_test_period_changed(data)
    split = temporal_split(data)
    assert np.array_equal(split.test, temporal_split(changed).test)
    for learner in ("xgboost", "logreg"):
        model, info = fit_one(data, split, "interaction", learner)
        again, info_again = fit_one(changed, split, "interaction", learner)
        assert info == info_again
        a, b = model.calibrator, again.calibrator
        assert (a.method, a.a, a.b) == (b.method, b.a, b.b)
        assert np.array_equal(a.knots_x, b.knots_x) and np.array_equal(a.knots_y, b.knots_y)
        X_val = data.X[split.val]
        assert np.array_equal(model.predict_proba(X_val), again.predict_proba(X_val))


def test_backtest_stays_before_the_test_period(data):
    origins = (0.5, 0.6, 0.7)
    scores = backtest(data, origins=origins)
    assert scores and all(s.origin + s.horizon <= 0.8 + 1e-9 for s in scores)
    assert {s.rule for s in scores} >= set(RULES)
    assert backtest(_with_test_period_changed(data), origins=origins) == scores
    table = summary(scores, list(RULES))
    assert table.count("\n") == 1 + len(RULES) * len({s.horizon for s in scores})


def test_a_user_weighted_calibration_round_trips_through_the_registry(tmp_path, data):
    s = temporal_split(data)
    args = (data.X[s.train], data.y[s.train], data.X[s.val], data.y[s.val])
    model, info = fit_xgboost(
        "interaction-xgboost", INTERACTION_FEATURES, *args, val_groups=data.user_ids[s.val]
    )
    assert info["calibration"] in ("sigmoid", "isotonic")
    bundle = ModelBundle(version="", feature_hash=feature_hash(FeatureParams()),
                         interaction=model, propensity=model)  # fmt: skip
    registry = ModelRegistry(Settings(data_dir=tmp_path))
    loaded = registry.load(registry.register(bundle))
    X = data.X[s.test]
    assert loaded.interaction.calibrator.method == model.calibrator.method
    assert np.array_equal(loaded.interaction.predict_proba(X), model.predict_proba(X))


def test_test_period_diagnostic_scores_the_rule_training_serves(data: Dataset):
    """`offline.calibration_on_test` fits the model `engage train` fits on the temporal split:
    its row for the rule in use is that model's test ECE, and every rule gets a row."""
    from offline.calibration_on_test import scores_on_test_period
    from offline.metrics import expected_calibration_error

    scores, rates = scores_on_test_period(data)
    assert [s.rule for s in scores] == list(RULES)
    split = temporal_split(data)
    model, _ = fit_one(data, split, "interaction", "xgboost")
    y_test = data.y[split.test].astype(int)
    p = model.predict_proba(data.X[split.test])
    [served] = [s for s in scores if s.rule == "users: chosen by CV (new rule)"]
    assert served.ece == pytest.approx(expected_calibration_error(y_test, p))
    assert served.mean_p == pytest.approx(p.mean())
    assert rates["test"] == pytest.approx(y_test.mean())
    assert all(0.0 <= s.ece <= 1.0 for s in scores)


def test_stream_rate_reads_only_whole_earlier_days(data: Dataset):
    """The backtested stream-rate candidate: flipping one day's labels changes no row of that
    day or before, and changes the rows of the days after it (within the window)."""
    from offline.calibration_backtest import DAY_MS, with_stream_rate

    day = data.ts // DAY_MS
    days = np.unique(day)
    assert len(days) > 4
    flipped_day = days[len(days) // 2]
    y = data.y.copy()
    y[day == flipped_day] = 1 - y[day == flipped_day]
    before = with_stream_rate(data, 7)
    after = with_stream_rate(dataclasses.replace(data, y=y), 7)
    assert before.features[-2:] == ("g_rate_7d", "g_count_7d")
    cols = before.X[:, -2:], after.X[:, -2:]
    upto = day <= flipped_day
    assert np.array_equal(cols[0][upto], cols[1][upto])
    window = (day > flipped_day) & (day <= flipped_day + 7)
    assert not np.array_equal(cols[0][window, 0], cols[1][window, 0])
    assert np.array_equal(cols[0][:, 1], cols[1][:, 1])  # counts do not depend on labels
