"""The consumer serves the online-calibrated probability (issue 18): `BatchScorer` with the live
states gives, on every score message, `interaction_online` = `OnlineCalibrator` run offline
over the same rows (one calibrator per partition and domain, each partition's rows in order),
whatever the batches and with a restart from the stored bytes after any batch; the states it
writes are the offline figures (offline.live_quality)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from consumer.batch import BatchScorer, Incoming
from engage.partitioning import positive_murmur2
from engage.settings import Settings
from features.events import Event
from features.fold import FoldState
from features.items import ItemMeta
from features.stream import StreamState
from features.vector import INTERACTION_FEATURES
from offline.dataset import build_dataset
from offline.live_quality import log_quality, served_rows
from scoring.drift import DriftReference
from scoring.live_monitor import LiveMonitors
from scoring.online_calibration import OnlineCalibrator, OnlineParams
from scoring.quality import merged_summary
from scoring.quality_keys import calibration_key, drift_key, quality_key
from scoring.rules import load_scorers
from tests.batch_runs import loaded_from_tables, random_batches
from tests.eventlog import make_log
from tests.offline_synth import fitted_bundle, synthetic_log

TOPIC = "t.events"
PARTITIONS = 3


def _bundle(settings: Settings):
    events, meta = synthetic_log(n_users=40, per_user=30)
    data = build_dataset(events, meta, settings.feature_params)
    bundle = fitted_bundle(data, settings.feature_params)
    bundle.version = "vserved"
    reference = DriftReference.fit(data.X, data.y, INTERACTION_FEATURES)
    bundle.metrics["drift_reference"] = reference.as_dict()
    return bundle


def _log() -> tuple[list[Event], dict[str, ItemMeta]]:
    raw, genres = make_log(n_users=40, events_per_user=40, seed=3)  # funnel and movielens
    return [Event(**e) for e in raw], {i: ItemMeta(tuple(g)) for i, g in genres.items()}


def _consume(settings, bundle, events, meta, rng, restarts: bool):
    """BatchScorer over `events` in random batches, the live states written to `store` after
    each batch (its transaction) and, when `restarts`, loaded afresh from there."""
    scorer = BatchScorer(load_scorers(settings.rules_file), log_features=False)
    scorer.model, scorer.topic = bundle, TOPIC
    store: dict[str, bytes] = {}

    def started() -> LiveMonitors:
        live = LiveMonitors(settings)
        live.set_model(bundle.version, bundle.metrics)
        for p in range(PARTITIONS):
            live.load(p, *(store.get(k) for k in live.keys(TOPIC, p)))
        return live

    scorer.live = started()
    state = StreamState(settings.feature_params, settings.admission_policy,
                        FoldState(meta=dict(meta)))  # fmt: skip
    incoming = [Incoming(e, positive_murmur2(e.user_id.encode()) % PARTITIONS, i, 0)
                for i, e in enumerate(events)]  # fmt: skip
    messages = []
    for chunk in random_batches(incoming, rng, 120):
        scored = scorer.run(state, chunk, loaded_from_tables(state, chunk))
        store.update(scored.writes.live)  # the batch's transaction
        scorer.live.commit()
        messages += [orjson.loads(value) for _key, value in scored.messages]
        if restarts and rng.random() < 0.3:
            scorer.live = started()
    return messages, store, scorer.live


@pytest.mark.parametrize("rule", ["sgd_platt", "intercept"])
def test_the_served_probability_is_the_online_calibrators_over_the_same_rows(tmp_path, rule):
    settings = Settings(data_dir=tmp_path, partitions=PARTITIONS, live_quality=True,
                        online_calibration=rule, online_calibration_window=50,
                        drift_block_vectors=100, drift_blocks=3)  # fmt: skip
    bundle = _bundle(settings)
    events, meta = _log()
    messages, store, _live = _consume(settings, bundle, events, meta, np.random.default_rng(1),
                                      restarts=True)  # fmt: skip
    scored = [m for m in messages if m["model"] and "interaction" in m["model"]]
    assert len(scored) > 1000

    rows = served_rows(events, meta, bundle, settings, calibrate=False)  # the model's p
    params = OnlineParams.for_model(settings, bundle.metrics)
    calibrators: dict[tuple[int, str], OnlineCalibrator] = {}
    expected = np.empty(len(rows.prob))
    for i, (p, d) in enumerate(zip(rows.partition.tolist(), rows.domain, strict=True)):
        calibrator = calibrators.setdefault((p, d), OnlineCalibrator(params, bundle.version))
        expected[i] = calibrator.process(rows.prob[i : i + 1], rows.label[i : i + 1])[0]
    assert set(rows.domain) == {"movielens", "funnel"}
    served = np.array([m["model"]["interaction_online"] for m in scored])
    model_p = np.array([m["model"]["interaction"] for m in scored])
    assert len(served) == len(expected)
    assert np.abs(served - expected).max() <= 5e-7  # the wire rounds to 6 decimals
    assert np.abs(model_p - rows.prob).max() <= 2e-6  # float32 p, rounded on the wire
    assert np.abs(served - model_p).max() > 0.01  # the calibration did move them

    offline = log_quality(events, meta, bundle, settings)  # the states: the offline figures
    live = LiveMonitors(settings)
    live.set_model(bundle.version, bundle.metrics)
    for p in range(PARTITIONS):
        live.load(p, store[quality_key(TOPIC, p)], store[drift_key(TOPIC, p)],
                  store[calibration_key(TOPIC, p)])  # fmt: skip
    assert merged_summary(live.quality.values())["domains"] == offline["quality"]
    assert live.summary()["drift"] == offline["drift"]


def test_with_live_quality_off_only_the_calibrators_are_written(tmp_path):
    settings = Settings(data_dir=tmp_path, partitions=PARTITIONS, live_quality=False)
    bundle = _bundle(settings)
    events, meta = _log()
    messages, store, live = _consume(settings, bundle, events[:600], meta,
                                     np.random.default_rng(2), restarts=False)  # fmt: skip
    assert store and all(key.startswith("engage:calibration:") for key in store)
    assert live.summary() == {"quality": {}, "drift": None, "funnel": None}
    on = Settings(data_dir=tmp_path, partitions=PARTITIONS, live_quality=True)
    same, _store, _ = _consume(on, bundle, events[:600], meta, np.random.default_rng(2),
                               restarts=False)  # fmt: skip
    assert [m["model"] for m in messages] == [m["model"] for m in same]


def test_a_rollback_undoes_the_calibrators_of_every_batch_not_committed(tmp_path):
    settings = Settings(data_dir=tmp_path, partitions=PARTITIONS, live_quality=True)
    bundle = _bundle(settings)
    live = LiveMonitors(settings)
    live.set_model(bundle.version, bundle.metrics)
    for p in range(PARTITIONS):
        live.load(p, None, None, None)
    rng = np.random.default_rng(0)
    part = rng.integers(0, PARTITIONS, 400)
    prob, label = rng.random(400), (rng.random(400) < 0.5).astype(float)
    domains = ["movielens"] * 400

    def batch(a: int, b: int) -> tuple[np.ndarray, dict[str, bytes]]:
        served = live.calibrate(part[a:b], prob[a:b], label[a:b], domains[a:b])
        return served, live.observe(TOPIC, part[a:b], np.full(b - a, np.nan), label[a:b],
                                    None, np.zeros(b - a, np.int64), domains[a:b],
                                    np.empty((b - a, 0)))  # fmt: skip

    first, _ = batch(0, 200)
    second, _ = batch(200, 400)  # folded while the first commits
    live.rollback()  # the first did not commit: both are read again
    assert np.array_equal(batch(0, 200)[0], first)
    live.commit()
    assert np.array_equal(batch(200, 400)[0], second)
    live.set_model("vnext", bundle.metrics)  # a new model starts from the offline calibration
    again = live.calibrate(part[:200], prob[:200], label[:200], domains[:200])
    fresh = LiveMonitors(settings)
    fresh.set_model("vnext", bundle.metrics)
    for p in range(PARTITIONS):
        fresh.load(p, None, None, None)
    assert np.array_equal(again, fresh.calibrate(part[:200], prob[:200], label[:200],
                                                 domains[:200]))  # fmt: skip


def test_event_labels_is_event_label_of_each_event():
    from features.events import EventType
    from scoring.online_calibration import event_label, event_labels

    events, _meta = _log()
    base = events[0].model_dump()
    for t in EventType:  # every type, and ratings around the threshold and without a value
        for value in (None, 0.5, 3.5, 4.0, 5.0):
            events.append(Event.model_construct(**{**base, "event_type": t, "value": value}))
    expected = np.array([event_label(e) for e in events])
    got = event_labels(iter(events))
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.nan_to_num(got, nan=-9), np.nan_to_num(expected, nan=-9))


def test_the_consumer_exports_every_live_figure_as_a_prometheus_gauge(tmp_path):
    from prometheus_client import REGISTRY

    from consumer.metrics import export_live_quality
    from scoring.live_monitor import samples

    settings = Settings(data_dir=tmp_path, partitions=PARTITIONS, live_quality=True,
                        drift_block_vectors=100, drift_blocks=3)  # fmt: skip
    bundle = _bundle(settings)
    events, meta = _log()
    _messages, _store, live = _consume(settings, bundle, events, meta, np.random.default_rng(3),
                                       restarts=False)  # fmt: skip
    summary = live.summary()
    export_live_quality(summary)
    export_live_quality(summary)  # again: the same gauges, set anew
    figures = samples(summary)
    assert {name for name, _, _ in figures} >= {"engage_model_roc_auc", "engage_feature_psi",
                                                "engage_model_drifting"}  # fmt: skip
    for name, labels, value in figures:
        assert REGISTRY.get_sample_value(name, labels) == value
