"""scoring.quality: prequential quality whose state is exact whatever the batch boundaries."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from offline.metrics import expected_calibration_error, log_loss, roc_auc
from scoring.quality import (
    DAY_MS,
    P_VALUE,
    BadState,
    LiveQuality,
    merged_summary,
    p_codes,
    prequential_quality,
)

T0 = 1_700_000_000_000


def _stream(n: int = 25_000, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.float64)
    y[rng.random(n) < 0.1] = np.nan  # unlabelled events (tags, page views of a funnel)
    rule = np.round(np.clip(p * 80 + rng.normal(0, 15, n), 0, 100), 2)
    ts = T0 + np.cumsum(rng.integers(0, 120_000, n))  # ~ 35 days
    domain = np.where(rng.random(n) < 0.8, "movielens", "funnel")
    return p, y, rule, ts, domain


def _batched(cuts: list[int], *arrays: np.ndarray, via_bytes: bool = True) -> LiveQuality:
    state = LiveQuality()
    bounds = [0, *cuts, len(arrays[0])]
    for a, b in itertools.pairwise(bounds):
        p, y, r, ts, d = (x[a:b] for x in arrays)
        state.observe(p, y, r, ts, list(d), "v1")
        if via_bytes:  # as after a restart: every batch starts from the stored state
            state = LiveQuality.from_bytes(state.to_bytes())
    return state


def test_any_batch_boundaries_give_the_same_bytes_and_figures():
    arrays = _stream()
    n = len(arrays[0])
    whole = LiveQuality()
    whole.observe(*arrays[:4], list(arrays[4]), "v1")
    one_by_one = LiveQuality()
    for i in range(3000):  # row at a time (a prefix: it is slow in Python)
        one_by_one.observe(*(x[i : i + 1] for x in arrays[:4]), str(arrays[4][i]), "v1")
    prefix = LiveQuality()
    prefix.observe(*(x[:3000] for x in arrays[:4]), list(arrays[4][:3000]), "v1")
    assert one_by_one.to_bytes() == prefix.to_bytes()
    rng = np.random.default_rng(1)
    for _ in range(3):
        cuts = sorted(rng.choice(np.arange(1, n), size=40, replace=False).tolist())
        assert _batched(cuts, *arrays).to_bytes() == whole.to_bytes()
    assert _batched([], *arrays, via_bytes=False).summary() == whole.summary()


def test_a_replayed_batch_from_the_stored_state_reproduces_the_state():
    p, y, r, ts, _d = _stream(6000)
    state = LiveQuality()
    state.observe(p[:4000], y[:4000], r[:4000], ts[:4000], "movielens", "v1")
    stored = state.to_bytes()
    state.observe(p[4000:], y[4000:], r[4000:], ts[4000:], "movielens", "v1")
    after = state.to_bytes()
    replayed = LiveQuality.restore(stored)  # the batch's transaction never committed
    replayed.observe(p[4000:], y[4000:], r[4000:], ts[4000:], "movielens", "v1")
    assert replayed.to_bytes() == after


def test_window_figures_are_the_offline_metrics_on_the_probability_codes():
    p, y, r, ts, _ = _stream(30_000)
    state = LiveQuality()
    state.observe(p, y, r, ts, "movielens", "v1")
    labelled = ~np.isnan(y)
    for w in (1000, 10_000):
        fig = state.summary()["domains"]["movielens"]["windows"][str(w)]
        pl, yl, rl = p[labelled][-w:], y[labelled][-w:], r[labelled][-w:]
        served = P_VALUE[p_codes(pl)]  # what the figures are defined on
        assert fig["n"] == w
        assert fig["roc_auc"] == pytest.approx(roc_auc(yl, served), abs=1e-12)
        assert fig["roc_auc"] == pytest.approx(roc_auc(yl, pl), abs=2e-4)  # the codes cost ~0
        assert fig["rule_roc_auc"] == pytest.approx(roc_auc(yl, rl), abs=1e-12)
        assert fig["log_loss"] == pytest.approx(log_loss(yl, served), abs=1e-9)
        assert fig["ece"] == pytest.approx(expected_calibration_error(yl, served), abs=1e-12)
        assert fig["positive_rate"] == pytest.approx(yl.mean())
        assert fig["mean_p"] == pytest.approx(served.mean())
        assert sum(b["n"] for b in fig["reliability"]) == w


def test_days_follow_event_time_and_keep_the_last_ones():
    p, y, r, ts, _ = _stream(30_000)
    state = LiveQuality(days=7)
    state.observe(p, y, r, ts, "movielens", "v1")
    days = state.summary()["domains"]["movielens"]["days"]
    assert len(days) == 7
    last_day = int(ts[-1] // DAY_MS)
    rows = (ts // DAY_MS == last_day) & ~np.isnan(y)
    assert days[-1]["day"] == str(np.datetime64(last_day, "D"))
    assert days[-1]["n"] == rows.sum()
    assert days[-1]["positive_rate"] == pytest.approx(y[rows].mean())
    assert days[-1]["roc_auc"] == pytest.approx(roc_auc(y[rows], p[rows]), abs=0.01)  # 200 bins
    late = LiveQuality.from_bytes(state.to_bytes())
    late.observe(p[:1], np.array([1.0]), r[:1], ts[:1], "movielens", "v1")  # a month late
    assert late.summary()["domains"]["movielens"]["late_for_days"] == 1
    assert late.summary()["domains"]["movielens"]["days"] == days


def test_partitions_merge_exactly_and_the_offline_function_is_the_live_one():
    p, y, r, ts, d = _stream(20_000)
    part = np.random.default_rng(2).integers(0, 3, len(p))
    live = []
    for k in range(3):  # the consumer: one state per partition, fed in batches
        rows = np.flatnonzero(part == k)
        state = LiveQuality()
        for chunk in np.array_split(rows, 9):
            state.observe(p[chunk], y[chunk], r[chunk], ts[chunk], list(d[chunk]), "v1")
            state = LiveQuality.from_bytes(state.to_bytes())
        live.append(state)
    offline = prequential_quality(p, y, r, ts, list(d), partition=part, model_version="v1")
    assert merged_summary(live) == offline
    movielens = offline["domains"]["movielens"]
    labelled = ~np.isnan(y) & (d == "movielens")
    assert movielens["labelled"] == labelled.sum()
    total = sum(day["n"] for day in movielens["days"])
    assert total == (labelled & (ts // DAY_MS > ts[-1] // DAY_MS - 7)).sum()
    assert offline["domains"]["movielens"]["windows"]["1000"]["n"] == 3000  # 1000 each


def test_a_new_model_version_starts_the_domain_afresh():
    p, y, r, ts, _ = _stream(3000)
    state = LiveQuality()
    state.observe(p, y, r, ts, "movielens", "v1")
    state.observe(p[:10], np.ones(10), r[:10], ts[-10:], "movielens", "v2")
    s = state.summary()["domains"]["movielens"]
    assert s["model_versions"] == ["v2"] and s["labelled"] == 10


def test_bad_bytes_are_refused_and_other_windows_start_afresh():
    state = LiveQuality()
    state.observe(*(x[:500] for x in _stream(500)[:4]), "movielens", "v1")
    data = state.to_bytes()
    for bad in (b"", b"XX", data[:-3], data + b"\0"):
        with pytest.raises(BadState):
            LiveQuality.from_bytes(bad)
    assert LiveQuality.restore(data, windows=(500, 5000)).tracks == {}
    assert LiveQuality.restore(None).tracks == {}
    with pytest.raises(ValueError, match="labels"):
        state.observe(np.array([0.5]), np.array([2.0]), np.array([1.0]), np.array([T0]))


def test_observe_costs_well_under_a_microsecond_per_event():
    p, y, r, ts, _ = _stream(20_000)
    state = LiveQuality()
    state.observe(p[:10], y[:10], r[:10], ts[:10], "movielens", "v1")  # compiled
    start = time.perf_counter()
    for a in range(0, 20_000, 2000):
        state.observe(p[a : a + 2000], y[a : a + 2000], r[a : a + 2000], ts[a : a + 2000],
                      "movielens", "v1")  # fmt: skip
        state.to_bytes()
    per_event_us = (time.perf_counter() - start) / 20_000 * 1e6
    assert per_event_us < 2.0, per_event_us
