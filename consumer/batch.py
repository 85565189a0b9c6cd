"""Turn one polled batch into state changes and scores, with no I/O.

The batch is admitted and folded into the state in one compiled call (features.stream: the
point-in-time features before each event and the user's features after it), then scored at
once: rules on the users' states after each event, the model (if one is registered) in one
vectorised call per target, its reasons only for each user's latest event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from engage.transport.packed import PackedRecords
from features.digest import digest_block
from features.fold import FoldOutput
from features.state_codec import packed_columns
from features.stream import StreamState
from features.vector import PROPENSITY_FEATURES
from scoring import score_record
from scoring.exact_round import round_column
from scoring.funnel_join import FunnelRows
from scoring.live_monitor import LiveMonitors
from scoring.message_writer import write_packed
from scoring.model import NO_MODEL_FOR_DOMAIN
from scoring.online_calibration import labels_of, labels_of_codes
from scoring.rules import LABEL_NAMES, RuleScorer, RuleScores, domain_of

from .incoming import Incoming, IncomingBatch
from .model_job import ModelJob, ModelOutputs, ModelWorker, Ran
from .state_store import BatchWrites, Loaded, advance_columns

Messages = Sequence[tuple[bytes, bytes]]  # (key, value) for the scores topic


@dataclass
class ScoredBatch:
    #: The messages, or what gives them once (the compiled writer's, finishing on the worker).
    made: Messages | Callable[[], Messages]
    writes: BatchWrites
    latencies_ms: list[float]
    refused: list[tuple[Incoming, str]]  # duplicates and late events, with the reason

    @property
    def messages(self) -> Messages:
        """The score messages (waits for the writer the first time, if it is still writing)."""
        if callable(self.made):
            self.made = self.made()
        return self.made


_NO_OUTPUTS = ModelOutputs(np.empty(0), np.empty(0), [], [])
_NO_ROWS = (np.empty(0, np.int64), np.empty(0), np.empty(0), None, np.empty(0, np.int64), [],
            np.empty((0, 0)))  # fmt: skip


class _LiveRows:
    """A batch's rows as the live states take them: partitions, labels, domains, and the
    served probability of the rows the model scored (NaN elsewhere) once `serve` ran."""

    def __init__(self, incoming: IncomingBatch) -> None:
        self.incoming = incoming
        self.partitions = np.array(incoming.partitions, dtype=np.int64)
        self.domains: list[str] = []
        self.served: np.ndarray | None = None
        self.model_rows: np.ndarray | None = None
        #: Every row's served propensity (NaN where the model did not score), once `serve` ran.
        self.propensity: np.ndarray | None = None

    def serve(
        self, monitors: LiveMonitors, rows: list[int] | None, p_model: np.ndarray,
        domains: dict[str, str], p_propensity: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """The online-calibrated probability of the model's rows (`rows`; None: all), whose
        interaction and propensity probabilities are `p_model` and `p_propensity`."""
        sources = self.incoming.events.sources
        if len(set(domains.values())) == 1:  # the usual batch: one domain, no lookup a row
            self.domains = [next(iter(domains.values()))] * len(sources)
        else:
            self.domains = [domains[source] for source in sources]
        at = np.arange(len(self.incoming)) if rows is None else np.asarray(rows, np.int64)
        self.model_rows = at
        doms = self.domains if rows is None else [self.domains[r] for r in rows]
        served = monitors.calibrate(self.partitions[at], p_model, self.labels[at], doms)
        self.served = np.full(len(self.incoming), np.nan)
        self.served[at] = served
        self.propensity = np.full(len(self.incoming), np.nan)
        self.propensity[at] = p_propensity
        return served

    @cached_property
    def labels(self) -> np.ndarray:
        """Each row's engagement label: made only for a batch the model scored (a rules-only
        batch's live states take none), from the reader's arrays when the batch has them."""
        events = self.incoming.events
        if events.codes is not None:
            return labels_of_codes(events.codes.type_index, events.codes.values)
        return labels_of(events.event_types, events.values)

    def model_rows_by_domain(self) -> dict[str, np.ndarray]:
        assert self.model_rows is not None
        rows = self.model_rows
        doms = [self.domains[r] for r in rows.tolist()]
        present = dict.fromkeys(doms)
        if len(present) == 1:
            return {next(iter(present)): rows}
        return {d: rows[[x == d for x in doms]] for d in present}

    def event_ts(self) -> np.ndarray:
        return np.array(self.incoming.events.ts, dtype=np.int64)

    def funnel(self, rows: np.ndarray, prob: np.ndarray, rule: np.ndarray) -> FunnelRows:
        """The funnel join's view of the model's funnel `rows` (their served propensity and
        rule score): a conversion is an engaged funnel event, the event's own label."""
        users = self.incoming.events.user_ids
        return FunnelRows(self.partitions[rows], [users[r] for r in rows.tolist()],
                          self.event_ts()[rows], prob, rule,
                          self.labels[rows] == 1.0)  # fmt: skip


