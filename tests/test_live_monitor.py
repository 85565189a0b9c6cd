"""scoring.live_monitor: what the consumer holds. Crashes before a batch's transaction
commits (a rollback, or a new process loading what is stored) and the batch read again give
exactly the states of a run without them, which are the offline figures."""

from __future__ import annotations

import numpy as np

from scoring.drift import DriftReference, offline_drift
from scoring.live_monitor import LiveMonitors
from scoring.quality import prequential_quality
from scoring.quality_keys import drift_key, quality_key

TOPIC = "engage.events"
FEATURES = ["a", "b", "c"]


def _batch_rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.random(n)
    prob[rng.random(n) < 0.1] = np.nan  # another domain: not scored by the model
    label = (rng.random(n) < np.nan_to_num(prob, nan=0.5)).astype(np.float64)
    label[rng.random(n) < 0.2] = np.nan
    return {
        "partition": rng.integers(0, 3, n),
        "prob": prob,
        "label": label,
        "rule": rng.random(n) * 100,
        "ts": 1_700_000_000_000 + np.arange(n) * 30_000,
        "domain": np.where(rng.random(n) < 0.7, "movielens", "funnel"),
        "before": rng.normal(size=(n, len(FEATURES))),
    }


def _feed(monitors: LiveMonitors, rows: dict[str, np.ndarray], a: int, b: int) -> dict:
    return monitors.observe(TOPIC, rows["partition"][a:b], rows["prob"][a:b],
                            rows["label"][a:b], rows["rule"][a:b], rows["ts"][a:b],
                            list(rows["domain"][a:b]), rows["before"][a:b])  # fmt: skip


def test_crashes_and_replayed_batches_give_the_states_of_a_run_without_them():
    rows = _batch_rows(12_000, 0)
    reference = DriftReference.fit(np.random.default_rng(9).normal(size=(3000, 3)),
                                   np.zeros(3000), FEATURES)  # fmt: skip
    metrics = {"drift_reference": reference.as_dict()}
    store: dict[str, bytes] = {}

    def started() -> LiveMonitors:  # a consumer process: loads what Redis holds
        monitors = LiveMonitors(block=400, blocks=3)
        monitors.set_model("v1", metrics)
        for p in range(3):
            monitors.load(p, store.get(quality_key(TOPIC, p)), store.get(drift_key(TOPIC, p)))
        return monitors

    monitors = started()
    rng = np.random.default_rng(1)
    a = 0
    while a < len(rows["prob"]):
        b = min(a + int(rng.integers(1, 900)), len(rows["prob"]))
        writes = _feed(monitors, rows, a, b)
        fate = rng.random()
        if fate < 0.15:  # the transaction failed: roll back, read the batch again
            monitors.rollback()
            continue
        if fate < 0.3:  # SIGKILL before the commit: a new process
            monitors = started()
            continue
        store.update(writes)  # the transaction
        monitors.commit()
        a = b
    clean = LiveMonitors(block=400, blocks=3)
    clean.set_model("v1", metrics)
    for p in range(3):
        clean.load(p, None, None)
    writes = _feed(clean, rows, 0, len(rows["prob"]))
    assert writes == store

    scored = ~np.isnan(rows["prob"])
    kept = {name: values[scored] for name, values in rows.items()}
    offline = prequential_quality(kept["prob"], kept["label"], kept["rule"], kept["ts"],
                                  list(kept["domain"]), kept["partition"], "v1")  # fmt: skip
    summary = started().summary()
    assert summary["quality"] == offline["domains"]
    drift = offline_drift(reference, kept["before"], kept["label"], kept["partition"],
                          block=400, blocks=3, model_version="v1")  # fmt: skip
    assert summary["drift"] == drift


def test_a_model_swap_starts_drift_afresh_and_a_model_without_reference_has_none():
    rows = _batch_rows(3000, 2)
    reference = DriftReference.fit(rows["before"], np.zeros(3000), FEATURES)
    monitors = LiveMonitors(block=100, blocks=2)
    monitors.set_model("v1", {"drift_reference": reference.as_dict()})
    for p in range(3):
        monitors.load(p, None, None)
    _feed(monitors, rows, 0, 3000)
    monitors.commit()
    assert monitors.summary()["drift"]["vectors_seen"] > 0
    monitors.set_model("v2", {"drift_reference": reference.as_dict()})
    assert monitors.summary()["drift"]["vectors_seen"] == 0
    monitors.set_model("v3", {})  # a model trained before references were stored
    writes = _feed(monitors, rows, 0, 100)
    assert all(key.startswith("engage:quality:") for key in writes)
    assert monitors.summary()["drift"] is None
    versions = {d: q["model_versions"] for d, q in monitors.summary()["quality"].items()}
    assert versions == {"movielens": ["v3"], "funnel": ["v3"]}


def test_two_batches_in_flight_commit_in_order_and_a_failure_undoes_the_rest():
    rows = _batch_rows(3000, 4)
    reference = DriftReference.fit(rows["before"], np.zeros(3000), FEATURES)
    metrics = {"drift_reference": reference.as_dict()}
    monitors = LiveMonitors(block=100, blocks=2)
    monitors.set_model("v1", metrics)
    for p in range(3):
        monitors.load(p, None, None)
    first = _feed(monitors, rows, 0, 1000)  # its transaction runs while the next is folded
    _feed(monitors, rows, 1000, 2000)
    monitors.commit()  # the first committed
    monitors.rollback()  # the second did not
    after_first = LiveMonitors(block=100, blocks=2)
    after_first.set_model("v1", metrics)
    for p in range(3):
        after_first.load(p, first.get(quality_key(TOPIC, p)), first.get(drift_key(TOPIC, p)))
    assert monitors.summary() == after_first.summary()
    assert _feed(monitors, rows, 1000, 2000) == _feed(after_first, rows, 1000, 2000)


def test_samples_name_every_window_figure_and_feature_for_prometheus():
    from scoring.live_monitor import GAUGES, samples

    rows = _batch_rows(3000, 5)
    reference = DriftReference.fit(rows["before"], np.zeros(3000), FEATURES)
    monitors = LiveMonitors(block=100, blocks=2)
    monitors.set_model("v1", {"drift_reference": reference.as_dict()})
    for p in range(3):
        monitors.load(p, None, None)
    _feed(monitors, rows, 0, 3000)
    out = samples(monitors.summary())
    assert {name for name, _, _ in out} == set(GAUGES)
    auc = {(lab["domain"], lab["window"]): v for n, lab, v in out if n == "engage_model_roc_auc"}
    assert set(auc) == {(d, w) for d in ("movielens", "funnel") for w in ("1000", "10000")}
    assert {lab["feature"] for n, lab, _ in out if n == "engage_feature_psi"} == set(FEATURES)
