"""Online recalibration (scoring/online_calibration.py): exact batches, prequential outputs,
stored state, the label of an event, and that it follows a drifting base rate."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from features.events import Event, EventType
from offline.metrics import expected_calibration_error
from scoring.model import PROB_EPS
from scoring.online_calibration import (
    DEFAULT_RULE,
    FORMAT,
    BadState,
    OnlineCalibrator,
    OnlineParams,
    StateMismatch,
    event_label,
    event_labels,
    labels_of,
    labels_of_codes,
)

ONLINE = [OnlineParams("intercept", window=7), OnlineParams("intercept", window=250),
          OnlineParams("sgd_platt", step=0.05)]  # fmt: skip
IDS = ["intercept-7", "intercept-250", "sgd_platt"]


def _stream(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels (some rows unlabelled) of a stream whose base rate moves."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    shift = np.linspace(0.8, -0.8, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z + shift)))).astype(np.float64)
    y[rng.random(n) < 0.2] = np.nan  # e.g. tags: scored, no label
    p = 1.0 / (1.0 + np.exp(-z))
    p[:3] = (0.0, 1.0, 0.5)  # the ends are clipped as the served probabilities are
    return p, y


# --------------------------------------------------------------------------- references
def _clip(q: float) -> float:
    return min(max(q, PROB_EPS), 1.0 - PROB_EPS)


def _logit(p: float) -> float:
    p = _clip(p)
    return math.log(p / (1.0 - p))


def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


def _reference_intercept(p: np.ndarray, y: np.ndarray, window: int) -> list[float]:
    """The rule written plainly: a deque of the last `window` labels, summed from scratch."""
    last: deque[tuple[int, int]] = deque(maxlen=window)
    out = []
    for p_i, y_i in zip(p.tolist(), y.tolist(), strict=True):
        empty = 0.5 * (window - len(last))
        mean_y = (sum(a for a, _ in last) + empty) / window
        mean_p = (sum(b for _, b in last) / 2.0**40 + empty) / window
        b = _logit(mean_y) - _logit(mean_p)
        out.append(_clip(_sigmoid(_logit(p_i) + b)))
        if not math.isnan(y_i):
            last.append((int(y_i), math.floor(_clip(p_i) * 2.0**40 + 0.5)))
    return out


def _reference_sgd(p: np.ndarray, y: np.ndarray, step: float) -> list[float]:
    a, b, out = 1.0, 0.0, []
    for p_i, y_i in zip(p.tolist(), y.tolist(), strict=True):
        z = _logit(p_i)
        q = _sigmoid(a * z + b)
        out.append(_clip(q))
        if not math.isnan(y_i):
            a -= step * (q - y_i) * z
            b -= step * (q - y_i)
    return out


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("params", ONLINE, ids=IDS)
def test_a_batch_equals_the_plain_loop_and_any_batching(params: OnlineParams):
    p, y = _stream()
    whole = OnlineCalibrator(params, "v1").process(p, y)
    if params.rule == "intercept":
        reference = _reference_intercept(p, y, params.window)
    else:
        reference = _reference_sgd(p, y, params.step)
    assert whole.tolist() == reference  # bit for bit, not approximately

    one_by_one = OnlineCalibrator(params, "v1")
    rows = [one_by_one.process(p[i : i + 1], y[i : i + 1])[0] for i in range(len(p))]
    assert rows == whole.tolist()

    cuts = sorted(np.random.default_rng(1).choice(len(p), 40, replace=False).tolist())
    batched = OnlineCalibrator(params, "v1")
    bounds = zip([0, *cuts], [*cuts, len(p)], strict=True)
    parts = [batched.process(p[a:b], y[a:b]) for a, b in bounds]
    assert np.concatenate(parts).tolist() == whole.tolist()
    assert batched.to_bytes() == one_by_one.to_bytes()


@pytest.mark.parametrize("params", ONLINE, ids=IDS)
def test_a_row_never_depends_on_its_own_label_or_later_ones(params: OnlineParams):
    p, y = _stream(1500, seed=2)
    base = OnlineCalibrator(params, "v1").process(p, y)
    rng = np.random.default_rng(3)
    for i in rng.choice(len(p) - 50, 25, replace=False):
        for changed_to in ("flip", "nan"):
            y2 = y.copy()
            tail = y2[i:]
            y2[i:] = np.where(np.isnan(tail), 1.0, 1.0 - tail) if changed_to == "flip" else np.nan
            out = OnlineCalibrator(params, "v1").process(p, y2)
            assert out[: i + 1].tolist() == base[: i + 1].tolist()
            assert not np.array_equal(out[i + 1 :], base[i + 1 :])  # later rows do learn


def test_without_labels_the_offline_calibration_is_served():
    p = np.random.default_rng(4).uniform(0.01, 0.99, 500)
    unlabelled = np.full(len(p), np.nan)
    assert OnlineCalibrator(OnlineParams("none"), "v1").process(p, unlabelled).tolist() == (
        p.tolist()
    )
    for params in ONLINE:
        out = OnlineCalibrator(params, "v1").process(p, unlabelled)
        assert np.allclose(out, p, rtol=0, atol=1e-12)


def test_labels_and_probabilities_are_checked_before_any_state_changes():
    cal = OnlineCalibrator(OnlineParams("intercept", window=5), "v1")
    before = cal.to_bytes()
    with pytest.raises(ValueError, match="labels"):
        cal.process(np.array([0.3, 0.4]), np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="one length"):
        cal.process(np.array([0.3, 0.4]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        cal.process(np.array([np.nan]), np.array([1.0]))
    assert cal.to_bytes() == before
    with pytest.raises(ValueError):
        OnlineParams("platt")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- stored state
@pytest.mark.parametrize("params", ONLINE, ids=IDS)
def test_state_round_trip_continues_exactly(params: OnlineParams):
    p, y = _stream(2000, seed=5)
    whole = OnlineCalibrator(params, "v7").process(p, y)
    first = OnlineCalibrator(params, "v7")
    head = first.process(p[:1234], y[:1234])
    stored = first.to_bytes()
    assert stored[2] == FORMAT
    again = OnlineCalibrator.from_bytes(stored, "v7", params)
    assert again.to_bytes() == stored and again.labels_seen == first.labels_seen
    assert again.adjustment == first.adjustment
    tail = again.process(p[1234:], y[1234:])
    assert np.concatenate([head, tail]).tolist() == whole.tolist()


def test_a_state_of_another_model_or_parameters_is_refused():
    params = OnlineParams("intercept", window=20)
    p, y = _stream(300, seed=6)
    cal = OnlineCalibrator(params, "v-old")
    cal.process(p, y)
    stored = cal.to_bytes()
    with pytest.raises(StateMismatch, match="v-old"):
        OnlineCalibrator.from_bytes(stored, "v-new", params)
    for other in (OnlineParams("intercept", window=21), OnlineParams("sgd_platt", window=20)):
        with pytest.raises(StateMismatch):
            OnlineCalibrator.from_bytes(stored, "v-old", other)
    other_format = stored[:2] + bytes([FORMAT + 1]) + stored[3:]
    with pytest.raises(StateMismatch, match="format"):
        OnlineCalibrator.from_bytes(other_format, "v-old", params)
    for garbage in (b"", b"xx", stored[:-1], stored + b"\0", b"XY" + stored[2:]):
        with pytest.raises(BadState):
            OnlineCalibrator.from_bytes(garbage, "v-old", params)
    # restore: a new model version (or new settings) starts from its offline calibration ...
    fresh = OnlineCalibrator.restore(stored, "v-new", params)
    assert fresh.labels_seen == 0 and fresh.adjustment == (1.0, 0.0)
    assert OnlineCalibrator.restore(None, "v-old", params).labels_seen == 0
    # ... its own state is continued, and corruption is never silently reset
    assert OnlineCalibrator.restore(stored, "v-old", params).to_bytes() == stored
    with pytest.raises(BadState):
        OnlineCalibrator.restore(stored[:-3], "v-old", params)


# --------------------------------------------------------------------------- behaviour
def test_the_online_rules_follow_a_drifting_base_rate():
    """The static map was right when it was fitted; then the base rate falls (as from
    MovieLens' validation period to its test period). The online rules must track it (ECE well
    below the static one), and cost little when the rate does not move."""
    rng = np.random.default_rng(8)
    n = 40_000
    z = rng.normal(0.0, 1.5, n)
    p = 1.0 / (1.0 + np.exp(-z))
    for shift, must_beat in ((np.linspace(0.0, -1.5, n), True), (np.zeros(n), False)):
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(z + shift)))).astype(np.float64)
        static = expected_calibration_error(y, p)
        for params in (OnlineParams("intercept", window=500), OnlineParams("sgd_platt")):
            online = expected_calibration_error(y, OnlineCalibrator(params, "v").process(p, y))
            if must_beat:
                assert static > 0.08 and online < 0.5 * static, (params, online, static)
            else:
                assert online < static + 0.01, (params, online, static)


def test_served_parameters_settings_first_then_the_training_choice():
    chosen = {"intercept": {"rule": "intercept", "window": 1000, "step": 0.01},
              "sgd_platt": {"rule": "sgd_platt", "window": 250, "step": 0.003}}  # fmt: skip
    assert OnlineParams.served("intercept", chosen=chosen).window == 1000
    assert OnlineParams.served("intercept", window=50, chosen=chosen).window == 50
    assert OnlineParams.served("sgd_platt", chosen=chosen).step == 0.003
    assert OnlineParams.served("sgd_platt") == OnlineParams("sgd_platt", 250, 0.01)

    from engage.settings import Settings

    metrics = {"online_calibration": {"chosen": chosen}}
    assert OnlineParams.for_model(Settings(), metrics) == OnlineParams("sgd_platt", 250, 0.003)
    settings = Settings(online_calibration="intercept", online_calibration_window=64)
    assert OnlineParams.for_model(settings, metrics) == OnlineParams("intercept", 64, 0.01)
    assert OnlineParams.for_model(Settings(), {}) == OnlineParams()  # a bundle from before


def test_settings_choose_the_rule(monkeypatch):
    from pydantic import ValidationError

    from engage.settings import Settings

    assert Settings().online_calibration == DEFAULT_RULE == OnlineParams().rule
    monkeypatch.setenv("ENGAGE_ONLINE_CALIBRATION", "intercept")
    monkeypatch.setenv("ENGAGE_ONLINE_CALIBRATION_WINDOW", "500")
    settings = Settings()
    assert (settings.online_calibration, settings.online_calibration_window) == ("intercept", 500)
    monkeypatch.setenv("ENGAGE_ONLINE_CALIBRATION", "isotonic")
    with pytest.raises(ValidationError):
        Settings()


# --------------------------------------------------------------------------- labels
def _event(event_type: EventType, value: float | None = None, source: str = "web") -> Event:
    return Event(event_id="e", user_id="u", ts=1_700_000_000_000, event_type=event_type,
                 value=value, item_id="m1", source=source)  # fmt: skip


def test_the_label_of_an_event_from_the_event_alone():
    assert event_label(_event(EventType.RATING, 4.0, "movielens")) == 1.0
    assert event_label(_event(EventType.RATING, 3.5, "movielens")) == 0.0
    assert math.isnan(event_label(_event(EventType.TAG, source="movielens")))
    for engaged in (EventType.DEMO_REQUEST, EventType.SIGNUP, EventType.CALENDAR_BOOKING):
        assert event_label(_event(engaged)) == 1.0
    for step in (EventType.PAGE_VIEW, EventType.PRICING_VIEW):
        assert event_label(_event(step)) == 0.0


def test_event_labels_are_the_training_labels():
    """Over a log, the labelled events' labels are the training rows' y, in the same order."""
    from offline.dataset import build_dataset
    from tests.offline_synth import synthetic_log

    events, meta = synthetic_log(n_users=12, per_user=15)
    data = build_dataset(events, meta)
    labels = event_labels(events)
    assert np.isnan(labels).sum() == sum(e.event_type is EventType.TAG for e in events) > 0
    assert labels[~np.isnan(labels)].tolist() == data.y.astype(float).tolist()


def test_labels_from_the_readers_arrays_are_the_labels_of_the_events():
    """`labels_of_codes` (type indices and values as arrays, NaN where none) gives what
    `labels_of` gives from the columns, on every type, ratings on both sides of the line,
    exactly on it, and a rating without a value."""
    rng = np.random.default_rng(3)
    types = list(EventType)
    kinds = [types[k] for k in rng.integers(0, len(types), 500)]
    values: list[float | None] = [
        float(rng.choice([0.5, 3.5, 3.99, 4.0, 4.5, 5.0])) if k is EventType.RATING else None
        for k in kinds
    ]
    values[kinds.index(EventType.RATING)] = None
    index = np.array([types.index(k) for k in kinds], np.int64)
    arrays = np.array([math.nan if v is None else v for v in values])
    expected = labels_of(kinds, values)
    got = labels_of_codes(index, arrays)
    assert np.array_equal(got, expected, equal_nan=True)
    assert {0.0, 1.0} <= set(got[index == types.index(EventType.RATING)].tolist())
    assert np.isnan(got[index == types.index(EventType.TAG)]).all()


# --------------------------------------------------------------------------- offline
def test_training_chooses_the_online_parameters_before_the_test_period():
    """`engage train`'s online figures: the parameters are chosen on the validation period by
    a model fit before it (changing every test-period label changes no choice), and the served
    row is the calibrator run over the test rows in order."""
    import dataclasses

    from offline.calibration_online import dev_split, online_evaluation, run_online
    from offline.dataset import build_dataset
    from offline.splits import temporal_split
    from offline.train import fit_one
    from tests.offline_synth import synthetic_log

    data = build_dataset(*synthetic_log(n_users=80, per_user=30))
    split = temporal_split(data)
    dev = dev_split(data, split)
    assert np.array_equal(dev.test, split.val)
    assert np.array_equal(np.sort(np.r_[dev.train, dev.val]), split.train)
    assert data.ts[dev.train].max() < data.ts[dev.val].min() <= data.ts[dev.val].max()
    assert data.ts[dev.val].max() < data.ts[split.val].min()

    model, _ = fit_one(data, split, "interaction", "xgboost")
    result = online_evaluation(data, split, model, "intercept")
    y = data.y.astype(float)
    y[split.test] = 1.0 - y[split.test]
    flipped = online_evaluation(dataclasses.replace(data, y=y.astype(np.int8)), split, model)
    assert flipped["chosen"] == result["chosen"] and flipped["dev"] == result["dev"]
    assert flipped["test"] != result["test"]

    served = OnlineParams(**result["chosen"]["intercept"])
    assert result["served"]["window"] == served.window
    y_test = data.y[split.test].astype(float)
    p = run_online(served, model.predict_proba(data.X[split.test]), y_test)
    assert result["served"]["ece"] == expected_calibration_error(y_test, p)


def test_engage_train_reports_and_registers_the_served_online_figures(tmp_path):
    import json

    from rich.console import Console

    from engage.settings import Settings
    from offline.train import run_training
    from scoring.registry import ModelRegistry
    from tests.offline_synth import synthetic_log

    settings = Settings(data_dir=tmp_path, online_calibration="intercept")
    events, meta = synthetic_log(n_users=40, per_user=30)
    result = run_training(settings, events, meta, {"source": "test"}, n_boot=20,
                          console=Console(quiet=True))  # fmt: skip
    report = (result.run_dir / "report.md").read_text()
    assert "## Served probability: online calibration" in report
    assert "online_calibration=intercept" in report
    online = json.loads((result.run_dir / "metrics.json").read_text())["online_calibration"]
    manifest = ModelRegistry(settings).manifest(result.version)
    assert manifest["metrics"]["online_calibration"] == online
    assert online["served"]["rule"] == "intercept"
    assert online["served"]["window"] == online["chosen"]["intercept"]["window"]
    assert set(online["test"]) == {"served Platt", "none", "intercept", "sgd_platt"}
    assert online["served"]["ece"] == online["test"]["intercept"]["ece"]
