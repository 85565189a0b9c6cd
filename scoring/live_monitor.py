"""What the consumer holds for issue 18's live quality and drift: one `LiveQuality` and one
`DriftMonitor` per partition it owns, fed once per batch, their bytes written in the batch's
transaction (scoring.quality_keys), committed or rolled back with it.

    monitors = LiveMonitors(settings)
    monitors.set_model(bundle.version, bundle.metrics)          # and on every model swap
    monitors.load(p, *(client.get(k) for k in monitors.keys(topic, p)))  # each assigned
    writes = monitors.observe(topic, partition, prob, label, rule_before, ts, domain, before,
                              funnel)  # funnel: the funnel rows' propensity (FunnelRows)
    # ... SET every key -> bytes of `writes` in the batch's transaction, then:
    monitors.commit()       # the transaction committed
    monitors.rollback()     # it did not (or its outcome is unknown and the batch is re-read)

Rows the model did not score (another domain: prob NaN) count for neither; rows without a
label (NaN) count for drift only. The funnel's propensity scores wait for their user's
conversion in the partition's `FunnelJoin` (scoring.funnel_join, its own key) and enter the
quality state as the track "funnel/propensity" once their label is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from features.distinct import sorted_distinct
from scoring.drift import (
    DEFAULT_BLOCK,
    DEFAULT_BLOCKS,
    DEFAULT_IGNORE,
    DEFAULT_THRESHOLD,
    DriftMonitor,
    DriftReference,
    merged_drift,
    reference_of,
)
from scoring.drift import BadState as BadDriftState
from scoring.funnel_join import TRACK, FunnelJoin, FunnelRows, merged_counts
from scoring.funnel_join import BadState as BadJoinState
from scoring.online_calibration import BadState as BadCalibrationState
from scoring.online_calibration import (
    OnlineCalibrator,
    OnlineParams,
    domains_from_bytes,
    domains_to_bytes,
)
from scoring.quality import DEFAULT_DAYS, WINDOWS, LiveQuality, merged_summary
from scoring.quality import BadState as BadQualityState
from scoring.quality_keys import calibration_key, drift_key, funnel_key, quality_key

if TYPE_CHECKING:
    from engage.settings import Settings


#: A partition's stored bytes: quality, drift, calibration, funnel join.
_Stored = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
#: The funnel join's defaults without settings (`Settings.funnel_label_horizon_s`, ...).
DEFAULT_HORIZON_MS = 7 * 86_400_000
DEFAULT_MAX_PENDING = 10_000


class LiveMonitors:
    """Quality and drift states of the partitions a consumer owns, and the online calibrators
    of the probability it serves (one per domain and partition, `calibrate`)."""

    def __init__(
        self,
        settings: Settings | None = None,
        days: int = DEFAULT_DAYS,
        block: int = DEFAULT_BLOCK,
        blocks: int = DEFAULT_BLOCKS,
        threshold: float = DEFAULT_THRESHOLD,
        ignore: Sequence[str] = DEFAULT_IGNORE,
        calibration: OnlineParams | None = None,
        quality: bool = True,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.settings = settings
        if settings is not None:
            days, block, blocks = (settings.quality_days, settings.drift_block_vectors,
                                   settings.drift_blocks)  # fmt: skip
            threshold, ignore = settings.drift_psi_threshold, settings.drift_ignore_features
            quality = settings.live_quality
            horizon_ms = round(settings.funnel_label_horizon_s * 1000)
            max_pending = settings.funnel_max_pending
        #: The funnel join's horizon (event time) and cap of waiting scores per partition.
        self.horizon_ms, self.max_pending = horizon_ms, max_pending
        self.days, self.block, self.blocks = days, block, blocks
        self.threshold, self.ignore = threshold, tuple(ignore)
        #: Whether quality and drift are kept (ENGAGE_LIVE_QUALITY); calibration is apart.
        self.quality_on = quality
        #: The online rule served (None: the offline calibration as it is, no state). With
        #: settings, set per model by `set_model` (OnlineParams.for_model).
        self.calibration = calibration
        self.version = ""
        self.reference: DriftReference | None = None
        self.quality: dict[int, LiveQuality] = {}
        self.drift: dict[int, DriftMonitor] = {}
        self.joins: dict[int, FunnelJoin] = {}
        self.calibrators: dict[int, dict[str, OnlineCalibrator]] = {}
        #: Each partition's stored calibrator bytes per domain (restored when first used).
        self._stored_calibrators: dict[int, dict[str, bytes]] = {}
        self._committed: dict[int, _Stored] = {}
        #: Each partition's bytes after the latest batch observed (committed or not).
        self._latest: dict[int, _Stored] = {}
        #: Calibrator bytes of the batch being scored, until its `observe`.
        self._staged: dict[int, bytes] = {}
        #: Batches observed whose transactions have not committed yet, oldest first (with
        #: the commit overlapping the next batch, two can be in flight).
        self._pending: list[dict[int, _Stored]] = []
        #: Damaged states met by a lenient `load` (and started afresh), for the log.
        self.problems: list[str] = []

    def set_model(self, version: str, metrics: Mapping[str, Any] | None) -> None:
        """The model now served (its bundle's version and metrics, where `engage train`
        stores the drift reference; none for older models: no drift then). A new version
        starts the drift windows and the calibrators afresh; the quality state starts each
        domain afresh at its first row of the new version."""
        if self.settings is not None:
            params = OnlineParams.for_model(self.settings, metrics or {})
            self.calibration = None if params.rule == "none" else params
        if version == self.version and self.reference is not None:
            return
        new_version, self.version = version != self.version, version
        self.reference = reference_of(metrics) if self.quality_on else None
        for p in list(self._committed):
            if self.reference is None:
                self.drift.pop(p, None)
            else:
                self.drift[p] = DriftMonitor(self.reference, version, self.block, self.blocks)
            if self.quality_on and new_version:  # its waiting scores are the old model's
                self.joins[p] = FunnelJoin(self.horizon_ms, self.max_pending, version)
            latest = self._latest[p][2]  # restored when used: afresh unless of this version
            self._stored_calibrators[p] = domains_from_bytes(latest) if latest else {}
            self.calibrators[p] = {}

    def keys(self, topic: str, partition: int) -> tuple[str, str, str, str]:
        """The keys `load` takes the values of: quality, drift, calibration, funnel join."""
        return quality_key(topic, partition), drift_key(topic, partition), \
            calibration_key(topic, partition), funnel_key(topic, partition)  # fmt: skip

    def load(
        self, partition: int, quality: bytes | None, drift: bytes | None,
        calibration: bytes | None = None, funnel: bytes | None = None, lenient: bool = False,
    ) -> None:  # fmt: skip
        """Start `partition` from its stored states (None: nothing stored). On assignment, and
        whenever the batch's offsets are re-read from Redis. BadState (damaged bytes) is
        raised, never reset silently; `lenient`: the damaged state starts afresh, named in
        `problems` (the consumer logs it and goes on)."""
        p = partition
        if self.quality_on:
            self.quality[p] = self._restore(
                "quality", p, lambda: LiveQuality.restore(quality, WINDOWS, self.days),
                lambda: LiveQuality(WINDOWS, self.days), lenient,
            )  # fmt: skip
            self.joins[p] = self._restore(
                "funnel join", p,
                lambda: FunnelJoin.restore(funnel, self.horizon_ms, self.max_pending,
                                           self.version),
                lambda: FunnelJoin(self.horizon_ms, self.max_pending, self.version), lenient,
            )  # fmt: skip
        if self.reference is not None:
            reference = self.reference
            self.drift[p] = self._restore(
                "drift", p,
                lambda: DriftMonitor.restore(drift, reference, self.version, self.block,
                                             self.blocks),
                lambda: DriftMonitor(reference, self.version, self.block, self.blocks), lenient,
            )  # fmt: skip
        else:
            self.drift.pop(p, None)
        self._stored_calibrators[p] = self._restore(
            "calibration", p, lambda: domains_from_bytes(calibration) if calibration else {},
            dict, lenient,
        )  # fmt: skip
        self.calibrators[p] = {}
        self._committed[p] = self._latest[p] = (quality, drift, calibration, funnel)
        for batch in self._pending:
            batch.pop(p, None)
        self._staged.pop(p, None)

    def _restore(self, what: str, p: int, restore: Any, fresh: Any, lenient: bool) -> Any:
        try:
            return restore()
        except (BadQualityState, BadDriftState, BadCalibrationState, BadJoinState) as exc:
            if not lenient:
                raise
            self.problems.append(f"{what} state of partition {p} damaged, started afresh: {exc}")
            return fresh()

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (revoked)."""
        for p in partitions:
            for held in (self.quality, self.drift, self.joins, self.calibrators,
                         self._stored_calibrators, self._committed, self._latest,
                         self._staged):  # fmt: skip
                held.pop(p, None)
            for batch in self._pending:
                batch.pop(p, None)

    def calibrate(
        self, partition: np.ndarray, prob: np.ndarray, label: np.ndarray, domain: Sequence[str]
    ) -> np.ndarray:
        """The served probability of each row the model scored (`prob`: its offline-calibrated
        probability, in batch order; label: 1.0 / 0.0 / NaN; domain: scoring.rules.domain_of),
        recalibrated online by the partition's calibrator of the row's domain, each row from
        the state before it (scoring.online_calibration). Call once per batch, before its
        `observe`, which writes the calibrators' new bytes. Without a rule, `prob` itself."""
        params = self.calibration
        if params is None or not len(prob):
            return prob
        part = np.asarray(partition)
        label = np.asarray(label, dtype=np.float64)
        served = np.empty(len(prob))
        one_domain = len(set(domain)) == 1  # the usual batch: no domain read a row
        for p in sorted_distinct(part).tolist():  # each partition's calibrators on their own
            in_p = np.flatnonzero(part == p)
            doms = [domain[0]] if one_domain else [domain[i] for i in in_p.tolist()]
            held = self.calibrators[p]
            present = dict.fromkeys(doms)
            for d in present:
                rows = in_p if len(present) == 1 else in_p[[x == d for x in doms]]
                calibrator = held.get(d)
                if calibrator is None:
                    stored = self._stored_calibrators[p].get(d)
                    calibrator = held[d] = OnlineCalibrator.restore(stored, self.version, params)
                served[rows] = calibrator.process(prob[rows], label[rows])
            self._staged[p] = domains_to_bytes(self._merged_calibrators(p))
        return served

    def _merged_calibrators(self, p: int) -> dict[str, OnlineCalibrator]:
        """The partition's calibrators in use, and any stored one not restored yet (of
        another domain: kept as stored, so a batch without its rows does not drop it)."""
        assert self.calibration is not None
        held = self.calibrators[p]
        for d, stored in self._stored_calibrators[p].items():
            if d not in held:
                held[d] = OnlineCalibrator.restore(stored, self.version, self.calibration)
        return held

    def observe(
        self,
        topic: str,
        partition: np.ndarray,
        prob: np.ndarray,
        label: np.ndarray,
        rule_score: np.ndarray | None,
        event_ts_ms: np.ndarray,
        domain: Sequence[str],
        before: np.ndarray,
        funnel: FunnelRows | None = None,
    ) -> dict[str, bytes]:
        """Feed one batch (its admitted rows in batch order; each partition's rows in that
        partition's order) and return the keys and bytes to write in the batch's transaction
        (also the calibrators' of `calibrate`). Call once for every batch whose transaction
        will `commit` or `rollback` (with no rows for a batch the model did not score).

        prob: the served probability (NaN for rows the model did not score); label: 1.0 / 0.0
        / NaN; rule_score: the user's rule score before the event; before: the before-event
        interaction matrix; funnel: the batch's funnel rows with their served propensity, for
        the join (None: none). A partition whose states did not change writes nothing.
        KeyError for a partition not `load`ed."""
        writes: dict[str, bytes] = {}
        pending: dict[int, _Stored] = {}
        staged, self._staged = self._staged, {}
        for p, calibrators in staged.items():
            q_latest, d_latest, c_latest, f_latest = self._latest[p]
            if calibrators != c_latest:
                writes[calibration_key(topic, p)] = calibrators
                pending[p] = self._latest[p] = (q_latest, d_latest, calibrators, f_latest)
        if self.quality_on and len(prob):
            part = np.asarray(partition)
            prob = np.asarray(prob, dtype=np.float64)
            scored = ~np.isnan(prob)
            label = np.asarray(label)
            for p in dict.fromkeys(part[scored].tolist()):
                rows = np.flatnonzero((part == p) & scored)
                quality = self.quality[p]
                drift = self.drift.get(p)
                quality.observe(prob[rows], label[rows], np.asarray(rule_score)[rows],
                                np.asarray(event_ts_ms)[rows], [domain[i] for i in rows.tolist()],
                                self.version)  # fmt: skip
                q_bytes = writes[quality_key(topic, p)] = quality.to_bytes()
                _q, d_bytes, c_bytes, f_bytes = self._latest[p]
                if drift is not None:
                    drift.observe(np.asarray(before)[rows], label[rows])
                    d_bytes = writes[drift_key(topic, p)] = drift.to_bytes()
                pending[p] = self._latest[p] = (q_bytes, d_bytes, c_bytes, f_bytes)
        if self.quality_on and funnel is not None and len(funnel.users):
            self._join(topic, funnel, writes, pending)
        self._pending.append(pending)
        return writes

    def _join(
        self, topic: str, rows: FunnelRows, writes: dict[str, bytes],
        pending: dict[int, _Stored],
    ) -> None:  # fmt: skip
        """The funnel rows through each partition's join; the scores it resolves enter the
        partition's quality state (track `TRACK`), and both states' bytes are written."""
        part = np.asarray(rows.partition)
        for p in dict.fromkeys(part.tolist()):
            at = np.flatnonzero(part == p)
            join = self.joins[p]
            resolved = join.observe([rows.users[i] for i in at.tolist()], rows.ts[at],
                                    rows.prob[at], rows.rule[at], rows.converted[at])  # fmt: skip
            q_bytes, d_bytes, c_bytes, _f = self._latest[p]
            if len(resolved):
                self.quality[p].observe(resolved.prob, resolved.label, resolved.rule,
                                        resolved.ts, TRACK, self.version)  # fmt: skip
                q_bytes = writes[quality_key(topic, p)] = self.quality[p].to_bytes()
            f_bytes = writes[funnel_key(topic, p)] = join.to_bytes()
            pending[p] = self._latest[p] = (q_bytes, d_bytes, c_bytes, f_bytes)

    def commit(self) -> None:
        """The oldest observed batch's transaction committed: its states are stored now."""
        if self._pending:
            self._committed.update(self._pending.pop(0))

    def rollback(self) -> None:
        """A transaction did not commit: every batch not committed is undone (a later one was
        folded on top of it), back to the stored states, to be read again."""
        touched = {p for batch in self._pending for p in batch} | set(self._staged)
        self._pending.clear()
        self._staged.clear()
        for p in touched:
            if p in self._committed:
                self.load(p, *self._committed[p])

    def summary(self, top: int = 5) -> dict[str, Any]:
        """The figures of the partitions held (`engage quality` merges every partition's):
        {"quality": per domain, "drift": merged_drift's or None without a reference,
        "funnel": the funnel join's counters (scoring.funnel_join.COUNTS) summed, None with
        live quality off}."""
        drift = None
        if self.drift:
            drift = merged_drift(self.drift.values(), self.threshold, top, ignore=self.ignore)
        return {"quality": merged_summary(self.quality.values())["domains"], "drift": drift,
                "funnel": merged_counts(self.joins.values()) if self.joins else None}  # fmt: skip


