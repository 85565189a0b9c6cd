"""A model's live quality and drift over an events log, offline (issue 18): what the
consumer's per-partition states hold (scoring.quality, scoring.drift) once it has scored the
same events in the same order. One definition: the same `LiveQuality` and `DriftMonitor`,
fed with the rows the consumer serves.

Each admitted event (admission and the compiled fold of the consumer, as `offline.dataset`
runs them) gives its before-event vector; an event of a domain the model covers gets the
interaction model's probability, recalibrated online per partition and domain, as the
consumer keeps its calibrators (scoring.online_calibration, the settings' rule, in the
partition's order, which is the log's), and the rule score of the user's state *before* the event
(the rule score after it has already counted the event's own outcome, so its AUC against that
outcome would flatter the rule). The partition is the one the replay's key (the user id)
hashes to. The funnel rows' propensity scores (on the user's state *after* the event, with
the rule score served beside them) go through each partition's `FunnelJoin` as the consumer
runs it; what resolves enters the quality as the track "funnel/propensity".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engage.partitioning import positive_murmur2
from engage.settings import Settings
from features.events import Event
from features.fold import FoldState
from features.items import ItemMeta
from features.stream import StreamState
from features.vector import PROPENSITY_FEATURES
from offline.dataset import _chunks
from scoring.drift import offline_drift, reference_of
from scoring.funnel_join import TRACK, FunnelJoin, FunnelRows, merged_counts
from scoring.model import ModelBundle
from scoring.online_calibration import OnlineCalibrator, OnlineParams, event_label
from scoring.quality import prequential_quality
from scoring.rules import domain_of, load_scorers

CHUNK = 50_000


@dataclass
class ServedRows:
    """One row per admitted event the model scores, in log order."""

    X: np.ndarray  # before-event interaction vectors
    prob: np.ndarray  # served (online-calibrated) probability
    rule: np.ndarray  # rule score of the user's state before the event
    label: np.ndarray  # 1.0 / 0.0 / NaN (scoring.online_calibration.event_label)
    ts: np.ndarray  # event time, ms
    domain: list[str]
    partition: np.ndarray
    #: The funnel rows' served propensity, for the join (None: no funnel row).
    funnel: FunnelRows | None = None


def served_rows(
    events: Iterable[Event], meta: dict[str, ItemMeta], bundle: ModelBundle, settings: Settings,
    calibrate: bool = True,
) -> ServedRows:  # fmt: skip
    """The rows the consumer would serve for `events` (in the log's order)."""
    state = StreamState(settings.feature_params, settings.admission_policy,
                        FoldState(meta=dict(meta)))  # fmt: skip
    scorers = load_scorers(settings.rules_file)
    params = OnlineParams.for_model(settings, bundle.metrics)
    calibrators: dict[tuple[int, str], OnlineCalibrator] = {}
    n_prop = len(PROPENSITY_FEATURES)
    blocks: list[ServedRows] = []
    funnels: list[FunnelRows] = []
    for chunk in _chunks(events, CHUNK):
        folded = state.apply(chunk)
        applied = [chunk[i] for i in folded.admitted]
        domains = [domain_of(e.source) for e in applied]
        keep = np.array([bundle.covers(d) for d in domains], dtype=bool)
        before = folded.out.before[keep] if len(applied) else np.empty((0, 0))
        kept = [e for e, k in zip(applied, keep.tolist(), strict=True) if k]
        kept_domains = [d for d, k in zip(domains, keep.tolist(), strict=True) if k]
        if not kept:
            continue
        label = np.array([event_label(e) for e in kept])
        # float64: the calibrated p is not rounded back to the model's float32 (the consumer's)
        prob = bundle.interaction.predict_proba(before).astype(np.float64)
        rule = np.empty(len(kept))
        partition = np.array([positive_murmur2(e.user_id.encode()) % settings.partitions
                              for e in kept])  # fmt: skip
        by_domain: dict[str, list[int]] = {}
        for i, d in enumerate(kept_domains):
            by_domain.setdefault(d, []).append(i)
        for d, rows in by_domain.items():
            rule[rows] = scorers[d].score(before[rows, :n_prop]).score
        if calibrate:
            prob = calibrated_online(calibrators, params, bundle.version, prob, label,
                                     partition.tolist(), kept_domains)  # fmt: skip
        ts = np.array([e.ts for e in kept], dtype=np.int64)
        blocks.append(ServedRows(before, prob, rule, label, ts, kept_domains, partition))
        fun = by_domain.get("funnel")
        if fun:
            after = folded.out.after[keep][fun, :n_prop]
            funnels.append(FunnelRows(partition[fun], [kept[i].user_id for i in fun], ts[fun],
                                      bundle.propensity.predict_proba(after),
                                      scorers["funnel"].score(after).score,
                                      label[fun] == 1.0))  # fmt: skip
    if not blocks:
        width = len(bundle.interaction.features)
        empty = np.empty(0)
        return ServedRows(np.empty((0, width)), empty, empty, empty, empty.astype(np.int64), [],
                          empty.astype(np.int64))  # fmt: skip
    return ServedRows(
        np.vstack([b.X for b in blocks]),
        np.concatenate([b.prob for b in blocks]),
        np.concatenate([b.rule for b in blocks]),
        np.concatenate([b.label for b in blocks]),
        np.concatenate([b.ts for b in blocks]),
        [d for b in blocks for d in b.domain],
        np.concatenate([b.partition for b in blocks]),
        _joined(funnels),
    )


def calibrated_online(
    calibrators: dict[tuple[int, str], OnlineCalibrator], params: OnlineParams, version: str,
    prob: np.ndarray, label: np.ndarray, partitions: list[int], domains: list[str],
) -> np.ndarray:  # fmt: skip
    """`prob` recalibrated online as the consumer serves it: one calibrator per partition and
    domain (kept in `calibrators` from call to call), each fed its rows in order."""
    if params.rule == "none":
        return prob
    out = np.array(prob, dtype=np.float64)
    by_calibrator: dict[tuple[int, str], list[int]] = {}
    for i, key in enumerate(zip(partitions, domains, strict=True)):
        by_calibrator.setdefault(key, []).append(i)
    for key, rows in by_calibrator.items():
        calibrator = calibrators.setdefault(key, OnlineCalibrator(params, version))
        out[rows] = calibrator.process(prob[rows], label[rows])
    return out


def log_quality(
    events: Iterable[Event], meta: dict[str, ItemMeta], bundle: ModelBundle, settings: Settings,
    calibrate: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """{"quality": per domain (scoring.quality.merged_summary's), "drift": merged_drift's or
    None without a stored reference}: the figures `engage quality` would show after the
    consumer scored `events`."""
    rows = served_rows(events, meta, bundle, settings, calibrate)
    prob, label, rule, ts, domain, partition = (rows.prob, rows.label, rows.rule, rows.ts,
                                                rows.domain, rows.partition)  # fmt: skip
    counts = None
    if rows.funnel is not None:
        joined, counts = funnel_join(rows.funnel, settings, bundle.version)
        for p, (_join, done) in joined.items():
            prob, label = np.concatenate([prob, done.prob]), np.concatenate([label, done.label])
            rule, ts = np.concatenate([rule, done.rule]), np.concatenate([ts, done.ts])
            domain = [*domain, *[TRACK] * len(done)]
            partition = np.concatenate([partition, np.full(len(done), p)])
    quality = prequential_quality(prob, label, rule, ts, domain, partition, bundle.version,
                                  days=settings.quality_days)  # fmt: skip
    reference = reference_of(bundle.metrics)
    drift = None
    if reference is not None:
        drift = offline_drift(
            reference,
            rows.X,
            rows.label,
            rows.partition,
            settings.drift_psi_threshold,
            settings.drift_block_vectors,
            settings.drift_blocks,
            ignore=settings.drift_ignore_features,
            model_version=bundle.version,
        )
    return {"quality": quality["domains"], "drift": drift, "rows": len(rows.prob),
            "funnel": counts}  # fmt: skip


def _joined(funnels: list[FunnelRows]) -> FunnelRows | None:
    if not funnels:
        return None
    arrays = [np.concatenate([getattr(f, name) for f in funnels])
              for name in ("partition", "ts", "prob", "rule", "converted")]  # fmt: skip
    users = [u for f in funnels for u in f.users]
    return FunnelRows(arrays[0], users, *arrays[1:])


def funnel_join(
    rows: FunnelRows, settings: Settings, model_version: str
) -> tuple[dict[int, tuple[FunnelJoin, Any]], dict[str, int]]:
    """Each partition's join run over its funnel rows in log order: partition -> (the join,
    what resolved, scoring.funnel_join.Resolved), and the counters summed."""
    horizon_ms = round(settings.funnel_label_horizon_s * 1000)
    out = {}
    part = np.asarray(rows.partition)
    for p in np.unique(part).tolist():
        at = np.flatnonzero(part == p)
        join = FunnelJoin(horizon_ms, settings.funnel_max_pending, model_version)
        users = [rows.users[i] for i in at.tolist()]
        resolved = join.observe(users, rows.ts[at], rows.prob[at], rows.rule[at],
                                rows.converted[at])  # fmt: skip
        out[p] = (join, resolved)
    return out, merged_counts(join for join, _ in out.values())
