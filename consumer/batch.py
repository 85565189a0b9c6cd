"""Turn one polled batch into state changes and scores, with no I/O.

The batch is admitted and folded into the state in one compiled call (features.stream: the
point-in-time features before each event and the user's features after it), then scored at
once: rules on the users' states after each event, the model (if one is registered) in one
vectorised call per target, its reasons only for each user's latest event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from features.digest import vector_digests
from features.events import Event
from features.fold import FoldOutput
from features.state_codec import STATE_FIELD, packed_user
from features.stream import StreamState
from features.vector import PROPENSITY_FEATURES
from scoring import score_record
from scoring.live_monitor import LiveMonitors
from scoring.model import NO_MODEL_FOR_DOMAIN
from scoring.online_calibration import event_labels
from scoring.rules import RuleScorer, domain_of

from .state_store import BatchWrites, Loaded, advance


@dataclass(slots=True)
class Incoming:
    """A decoded event and where it came from (the raw record, in case it is refused)."""

    event: Event
    partition: int
    offset: int
    kafka_ts_ms: int
    key: bytes | None = None
    value: bytes = b""


@dataclass
class ScoredBatch:
    messages: list[tuple[bytes, bytes]]  # (key, value) for the scores topic
    writes: BatchWrites
    latencies_ms: list[float]
    refused: list[tuple[Incoming, str]]  # duplicates and late events, with the reason


_NO_ROWS = (np.empty(0, np.int64), np.empty(0), np.empty(0), None, np.empty(0, np.int64), [],
            np.empty((0, 0)))  # fmt: skip


class _LiveRows:
    """A batch's rows as the live states take them: partitions, labels, domains, and the
    served probability of the rows the model scored (NaN elsewhere) once `serve` ran."""

    def __init__(self, incoming: list[Incoming]) -> None:
        self.incoming = incoming
        self.partitions = np.fromiter((i.partition for i in incoming), np.int64, len(incoming))
        self.labels = event_labels(item.event for item in incoming)
        self.domains: list[str] = []
        self.served: np.ndarray | None = None
        self.model_rows: np.ndarray | None = None

    def serve(
        self, monitors: LiveMonitors, rows: list[int] | None, p_model: np.ndarray,
        domains: dict[str, str],
    ) -> np.ndarray:  # fmt: skip
        """The online-calibrated probability of the model's rows (`rows`; None: all)."""
        self.domains = [domains[item.event.source] for item in self.incoming]
        at = np.arange(len(self.incoming)) if rows is None else np.asarray(rows, np.int64)
        self.model_rows = at
        doms = self.domains if rows is None else [self.domains[r] for r in rows]
        served = monitors.calibrate(self.partitions[at], p_model, self.labels[at], doms)
        self.served = np.full(len(self.incoming), np.nan)
        self.served[at] = served
        return served

    def model_rows_by_domain(self) -> dict[str, np.ndarray]:
        assert self.model_rows is not None
        rows = self.model_rows
        doms = [self.domains[r] for r in rows.tolist()]
        present = dict.fromkeys(doms)
        if len(present) == 1:
            return {next(iter(present)): rows}
        return {d: rows[[x == d for x in doms]] for d in present}

    def event_ts(self) -> np.ndarray:
        return np.fromiter((i.event.ts for i in self.incoming), np.int64, len(self.incoming))