def rule_rows(scored: RuleScores, rows: list[int] | None) -> list[tuple[float, str, list]]:
    """The rule score, label and top signals (with their points) of the rows `rows` of
    `scored` (None: all), as the score messages carry them."""
    if rows is not None:
        scored = RuleScores(scored.score[rows], scored.contributions[rows],
                            [scored.labels[r] for r in rows], scored.config)  # fmt: skip
    return list(zip(scored.score.tolist(), scored.labels, scored.top_signals(), strict=True))


def worded_rule_rows(
    scored: RuleScores, rows: list[int], texts: dict[int, list]
) -> list[tuple[float, str, list]]:
    """`rule_rows` of `rows` with each one's reasons in words (`texts`, by row) in place of
    its signals: the rule part of the users' latest messages as shown, made directly, not
    made with the signals and copied (`shown_message`: ~0.7 us a shown user)."""
    labels = scored.labels
    return list(zip(scored.score[rows].tolist(), [labels[r] for r in rows],
                    map(texts.__getitem__, rows), strict=True))  # fmt: skip


#: A batch's model job, its outputs and its probabilities as on the wire
#: (score_record.model_columns; None if it scored no row), once served (`BatchScorer._model`).
Served = tuple[ModelJob, ModelOutputs, score_record.ModelColumns | None]


