"""offline.live_quality: the figures of a log are what per-partition states fed in any batches
hold (the consumer's way), on real feature vectors, model probabilities and rule scores."""

from __future__ import annotations

import numpy as np

from engage.settings import Settings
from features.vector import INTERACTION_FEATURES
from offline.dataset import build_dataset
from offline.live_quality import log_quality, served_rows
from offline.metrics import roc_auc
from scoring.drift import DriftMonitor, DriftReference, merged_drift
from scoring.funnel_join import TRACK
from scoring.quality import LiveQuality, merged_summary
from tests.offline_synth import fitted_bundle, synthetic_log


def test_the_offline_figures_are_the_live_states_whatever_the_batches(tmp_path):
    settings = Settings(data_dir=tmp_path, partitions=3, drift_block_vectors=100, drift_blocks=3)
    events, meta = synthetic_log(n_users=40, per_user=30)
    data = build_dataset(events, meta, settings.feature_params)
    bundle = fitted_bundle(data, settings.feature_params)
    bundle.version = "vtest"
    reference = DriftReference.fit(data.X, data.y, INTERACTION_FEATURES)
    bundle.metrics["drift_reference"] = reference.as_dict()
    offline = log_quality(events, meta, bundle, settings)
    rows = served_rows(events, meta, bundle, settings)
    assert offline["rows"] == len(rows.prob) > 0 and set(rows.partition.tolist()) == {0, 1, 2}

    rng = np.random.default_rng(5)
    qualities, monitors = [], []
    for partition in range(3):  # the consumer: one state per partition, stored after each batch
        quality = LiveQuality(days=settings.quality_days)
        monitor = DriftMonitor(
            reference, bundle.version, settings.drift_block_vectors, settings.drift_blocks
        )
        mine = np.flatnonzero(rows.partition == partition)
        start = 0
        while start < len(mine):
            batch = mine[start : start + int(rng.integers(1, 60))]
            domains = [rows.domain[i] for i in batch]
            quality.observe(rows.prob[batch], rows.label[batch], rows.rule[batch],
                            rows.ts[batch], domains, bundle.version)  # fmt: skip
            monitor.observe(rows.X[batch], rows.label[batch])
            quality = LiveQuality.from_bytes(quality.to_bytes())  # a restart after every batch
            monitor = DriftMonitor.from_bytes(monitor.to_bytes(), reference)
            start += len(batch)
        qualities.append(quality)
        monitors.append(monitor)
    # the funnel propensity's track (the delayed labels' join): tests/test_funnel_join.py
    interaction = {d: q for d, q in offline["quality"].items() if d != TRACK}
    assert TRACK in offline["quality"] and offline["funnel"]["positive"] > 0
    assert merged_summary(qualities)["domains"] == interaction
    live_drift = merged_drift(monitors, settings.drift_psi_threshold,
                              ignore=settings.drift_ignore_features)  # fmt: skip
    assert live_drift == offline["drift"]

    funnel = offline["quality"]["funnel"]  # synthetic_log's source "test" is a funnel
    labelled = ~np.isnan(rows.label)
    assert funnel["labelled"] == labelled.sum()
    assert funnel["windows"]["10000"]["n"] == labelled.sum()  # the whole log fits the window
    expected = roc_auc(rows.label[labelled], rows.prob[labelled])
    assert abs(funnel["windows"]["10000"]["roc_auc"] - expected) < 1e-3  # on p's 16-bit codes
