"""scoring.drift: PSI of the served vectors against the training reference, exact state, and
the synthetic funnel's --drift-feature shift found and named."""

from __future__ import annotations

import functools
import itertools
import json
import time

import numpy as np
import pytest

from features.pipeline import MemoryState
from features.vector import INTERACTION_FEATURES
from producer import synthetic
from scoring.drift import (
    BadState,
    DriftMonitor,
    DriftReference,
    StateMismatch,
    merged_drift,
    offline_drift,
    psi,
    reference_of,
)
from scoring.online_calibration import event_label

THRESHOLD = 0.25


def _matrix(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    X[:, 1] = rng.random(n) < 0.1  # a flag
    X[:, 2] = rng.poisson(0.3, n)  # a count, mostly 0
    X[rng.random(n) < 0.01, 3] = np.nan
    y = (rng.random(n) < 0.4).astype(np.float64)
    return X, y


def test_reference_bins_flags_counts_and_deciles():
    X, y = _matrix(20_000, 0)
    ref = DriftReference.fit(X, y, ["a", "flag", "count", "b"])
    assert len(ref.edges[0]) == 9  # deciles of a continuous feature
    assert ref.edges[1][0] == 0.0 and ref.shares[1][1] == pytest.approx(0.1, abs=0.01)  # a flag
    assert ref.edges[2][0] == 0.0  # "0" is a bin of its own
    assert sum(ref.shares[3]) == pytest.approx(1.0)  # NaN counted (in the last bin)
    assert DriftReference.from_dict(json.loads(json.dumps(ref.as_dict()))) == ref
    assert reference_of({"drift_reference": ref.as_dict()}) == ref
    assert reference_of({}) is None  # a model trained before references were stored
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_any_batch_boundaries_give_the_same_bytes():
    X, y = _matrix(20_000, 0)
    ref = DriftReference.fit(X, y, ["a", "flag", "count", "b"])
    X2, y2 = _matrix(23_456, 1)
    whole = DriftMonitor(ref, "v1", block=700, blocks=5)
    whole.observe(X2, y2)
    rng = np.random.default_rng(3)
    cuts = [0, *sorted(rng.choice(np.arange(1, len(X2)), 30, replace=False).tolist()), len(X2)]
    pieces = DriftMonitor(ref, "v1", block=700, blocks=5)
    for a, b in itertools.pairwise(cuts):
        pieces.observe(X2[a:b], y2[a:b])
        pieces = DriftMonitor.from_bytes(pieces.to_bytes(), ref, 700, 5)  # a restart each time
    assert pieces.to_bytes() == whole.to_bytes()
    one = DriftMonitor(ref, "v1", block=700, blocks=5)
    for i in range(1500):
        one.observe(X2[i : i + 1], y2[i : i + 1])
    prefix = DriftMonitor(ref, "v1", block=700, blocks=5)
    prefix.observe(X2[:1500], y2[:1500])
    assert one.to_bytes() == prefix.to_bytes()
    s = whole.summary()
    assert s["vectors"] == 5 * 700 + 23_456 % 700  # the full blocks and the one being filled
    assert s["status"] == "ok" and s["drifting"] == []


def test_partitions_merge_and_a_shift_is_named():
    X, y = _matrix(20_000, 0)
    ref = DriftReference.fit(X, y, ["a", "flag", "count", "b"])
    X2, y2 = _matrix(12_000, 1)
    X2[6000:, 0] += 1.0  # the second half shifts feature "a"
    y2[6000:] = 1.0  # and the labels
    part = np.arange(len(X2)) % 3
    offline = offline_drift(ref, X2, y2, partition=part, block=500, blocks=4)
    live = []
    for k in range(3):
        m = DriftMonitor(ref, "v1", block=500, blocks=4)
        for chunk in np.array_split(np.flatnonzero(part == k), 7):
            m.observe(X2[chunk], y2[chunk])
        live.append(m)
    assert merged_drift(live)["features"] == offline["features"]
    assert offline["status"] == "drifting"
    assert offline["drifting"] == ["a"] and offline["top"][0]["feature"] == "a"
    assert offline["label_drifting"] and offline["label"]["window_positive_rate"] > 0.8


def test_states_of_another_reference_or_window_are_not_applied():
    X, y = _matrix(5000, 0)
    ref = DriftReference.fit(X, y, ["a", "flag", "count", "b"])
    other = DriftReference.fit(X[:100] * 2, y[:100], ["a", "flag", "count", "b"])
    m = DriftMonitor(ref, "v1")
    m.observe(X, y)
    data = m.to_bytes()
    with pytest.raises(StateMismatch):
        DriftMonitor.from_bytes(data, other)
    assert DriftMonitor.restore(data, ref, "v1").to_bytes() == data
    assert DriftMonitor.restore(data, ref, "v2").vectors_seen == 0  # a new model
    assert DriftMonitor.restore(data, ref, "v1", block=500).vectors_seen == 0
    for bad in (b"", data[:-1], b"XX" + data[2:]):
        with pytest.raises(BadState):
            DriftMonitor.from_bytes(bad, ref)


def test_observe_costs_under_a_microsecond_per_event_on_the_real_width():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, len(INTERACTION_FEATURES)))
    ref = DriftReference.fit(X, np.zeros(len(X)), INTERACTION_FEATURES)
    m = DriftMonitor(ref, "v1")
    m.observe(X[:10])  # compiled
    start = time.perf_counter()
    for a in range(0, 20_000, 2000):
        m.observe(X[a : a + 2000])
        m.to_bytes()
    per_event_us = (time.perf_counter() - start) / 20_000 * 1e6
    assert per_event_us < 2.0, per_event_us