class BatchScorer:
    """Applies and scores batches; holds the rule scorers and the current model bundle."""

    def __init__(
        self, rule_scorers: dict[str, RuleScorer], log_features: bool,
        model_worker: ModelWorker | None = None,
    ) -> None:  # fmt: skip
        self.rule_scorers = rule_scorers
        self.log_features = log_features
        #: Where the model's work runs (consumer.model_job; default: inline, no thread).
        self.model_worker = model_worker or ModelWorker(0)
        self.model: Any = None  # scoring.model.ModelBundle once one is registered
        #: The live quality, drift and online calibration states of the partitions held
        #: (scoring.live_monitor; the runner loads, commits and rolls them back), or None.
        self.live: LiveMonitors | None = None
        self.topic = ""  # the events topic: the live states' keys name it
        #: The last batch's model outputs, once served (`_model`).
        self._served: Served | None = None

    def run(self, state: StreamState, incoming: Sequence[Incoming], loaded: Loaded) -> ScoredBatch:
        """Admit and fold the batch over `state` (filled by the store with what the batch
        touches; `loaded`: what it read, to write back only what changed), then score it.
        `incoming`: best an `IncomingBatch` (columns), which the steps below read."""
        incoming = IncomingBatch.of(incoming)
        folded = state.apply(incoming.events)
        refused = [(incoming[i], reason) for i, reason in folded.refused]
        # (Packed bytes: the next batch, folding while this one commits, replaces them.)
        writes = BatchWrites(user_recent_ids={u: state.recent[u] for u in loaded.users},
                             legacy_seen=loaded.legacy_seen)  # fmt: skip
        if not folded.admitted:
            if self.live is not None:  # one observe per batch: its commit or rollback follows
                writes.live = self.live.observe(self.topic, *_NO_ROWS)
            return ScoredBatch([], writes, [], refused)
        if refused:
            incoming = incoming.take(folded.admitted)
        out = folded.out
        after, before = out.after, out.before
        latest_rows = self._latest_rows(incoming)
        shown = set(latest_rows.values())
        job = self._model_start(before, after, latest_rows, incoming)  # runs beside the rules
        rules, rule_texts, block = self._rules(incoming, after, shown)
        live = _LiveRows(incoming) if self.live is not None else None
        rows = list(latest_rows.values())
        # The compiled writer can take the batch (one domain, no feature vectors, the model
        # scored every row or none): rule rows and model parts are then made for the shown
        # rows only. It lets go of the GIL, so a large batch's runs on the worker (the
        # vectors' digests too) while this thread builds the state writes (with no model),
        # the live states and the shown rows, and the caller fences the batch: the messages
        # are taken from the worker only when read (`ScoredBatch.messages`).
        writable = block is not None and not self.log_features
        writable = writable and (job is None or job.rows is None or job.rows == [])
        if not writable:
            self._writes(writes, state, out, incoming, loaded)
            model = self._model(job, latest_rows, incoming, live)
            if live is not None:
                writes.live = self._observe(live, before, after)
            now_ms = round(time.time() * 1000.0, 1)
            messages, shown_payloads = self._dict_messages(
                incoming, rules, block, model, before, rows, now_ms
            )
            self._show(writes, rows, shown_payloads, rule_texts)
            return ScoredBatch(messages, writes, self._latencies(incoming, now_ms), refused)
        assert block is not None
        writing = None
        if job is None:
            now_ms = round(time.time() * 1000.0, 1)
            writing = self._write_beside(incoming, block, before, now_ms, None, len(rows))
        self._writes(writes, state, out, incoming, loaded)
        model = self._model(job, latest_rows, incoming, live, rows)
        served = self._served
        if writing is None:
            now_ms = round(time.time() * 1000.0, 1)
            writing = self._write_beside(incoming, block, before, now_ms, served, len(rows))
        if live is not None:
            writes.live = self._observe(live, before, after)
        shown_model = served is not None and served[2] is not None  # its reasons: dicts
        shown_payloads = score_record.message_dicts(
            incoming.take(rows),
            rule_rows(block, rows) if shown_model else worded_rule_rows(block, rows, rule_texts),
            model, digest_block(before[rows]), now_ms,
        )  # fmt: skip
        if shown_model:
            self._show(writes, rows, shown_payloads, rule_texts)
        else:  # (they are already the shown messages: no score message takes them)
            self._show_latest(writes, shown_payloads)

        def messages() -> Messages:
            packed = writing.result()
            if packed is None:  # a value the writer declines: a dict per row after all
                parts = None if served is None else self._parts(latest_rows, incoming, None, served)
                return self._dict_messages(incoming, None, block, parts, before, rows, now_ms)[0]
            if not shown_model:  # (the shown rows' messages encode to these bytes)
                return packed
            # The model scored the rows: the shown ones carry its reasons, so their dicts
            # replace what was written.
            shown_messages = score_record.encode_messages(shown_payloads)
            return packed.replaced(
                {row: value for row, (_, value) in zip(rows, shown_messages, strict=True)}
            )

        return ScoredBatch(messages, writes, self._latencies(incoming, now_ms), refused)

    @staticmethod
    def _latencies(incoming: IncomingBatch, now_ms: float) -> list[float]:
        return [now_ms - ts for ts in incoming.kafka_ts_ms]

    def _dict_messages(
        self, incoming: IncomingBatch, rules: list[tuple[float, str, list]] | None,
        block: RuleScores | None, model: list[dict[str, Any]] | None, before: np.ndarray,
        rows: list[int], now_ms: float,
    ) -> tuple[Messages, list[dict[str, Any]]]:  # fmt: skip
        """Every row's score message as a dict, encoded (see scoring/message_writer.py for
        when), and the shown `rows`' dicts."""
        if rules is None:
            assert block is not None
            rules = rule_rows(block, None)
        payloads = score_record.message_dicts(incoming, rules, model, digest_block(before), now_ms)
        if self.log_features:
            for payload, vector in zip(payloads, before.tolist(), strict=True):
                payload["features"] = vector
        return score_record.encode_messages(payloads), [payloads[row] for row in rows]

    def _write_beside(
        self, incoming: IncomingBatch, block: RuleScores, before: np.ndarray, now_ms: float,
        served: Served | None, shown: int,
    ) -> Future[PackedRecords | None] | Ran[PackedRecords | None]:  # fmt: skip
        """`_written` on the worker for a large batch (inline for a small one, or one with
        many `shown` rows: `ModelWorker.beside`)."""
        return self.model_worker.beside(len(incoming), shown, self._written, incoming, block,
                                        before, now_ms, served)  # fmt: skip

    def _written(
        self, incoming: IncomingBatch, block: RuleScores, before: np.ndarray, now_ms: float,
        served: Served | None,
    ) -> PackedRecords | None:  # fmt: skip
        """The batch's score messages from the compiled writer (the vectors `before` each
        event digested), or None if a value is one it cannot write exactly
        (scoring/message_writer.py). `served`: the batch's model outputs, None with none."""
        digests = digest_block(before)
        columns, skipped = None, None
        if served is not None and served[2] is not None:
            columns = served[2]
        elif served is not None:  # the model scored no row: the batch's one domain
            (domain,) = set(served[0].domains.values())
            skipped = orjson.dumps(score_record.skipped_part(NO_MODEL_FOR_DOMAIN, domain))
        events = incoming.events
        order, points = block.top()
        ts = events.ts if events.codes is None else events.codes.ts  # (arrays: not copied)
        partitions, offsets = incoming.partition_offset_arrays()
        packed = write_packed(
            events.user_ids, events.event_ids, events.item_ids, ts, partitions, offsets,
            round_column(block.score, score_record.RULE_DECIMALS),
            block.labels, np.where(np.isnan(points), -1, order), np.nan_to_num(points),
            block.signal_names, digests, now_ms, columns, skipped,
            None if block.levels is None else (LABEL_NAMES, block.levels),
        )  # fmt: skip
        if packed is None:
            return None
        if events.codes is None:
            return PackedRecords([user.encode() for user in events.user_ids], *packed)
        users = [user.encode() for user in events.codes.users]  # each once (its hash too)
        return PackedRecords.coded(users, events.codes.user_codes, *packed)

    @staticmethod
    def _latest_rows(incoming: IncomingBatch) -> dict[str, int]:
        """Each user's last row in the batch: what the score hash, the leaderboard and the live
        view show, so the only rows whose model reasons are worth computing."""
        users = incoming.events.user_ids  # (a later row overwrites: the last one stays)
        return dict(zip(users, range(len(users)), strict=True))

    def _show(
        self, writes: BatchWrites, rows: list[int], payloads: list[dict[str, Any]],
        rule_texts: dict[int, list],
    ) -> None:  # fmt: skip
        """Each user's latest message as the live view and the score hash show it (the
        reasons in words): the served score hashes, the leaderboard and the live message."""
        latest = list(map(score_record.shown_message, payloads, map(rule_texts.__getitem__, rows)))
        self._show_latest(writes, latest)

    def _show_latest(self, writes: BatchWrites, latest: list[dict[str, Any]]) -> None:
        """`_show` of the users' latest messages already as shown (`shown_message`)."""
        hashes = writes.scores = score_record.ScoreHashes.of(latest)
        if hashes:
            board = writes.leaderboard
            board.setdefault("rule", {}).update(
                zip(hashes.users, hashes.column("rule_score"), strict=True)
            )
            propensity = hashes.column("propensity")
            if propensity.count("") < len(propensity):  # (a model served someone)
                board.setdefault("model", {}).update(
                    (user, p) for user, p in zip(hashes.users, propensity, strict=True) if p != ""
                )
        writes.publish = orjson.dumps(latest)

    def _rules(
        self, incoming: IncomingBatch, after: np.ndarray, shown: set[int]
    ) -> tuple[list[tuple[float, str, list]] | None, dict[int, list], RuleScores | None]:
        """The rules' scores: of the whole batch when it is of one domain (then the rows
        are made where needed, `rule_rows`), else every row's score, label and top signals
        with their points; the reasons in words only for the `shown` rows (each user's
        latest: the score hash and live view)."""
        sources = incoming.events.sources
        domain = {source: domain_of(source) for source in set(sources)}
        texts: dict[int, list] = {}
        if len(set(domain.values())) == 1:  # the usual batch: one domain, no regrouping
            rows = range(len(incoming))
            (only,) = set(domain.values())
            scored = self._rules_block(only, after, rows, shown, texts)
            return None, texts, scored
        out: list[tuple[float, str, list] | None] = [None] * len(incoming)
        by_domain: dict[str, list[int]] = {}
        for row, source in enumerate(sources):
            by_domain.setdefault(domain[source], []).append(row)
        for name, grouped in by_domain.items():
            scored = self._rules_block(name, after[grouped], grouped, shown, texts)
            for row, rule_row in zip(grouped, rule_rows(scored, None), strict=True):
                out[row] = rule_row
        return out, texts, None  # type: ignore[return-value]

    def _rules_block(
        self, domain: str, block: np.ndarray, rows: Sequence[int], shown: set[int],
        texts: dict[int, list],
    ) -> RuleScores:  # fmt: skip
        """One domain's rows (`block`, at batch rows `rows`): their scores; the reasons in
        words of those `shown` go to `texts`."""
        scorer = self.rule_scorers[domain]
        scored = scorer.score(block)
        if isinstance(rows, range) and rows.start == 0 and rows.step == 1:  # the whole batch
            picked = sorted(row for row in shown if row < rows.stop)  # (not a step a row)
        else:
            picked = [i for i, row in enumerate(rows) if row in shown]
        if picked:
            values = scorer.signal_values(block[picked])
            for i, reasons in zip(picked, scored.reasons(values, rows=picked), strict=True):
                texts[rows[i]] = reasons
        return scored

    def _observe(self, live: _LiveRows, before: np.ndarray, after: np.ndarray) -> dict[str, bytes]:
        """Feed the batch's model rows to the live quality and drift states (the served
        probability, the rule score before each event; the funnel rows' propensity and rule
        score after it, as served, to the funnel join) and give the bytes to write."""
        monitors = self.live
        assert monitors is not None
        prob = live.served
        if prob is None or not monitors.quality_on:  # no model row: only the calibrators
            return monitors.observe(self.topic, *_NO_ROWS)
        n_prop = len(PROPENSITY_FEATURES)
        rule_before = np.full(len(prob), np.nan)
        funnel = None
        for domain, rows in live.model_rows_by_domain().items():
            rule_before[rows] = self.rule_scorers[domain].score(before[rows, :n_prop]).score
            if domain == "funnel":  # the served propensity and rule score, for the join
                assert live.propensity is not None
                rule_after = self.rule_scorers[domain].score(after[rows, :n_prop]).score
                funnel = live.funnel(rows, live.propensity[rows], rule_after)
        return monitors.observe(self.topic, live.partitions, prob, live.labels, rule_before,
                                live.event_ts(), live.domains, before, funnel)  # fmt: skip

    def _model_start(
        self, before: np.ndarray, after: np.ndarray, latest_rows: dict[str, int],
        incoming: IncomingBatch,
    ) -> ModelJob | None:  # fmt: skip
        """Start the model's work on the batch (consumer.model_job: on the worker thread for
        large batches, so it runs while the rules are scored): probabilities of every row in
        one vectorised call per target, per-feature reasons (path contributions, the costly
        part) only for each user's latest row.

        The model scores only events of the domains it was trained on (`ModelBundle.covers`);
        the other rows are marked in `_model`."""
        bundle = self.model
        if bundle is None:
            return None
        sources = incoming.events.sources
        domains = {source: domain_of(source) for source in set(sources)}
        rows: list[int] | None = None  # the rows the model scores (None: all of them)
        latest = sorted(latest_rows.values())
        covered = {source for source, domain in domains.items() if bundle.covers(domain)}
        if len(covered) == len(domains):
            shown, at = latest, latest
        else:  # (a set lookup a row, none when no source is covered: the synthetic funnel)
            rows = [r for r, s in enumerate(sources) if s in covered] if covered else []
            before, after = before[rows], after[rows]
            position = {row: i for i, row in enumerate(rows)}  # batch row -> scored row
            shown = [row for row in latest if row in position]
            at = [position[row] for row in shown]
        if rows == []:
            return ModelJob(bundle, domains, rows, [], _NO_OUTPUTS)
        outputs = self.model_worker.start(bundle, before, after, at)
        return ModelJob(bundle, domains, rows, shown, outputs)

    def _model(
        self, job: ModelJob | None, latest_rows: dict[str, int], incoming: IncomingBatch,
        live: _LiveRows | None = None, only: list[int] | None = None,
    ) -> list[dict[str, Any]] | None:  # fmt: skip
        """Every row's model part from the job's outputs (or those of the rows `only`, in
        that order: the rest are written by the compiled writer): version and probabilities
        (with the online-calibrated one when the live states are held); a row of a domain the
        model was not trained on gets `{"skipped": "no model for this domain", "domain": ...}`
        (no version, no probability: read as scored without a model). Each user's latest row
        names its domain, for the score hash (request-time scoring checks it), and carries
        the reasons. Waits for the job and serves it once (the online calibration learns);
        `_parts` builds more rows' parts from what it kept."""
        self._served = None
        if job is None:
            return None
        result = job.result()
        columns = None
        if job.rows != []:
            p_online = None  # the served probability, recalibrated online (live states only)
            if live is not None and self.live is not None:
                p_online = live.serve(self.live, job.rows, result.interaction, job.domains,
                                      result.propensity)  # fmt: skip
            columns = score_record.model_columns(
                job.bundle.version, result.interaction, result.propensity, p_online
            )
        self._served = (job, result, columns)
        return self._parts(latest_rows, incoming, only, self._served)

    def _parts(
        self, latest_rows: dict[str, int], incoming: IncomingBatch, only: list[int] | None,
        served: Served,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The model parts of a batch `served` (`_model`): every row's, or `only`'s."""
        job, result, columns = served
        domains, rows = job.domains, job.rows
        if only is not None:  # (the compiled writer's batches: the model scored all or none)
            at = {row: k for k, row in enumerate(only)}
            if rows == []:
                sources = incoming.events.sources
                out = [score_record.skipped_part(NO_MODEL_FOR_DOMAIN, domains[sources[r]])
                       for r in only]  # fmt: skip
            else:
                assert rows is None and columns is not None
                version, p_int, p_prop, p_online = columns
                picked = (version, p_int[only], p_prop[only],
                          None if p_online is None else p_online[only])  # fmt: skip
                out = score_record.parts_of(picked)
        else:
            parts = [] if columns is None else score_record.parts_of(columns)
            at = range(len(incoming))  # type: ignore[assignment]
            if rows is None:
                out = parts
            else:
                out = [
                    score_record.skipped_part(NO_MODEL_FOR_DOMAIN, domains[source])
                    for source in incoming.events.sources
                ]
                for row, part in zip(rows, parts, strict=True):
                    out[row] = part
        for row in latest_rows.values():
            if row in at:
                score_record.name_domain(out[at[row]], domains[incoming.events.sources[row]])
        reasons = zip(job.shown, result.interaction_reasons, result.propensity_reasons, strict=True)
        for row, reasons_i, reasons_p in reasons:
            if row in at:
                score_record.add_reasons(out[at[row]], reasons_i, reasons_p)
        return out

    def _writes(
        self, writes: BatchWrites, state: StreamState, out: FoldOutput,
        incoming: IncomingBatch, loaded: Loaded,
    ) -> None:  # fmt: skip
        tables = state.tables
        writes.user_states = packed_columns(tables, list(loaded.users)).changed(loaded.users)
        writes.user_new_items = out.new_items_by_user()
        # Only closed sessions get a key of their own: the open one is in the user's packed state
        # (`cs_*`), which this batch writes anyway (writing it twice was ~0.2 HSETs of 8
        # fields an event on the synthetic funnel, 8% of the consumer's CPU).
        writes.closed_sessions = out.closed_block()
        partitions = np.array(incoming.partitions, dtype=np.int64)
        offsets = np.array(incoming.offsets, dtype=np.int64)
        writes.item_shards = loaded.items.updated(
            out.item_ids, out.item_loc, partitions, offsets, out.item_delta, out.item_delta_set
        )
        advance_columns(writes.offsets, partitions, offsets)