#: Gauge name -> help, for `samples` (prometheus_client: one Gauge each, labelled as below).
GAUGES = {
    "engage_model_roc_auc": "ROC-AUC of the served probability (domain, window)",
    "engage_model_log_loss": "Log loss of the served probability (domain, window)",
    "engage_model_ece": "Expected calibration error, 10 bins (domain, window)",
    "engage_model_positive_rate": "Observed positive rate (domain, window)",
    "engage_model_mean_prediction": "Mean served probability (domain, window)",
    "engage_rule_roc_auc": "ROC-AUC of the rule score before the event (domain, window)",
    "engage_model_labelled_events": "Labelled events in the window (domain, window)",
    "engage_feature_psi": "PSI of a model feature against its training data (feature)",
    "engage_label_psi": "PSI of the label against the training positive rate",
    "engage_model_drifting": "1 when a feature or the label is over the drift threshold",
    "engage_funnel_scores": "Funnel propensity scores: waiting for a label, positive, expired,"
    " skipped, dropped (state)",
}


def samples(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """(gauge, labels, value) of every figure of a `LiveMonitors.summary()` (or of the
    `engage quality` report's "quality" / one "drift" entry): windows labelled
    {"domain", "window"}, features {"feature"}. Figures that are undefined are left out."""
    out: list[tuple[str, dict[str, str], float]] = []
    figures = {"engage_model_roc_auc": "roc_auc", "engage_model_log_loss": "log_loss",
               "engage_model_ece": "ece", "engage_model_positive_rate": "positive_rate",
               "engage_model_mean_prediction": "mean_p", "engage_rule_roc_auc": "rule_roc_auc",
               "engage_model_labelled_events": "n"}  # fmt: skip
    for domain, q in (summary.get("quality") or {}).items():
        for window, f in q["windows"].items():
            labels = {"domain": domain, "window": window}
            for gauge, key in figures.items():
                if f.get(key) is not None:
                    out.append((gauge, labels, float(f[key])))
    drift = summary.get("drift")
    if drift and drift.get("features") is not None:
        for feature, value in drift["features"].items():
            out.append(("engage_feature_psi", {"feature": feature}, float(value)))
        if drift["label"].get("psi") is not None:
            out.append(("engage_label_psi", {}, float(drift["label"]["psi"])))
        out.append(("engage_model_drifting", {}, 1.0 if drift["status"] == "drifting" else 0.0))
    for state, count in (summary.get("funnel") or {}).items():
        out.append(("engage_funnel_scores", {"state": state}, float(count)))
    return out