class BatchScorer:
    """Applies and scores batches; holds the rule scorers and the current model bundle."""

    def __init__(self, rule_scorers: dict[str, RuleScorer], log_features: bool) -> None:
        self.rule_scorers = rule_scorers
        self.log_features = log_features
        self.model: Any = None  # scoring.model.ModelBundle once one is registered
        #: The live quality, drift and online calibration states of the partitions held
        #: (scoring.live_monitor; the runner loads, commits and rolls them back), or None.
        self.live: LiveMonitors | None = None
        self.topic = ""  # the events topic: the live states' keys name it

    def run(self, state: StreamState, incoming: list[Incoming], loaded: Loaded) -> ScoredBatch:
        """Admit and fold the batch over `state` (filled by the store with what the batch
        touches; `loaded`: what it read, to write back only what changed), then score it."""
        folded = state.apply([item.event for item in incoming])
        refused = [(incoming[i], reason) for i, reason in folded.refused]
        # Copies: the next batch may fold (and admit into these dicts) while this one commits.
        writes = BatchWrites(user_recent_ids={u: dict(state.recent[u]) for u in loaded.users})
        if not folded.admitted:
            if self.live is not None:  # one observe per batch: its commit or rollback follows
                writes.live = self.live.observe(self.topic, *_NO_ROWS)
            return ScoredBatch([], writes, [], refused)
        incoming = [incoming[i] for i in folded.admitted]
        out = folded.out
        after, before = out.after, out.before
        latest_rows = self._latest_rows(incoming)
        shown = set(latest_rows.values())
        rules, rule_texts = self._rules(incoming, after, shown)
        live = _LiveRows(incoming) if self.live is not None else None
        model = self._model(before, after, latest_rows, incoming, live)
        if live is not None:
            writes.live = self._observe(live, before)
        self._writes(writes, state, out, incoming, loaded)
        now_ms = round(time.time() * 1000.0, 1)
        payloads = score_record.message_dicts(
            incoming, rules, model, vector_digests(before), now_ms
        )
        if self.log_features:
            for payload, vector in zip(payloads, before.tolist(), strict=True):
                payload["features"] = vector
        messages = score_record.encode_messages(payloads)
        latest = []  # the live view and the score hash show the reasons in words
        for row in latest_rows.values():
            shown = score_record.shown_message(payloads[row], rule_texts[row])
            latest.append(shown)
            self._score_hash(writes, shown)
        writes.publish = orjson.dumps(latest)
        latencies = [now_ms - item.kafka_ts_ms for item in incoming]
        return ScoredBatch(messages, writes, latencies, refused)

    @staticmethod
    def _latest_rows(incoming: list[Incoming]) -> dict[str, int]:
        """Each user's last row in the batch: what the score hash, the leaderboard and the live
        view show, so the only rows whose model reasons are worth computing."""
        return {item.event.user_id: row for row, item in enumerate(incoming)}

    @staticmethod
    def _score_hash(writes: BatchWrites, shown: dict[str, Any]) -> None:
        """The user's served score (`u:{user}:score`) and leaderboard entries from the
        latest (shown) score message of the batch."""
        user = shown["user_id"]
        fields = writes.scores[user] = score_record.hash_fields(shown)
        writes.leaderboard.setdefault("rule", {})[user] = fields["rule_score"]
        if fields["propensity"] != "":
            writes.leaderboard.setdefault("model", {})[user] = fields["propensity"]

    def _rules(
        self, incoming: list[Incoming], after: np.ndarray, shown: set[int]
    ) -> tuple[list[tuple[float, str, list]], dict[int, list]]:
        """Every row's rule score, label and top signals with their points; the reasons in
        words only for the `shown` rows (each user's latest: the score hash and live view)."""
        out: list[tuple[float, str, list] | None] = [None] * len(incoming)
        texts: dict[int, list] = {}
        by_domain: dict[str, list[int]] = {}
        for row, item in enumerate(incoming):
            by_domain.setdefault(domain_of(item.event.source), []).append(row)
        for domain, rows in by_domain.items():
            scorer = self.rule_scorers[domain]
            block = after[rows]
            scored = scorer.score(block)
            signals = scored.top_signals()
            for i, (row, score) in enumerate(zip(rows, scored.score.tolist(), strict=True)):
                out[row] = (score, scored.labels[i], signals[i])
            picked = [i for i, row in enumerate(rows) if row in shown]
            if picked:
                values = scorer.signal_values(block[picked])
                for i, reasons in zip(picked, scored.reasons(values, rows=picked), strict=True):
                    texts[rows[i]] = reasons
        return out, texts  # type: ignore[return-value]

    def _observe(self, live: _LiveRows, before: np.ndarray) -> dict[str, bytes]:
        """Feed the batch's model rows to the live quality and drift states (the served
        probability, the rule score before each event) and give the bytes to write."""
        monitors = self.live
        assert monitors is not None
        prob = live.served
        if prob is None or not monitors.quality_on:  # no model row: only the calibrators
            return monitors.observe(self.topic, *_NO_ROWS)
        n_prop = len(PROPENSITY_FEATURES)
        rule_before = np.full(len(prob), np.nan)
        for domain, rows in live.model_rows_by_domain().items():
            rule_before[rows] = self.rule_scorers[domain].score(before[rows, :n_prop]).score
        return monitors.observe(self.topic, live.partitions, prob, live.labels, rule_before,
                                live.event_ts(), live.domains, before)  # fmt: skip

    def _model(
        self, before: np.ndarray, after: np.ndarray, latest_rows: dict[str, int],
        incoming: list[Incoming], live: _LiveRows | None = None,
    ) -> list[dict[str, Any]] | None:  # fmt: skip
        """Probabilities of every row in one vectorised call per target; per-feature reasons
        (path contributions, the costly part) only for each user's latest row.

        The model scores only events of the domains it was trained on (`ModelBundle.covers`);
        a row of another domain gets `{"skipped": "no model for this domain", "domain": ...}`
        (no version, no probability: read as scored without a model). Each user's latest row
        names its domain, for the score hash (request-time scoring checks it)."""
        bundle = self.model
        if bundle is None:
            return None
        domains = {source: domain_of(source) for source in {i.event.source for i in incoming}}
        rows: list[int] | None = None  # the rows the model scores (None: all of them)
        if not all(bundle.covers(domain) for domain in domains.values()):
            rows = [r for r, i in enumerate(incoming) if bundle.covers(domains[i.event.source])]
            before, after = before[rows], after[rows]
        n_prop = len(PROPENSITY_FEATURES)
        parts: list[dict[str, Any]] = []
        if rows != []:
            p_model = bundle.interaction.predict_proba(before)
            p_int = p_model.tolist()
            p_prop = bundle.propensity.predict_proba(after[:, :n_prop]).tolist()
            p_online = None  # the served probability, recalibrated online (live states only)
            if live is not None and self.live is not None:
                p_online = live.serve(self.live, rows, p_model, domains).tolist()
            parts = score_record.model_parts(bundle.version, p_int, p_prop, p_online)
        if rows is None:
            out = parts
        else:
            out = [
                score_record.skipped_part(NO_MODEL_FOR_DOMAIN, domains[item.event.source])
                for item in incoming
            ]
            for row, part in zip(rows, parts, strict=True):
                out[row] = part
        latest = sorted(latest_rows.values())
        for row in latest:
            score_record.name_domain(out[row], domains[incoming[row].event.source])
        shown = latest if rows is None else [row for row in latest if "propensity" in out[row]]
        if not shown:
            return out
        if rows is None:
            at = shown
        else:
            position = {row: i for i, row in enumerate(rows)}  # batch row -> scored row
            at = [position[row] for row in shown]
        prop_x = after[at, :n_prop]
        r_prop = bundle.propensity.reason_dicts(bundle.propensity.contributions(prop_x))
        r_int = bundle.interaction.reason_dicts(bundle.interaction.contributions(before[at]))
        for row, reasons_i, reasons_p in zip(shown, r_int, r_prop, strict=True):
            score_record.add_reasons(out[row], reasons_i, reasons_p)
        return out

    def _writes(
        self, writes: BatchWrites, state: StreamState, out: FoldOutput,
        incoming: list[Incoming], loaded: Loaded,
    ) -> None:  # fmt: skip
        tables = state.tables
        for user, before in loaded.users.items():
            fields = packed_user(tables, user)
            if fields[STATE_FIELD] != before:
                writes.user_states[user] = fields
        for row in np.flatnonzero(out.new_item).tolist():  # rows in order: only those that
            event = incoming[row].event  # first touched an item or closed a session
            if event.item_id is not None:
                writes.user_new_items.setdefault(event.user_id, set()).add(event.item_id)
        for row in np.flatnonzero(out.closed).tolist():
            event = incoming[row].event
            sid, fields = out.closed_session(row)  # type: ignore[misc]
            writes.closed_sessions[(event.user_id, sid)] = fields
            writes.sessions.pop((event.user_id, sid), None)
        writes.item_shards = loaded.items.updated(
            out.item_ids, out.item_loc,
            np.array([item.partition for item in incoming], dtype=np.int64),
            np.array([item.offset for item in incoming], dtype=np.int64),
            out.item_delta, out.item_delta_set,
        )  # fmt: skip
        writes.sessions.update(out.sessions_dict())
        advance(writes.offsets, [(item.partition, item.offset) for item in incoming])