@functools.lru_cache(maxsize=4)
def _served(config: synthetic.SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """The vectors the consumer serves for a synthetic replay (features.pipeline, before each
    event) and each event's label."""
    state = MemoryState()
    rows, labels = [], []
    for event in synthetic.events(config):
        rows.append(state.step(event).features)
        labels.append(event_label(event))
    return np.array(rows), np.array(labels)


#: Features of the funnel that move with the clock by construction, found drifting on an
#: unshifted replay too: the site's few pages accumulate counts and age (i_count,
#: i_days_since_mean, i_engage_rate), and the last 10,000 events of a week cover ~4 weekdays.
CLOCK_FEATURES = {"i_count", "i_days_since_mean", "i_engage_rate", "dow", "hour"}


@pytest.mark.slow  # three synthetic weeks through the feature pipeline (~5 s)
@pytest.mark.parametrize("shifted", ["account_balance", "browsing_depth", "device"])
def test_a_synthetic_replay_with_a_drifted_feature_names_it(shifted: str):
    X_train, y_train = _served(synthetic.SyntheticConfig(users=1500, days=7, seed=1))
    reference = DriftReference.fit(X_train, np.nan_to_num(y_train), INTERACTION_FEATURES)
    feature = synthetic.DRIFT_FIELDS[shifted]
    X, y = _served(synthetic.SyntheticConfig(users=1500, days=7, seed=2))
    plain = offline_drift(reference, X, y, threshold=THRESHOLD)
    X_shift, y_shift = _served(synthetic.SyntheticConfig(users=1500, days=7, seed=2, drift=shifted))
    drifted = offline_drift(reference, X_shift, y_shift, threshold=THRESHOLD)
    assert drifted["features"][feature] > THRESHOLD
    assert drifted["top"][0]["feature"] == feature and feature in drifted["drifting"]
    assert drifted["status"] == "drifting"
    assert plain["features"][feature] < THRESHOLD
    assert feature not in plain["drifting"]
    assert set(plain["drifting"]) <= CLOCK_FEATURES  # nothing else drifts without the shift
    assert set(drifted["drifting"]) - CLOCK_FEATURES in ({feature}, {"ctx_mobile", "ctx_desktop"})
    print(shifted, feature, "PSI shifted", round(drifted["features"][feature], 3), "unshifted",
          round(plain["features"][feature], 3))  # fmt: skip


def test_the_drift_option_shifts_only_its_field_and_only_from_the_middle():
    plain = list(synthetic.events(synthetic.SyntheticConfig(users=50, days=4, seed=3)))
    config = synthetic.SyntheticConfig(users=50, days=4, seed=3, drift="ctx_depth")
    shifted = list(synthetic.events(config))
    assert len(plain) == len(shifted)
    for a, b in zip(plain, shifted, strict=True):
        assert a.model_copy(update={"context": None}) == b.model_copy(update={"context": None})
        late = a.ts >= config.drift_from_ms
        depth = a.context["browsing_depth"]
        assert b.context == {**a.context, "browsing_depth": depth + 10 if late else depth}
    with pytest.raises(ValueError, match="cannot shift"):
        synthetic.SyntheticConfig(drift="u_events")
