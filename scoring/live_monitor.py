"""What the consumer holds for issue 18's live quality and drift: one `LiveQuality` and one
`DriftMonitor` per partition it owns, fed once per batch, their bytes written in the batch's
transaction (scoring.quality_keys), committed or rolled back with it.

    monitors = LiveMonitors(settings)
    monitors.set_model(bundle.version, bundle.metrics)          # and on every model swap
    monitors.load(p, client.get(quality_key(topic, p)),         # each partition assigned
                  client.get(drift_key(topic, p)))
    writes = monitors.observe(topic, partition, prob, label, rule_before, ts, domain, before)
    # ... SET every key -> bytes of `writes` in the batch's transaction, then:
    monitors.commit()       # the transaction committed
    monitors.rollback()     # it did not (or its outcome is unknown and the batch is re-read)

Rows the model did not score (another domain: prob NaN) count for neither; rows without a
label (NaN) count for drift only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

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
from scoring.quality import DEFAULT_DAYS, WINDOWS, LiveQuality, merged_summary
from scoring.quality_keys import drift_key, quality_key

if TYPE_CHECKING:
    from engage.settings import Settings


class LiveMonitors:
    """Quality and drift states of the partitions a consumer owns."""

    def __init__(
        self,
        settings: Settings | None = None,
        days: int = DEFAULT_DAYS,
        block: int = DEFAULT_BLOCK,
        blocks: int = DEFAULT_BLOCKS,
        threshold: float = DEFAULT_THRESHOLD,
        ignore: Sequence[str] = DEFAULT_IGNORE,
    ) -> None:
        if settings is not None:
            days, block, blocks = (settings.quality_days, settings.drift_block_vectors,
                                   settings.drift_blocks)  # fmt: skip
            threshold, ignore = settings.drift_psi_threshold, settings.drift_ignore_features
        self.days, self.block, self.blocks = days, block, blocks
        self.threshold, self.ignore = threshold, tuple(ignore)
        self.version = ""
        self.reference: DriftReference | None = None
        self.quality: dict[int, LiveQuality] = {}
        self.drift: dict[int, DriftMonitor] = {}
        self._committed: dict[int, tuple[bytes | None, bytes | None]] = {}
        #: Batches observed whose transactions have not committed yet, oldest first (with
        #: the commit overlapping the next batch, two can be in flight).
        self._pending: list[dict[int, tuple[bytes, bytes | None]]] = []

    def set_model(self, version: str, metrics: Mapping[str, Any] | None) -> None:
        """The model now served (its bundle's version and metrics, where `engage train`
        stores the drift reference; none for older models: no drift then). A new version
        starts the drift windows afresh; the quality state starts each domain afresh at its
        first row of the new version."""
        if version == self.version and self.reference is not None:
            return
        self.version = version
        self.reference = reference_of(metrics)
        for p in list(self.quality):
            if self.reference is None:
                self.drift.pop(p, None)
            else:
                self.drift[p] = DriftMonitor(self.reference, version, self.block, self.blocks)

    def load(self, partition: int, quality: bytes | None, drift: bytes | None) -> None:
        """Start `partition` from its stored states (None: nothing stored). On assignment, and
        whenever the batch's offsets are re-read from Redis. BadState (damaged bytes) is
        raised, never reset silently."""
        self.quality[partition] = LiveQuality.restore(quality, WINDOWS, self.days)
        if self.reference is not None:
            self.drift[partition] = DriftMonitor.restore(drift, self.reference, self.version,
                                                         self.block, self.blocks)  # fmt: skip
        else:
            self.drift.pop(partition, None)
        self._committed[partition] = (quality, drift)
        for batch in self._pending:
            batch.pop(partition, None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions (revoked)."""
        for p in partitions:
            self.quality.pop(p, None)
            self.drift.pop(p, None)
            self._committed.pop(p, None)
            for batch in self._pending:
                batch.pop(p, None)

    def observe(
        self,
        topic: str,
        partition: np.ndarray,
        prob: np.ndarray,
        label: np.ndarray,
        rule_score: np.ndarray,
        event_ts_ms: np.ndarray,
        domain: Sequence[str],
        before: np.ndarray,
    ) -> dict[str, bytes]:
        """Feed one batch (its admitted rows in batch order; each partition's rows in that
        partition's order) and return the keys and bytes to write in the batch's transaction.

        prob: the served probability (NaN for rows the model did not score); label: 1.0 / 0.0
        / NaN; rule_score: the user's rule score before the event; before: the before-event
        interaction matrix. A partition with no scored row in the batch writes nothing.
        KeyError for a partition not `load`ed."""
        part = np.asarray(partition)
        prob = np.asarray(prob, dtype=np.float64)
        domains = np.asarray(domain, dtype=object)
        scored = ~np.isnan(prob)
        writes: dict[str, bytes] = {}
        pending: dict[int, tuple[bytes, bytes | None]] = {}
        for p in dict.fromkeys(part.tolist()):
            rows = np.flatnonzero((part == p) & scored)
            quality = self.quality[p]
            drift = self.drift.get(p)
            if not len(rows):
                continue  # nothing changes: nothing to write
            quality.observe(prob[rows], np.asarray(label)[rows], np.asarray(rule_score)[rows],
                            np.asarray(event_ts_ms)[rows], domains[rows], self.version)  # fmt: skip
            q_bytes = quality.to_bytes()
            writes[quality_key(topic, p)] = q_bytes
            d_bytes = None
            if drift is not None:
                drift.observe(np.asarray(before)[rows], np.asarray(label)[rows])
                d_bytes = writes[drift_key(topic, p)] = drift.to_bytes()
            pending[p] = (q_bytes, d_bytes)
        self._pending.append(pending)
        return writes

    def commit(self) -> None:
        """The oldest observed batch's transaction committed: its states are stored now."""
        if self._pending:
            self._committed.update(self._pending.pop(0))

    def rollback(self) -> None:
        """A transaction did not commit: every batch not committed is undone (a later one was
        folded on top of it), back to the stored states, to be read again."""
        touched = {p for batch in self._pending for p in batch}
        self._pending.clear()
        for p in touched:
            quality, drift = self._committed[p]
            self.load(p, quality, drift)

    def summary(self, top: int = 5) -> dict[str, Any]:
        """The figures of the partitions held (`engage quality` merges every partition's):
        {"quality": per domain, "drift": merged_drift's or None without a reference}."""
        drift = None
        if self.drift:
            drift = merged_drift(self.drift.values(), self.threshold, top, ignore=self.ignore)
        return {"quality": merged_summary(self.quality.values())["domains"], "drift": drift}


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
    return out
