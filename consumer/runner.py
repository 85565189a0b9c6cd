"""The consumer loop: poll a batch, load its state, apply and score it, emit, commit atomically.

Offsets live in Redis, not Kafka: on assignment every partition seeks to its stored offset + 1
("storing offsets outside Kafka"). Per batch: scores and dead letters are produced and flushed
*before* the Redis transaction (so they are at-least-once), then state + offsets commit in one
MULTI/EXEC (so state is exactly-once). A crash anywhere replays at most the uncommitted batch.
A Redis outage does not end the loop: it waits, then resumes from the offsets stored in Redis
(see `StreamConsumer._wait_for_redis`).

Kafka is reached through engage/transport (kafka-python by default, librdkafka with
`ENGAGE_KAFKA_CLIENT=confluent`): partitions are numbers of the events topic.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from consumer import resp_frames, session_values
from consumer.batch import BatchScorer
from consumer.cluster_store import ClusterStateStore
from consumer.deadletter import DeadLetter
from consumer.incoming import Polled, read_incoming
from consumer.local_state import LocalState
from consumer.metrics import ConsumerMetrics, export_live_quality
from consumer.model_job import ModelWorker
from consumer.ordering import EventTimeMerger
from consumer.state_store import (
    NO_OFFSET,
    BatchWrites,
    Fenced,
    StateStore,
    StoreBatch,
    advance_columns,
)
from consumer.store import REDIS_DOWN, RedisBatch, RedisStateStore, waitable
from consumer.store import warm_up as warm_up_reads
from engage import kafka_clients, partitioning, redis_client, transport
from engage.settings import Settings
from engage.transport import record_batches
from features.events import DecodeError, Event
from features.stream import warm_up
from scoring import message_writer
from scoring.live_monitor import LiveMonitors
from scoring.registry import ModelRegistry
from scoring.rules import load_scorers

log = logging.getLogger("engage.consumer")

#: How long an overlapped commit holds its EXEC for the next batch's Redis read (`_land`):
#: long enough for a poll, a decode and the read (a few ms), short enough that an idle
#: consumer's last batch lands promptly all the same.
COMMIT_HOLD_S = 0.02
#: How long a starting consumer waits for the scores topic's metadata (else the first send
#: does, in the first batch).
OUTPUT_METADATA_WAIT_S = 2.0
#: How often a consumer kept from reading by its group says so (`_note_joining`).
JOIN_REPORT_S = 30.0


@dataclass
class RunSummary:
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    fenced: int = 0
    seconds: float = 0.0
    model_version: str | None = None
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)  # only with keep_latencies
    first_batch_at: float | None = None  # monotonic clock, for rates that exclude idle time
    last_batch_at: float | None = None

    @property
    def busy_rate(self) -> float:
        """Events per second between the first and the last batch (no start-up, no idling)."""
        if self.first_batch_at is None or self.last_batch_at is None:
            return 0.0
        span = self.last_batch_at - self.first_batch_at
        return (self.processed + self.dead_lettered) / span if span > 0 else 0.0

    @property
    def rate(self) -> float:
        return (self.processed + self.dead_lettered) / self.seconds if self.seconds else 0.0


@dataclass
class _Done:
    """What a batch changes in the positions and the counts once it has landed."""

    offsets: dict[int, int]
    applied: int
    dead: int
    latencies_ms: list[float]
    t0: float  # perf_counter at the batch's start
    started: float  # monotonic
    landed: float | None = None  # monotonic, once committed (on the committing thread)


@dataclass
class _InFlight:
    """A batch whose transaction runs on the committing thread. `read_done`: set once the next
    batch's Redis read came back, or when the consumer waits for this one (`_land`)."""

    future: Future[None]
    batch: RedisBatch
    done: _Done
    read_done: threading.Event


class RedisUnavailable(redis.ConnectionError):
    """Redis stayed unreachable longer than `redis_retry_give_up_s`."""


class OutputFailed(Exception):
    """A score or dead letter of the batch was not acknowledged: the batch must not commit."""


class OutputRefused(OutputFailed):
    """Kafka refused an output for good (too large, not authorised, an invalid topic):
    sending it again cannot succeed, so the consumer stops, the batch not committed."""

    def __init__(self, topic: str | None, why: str, cause: BaseException) -> None:
        super().__init__(f"Kafka refused output to topic {topic or '(unknown)'}: {why} ({cause})")
        self.topic, self.why, self.cause = topic, why, cause


class _Highwaters:
    """consumer/metrics.py asks `highwater(TopicPartition)`; the transport takes partitions."""

    def __init__(self, kafka: transport.Consumer) -> None:
        self.kafka = kafka

    def highwater(self, tp: object) -> int | None:
        return self.kafka.highwater(tp.partition)  # type: ignore[attr-defined]


class StreamConsumer:
    """One member of a consumer group over the events topic."""

    def __init__(
        self, settings: Settings, group: str | None = None, keep_latencies: bool = False
    ) -> None:
        self.settings = settings
        self.keep_latencies = keep_latencies
        self.topic = settings.events_topic
        # One immediate retry covers a stale pooled connection; longer outages are the loop's
        # (it knows to resync offsets afterwards), so redis-py must not sleep in a retry itself.
        self.redis = redis_client.connect(
            settings,
            socket_timeout=settings.redis_socket_timeout_s,
            # Short: an assignment callback may connect, and it runs where heartbeats do.
            socket_connect_timeout=min(settings.redis_socket_timeout_s, 2.0),
            retry=Retry(NoBackoff(), 1),
        )
        local = LocalState(settings.local_state_users, settings.local_state_items)
        self.store: StateStore
        kind = ClusterStateStore if isinstance(self.redis, RedisCluster) else RedisStateStore
        # (a Cluster: issue 17's per-key guards, no MULTI/EXEC)
        self.store = kind(self.redis, self.topic, settings.session_ttl_s, local,
                          settings.item_meta_refresh_s)  # fmt: skip
        self.ownership_changed = True  # re-ask whether we hold every partition
        self.scorer = BatchScorer(
            load_scorers(settings.rules_file), settings.log_features,
            ModelWorker(settings.model_overlap_min_rows, settings.writer_overlap_max_shown_share),
        )  # fmt: skip
        # Live quality, drift and the online calibration's states (issue 18): one MULTI/EXEC
        # carries them with the batch. The Cluster store does not carry them yet: there the
        # probability is served with its offline calibration and no live quality is kept.
        self.live: LiveMonitors | None = None
        if isinstance(self.store, RedisStateStore):
            self.live = self.scorer.live = LiveMonitors(settings)
            self.scorer.topic = self.topic
        else:
            log.info("Redis Cluster: no online calibration or live quality (docs/quality.md)")
        self._live_export = _LiveExport(settings)
        self.metrics = ConsumerMetrics()
        self.positions: dict[int, int] = {}  # partition -> last applied offset, as in Redis
        self.resync_needed = False  # positions unknown (Redis outage): seek from Redis first
        self.recheck_at = 0.0  # monotonic time of the next `_recheck_offsets`
        self._joining_since: float | None = None  # kept from reading by the group since
        self._join_reported_at = 0.0
        self.stopping = False
        self.merger: EventTimeMerger | None = None
        if settings.consume_order == "event_time":
            self.merger = EventTimeMerger(max_buffered=5 * settings.batch_max_records)
        self.kafka = transport.consumer(settings, group or settings.consumer_group)
        self.out = transport.producer(
            settings, linger_ms=5, batch_bytes=settings.output_batch_bytes
        )
        kafka_clients.ensure_topic(settings, self.topic)
        kafka_clients.ensure_topic(settings, settings.scores_topic)
        kafka_clients.ensure_topic(settings, settings.dead_letter_topic)
        self.kafka.subscribe(self.topic, on_assign=self._assigned, on_revoke=self._revoked)
        self._highwaters = _Highwaters(self.kafka)
        self._summary = RunSummary()  # the current run's (a commit may land after _handle)
        self._inflight: _InFlight | None = None  # the batch committing on the thread
        #: A permanent output refusal met where it could not be raised (`_settle`): `run`
        #: raises it.
        self._refused: OutputRefused | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engage-commit")
        self._model_watch = _ModelWatch(settings, self.scorer)

    # -- offsets -----------------------------------------------------------------------------
    def _revoked(self, partitions: list[int]) -> None:
        self._settle()  # the last batch lands (or not) before the partitions move
        self.store.forget()
        self.ownership_changed = True
        for p in partitions:
            self.positions.pop(p, None)
        if self.live is not None:
            self.live.drop(partitions)
        log.info("revoked partitions %s", sorted(partitions))

    def _assigned(self, partitions: list[int]) -> None:
        """The transport calls this inside poll(), before it returns any assigned record."""
        self.ownership_changed = True
        try:
            self.seek_to_stored(partitions)
        except REDIS_DOWN as exc:
            if not waitable(exc):
                raise
            # kafka-python runs this on its I/O loop: never wait here (it would block
            # heartbeats). Park the partitions; run() waits for Redis and seeks them.
            self.kafka.pause(*partitions)
            self.resync_needed = True
            log.warning("Redis unavailable at assignment of %s, partitions paused: %s",
                        sorted(partitions), exc)  # fmt: skip

    def seek_to_stored(self, partitions: Iterable[int]) -> None:
        partitions = list(partitions)
        self._settle()  # read the offsets after the last batch's EXEC, not during it
        self.store.forget()  # what we hold locally may be ahead of Redis, or behind it
        stored = self._stored_offsets(partitions)
        if self.merger is not None:  # buffered records lie after the old position
            self.merger.drop(partitions)
        for p in partitions:
            offset = stored[p]
            self.positions[p] = offset
            if offset == NO_OFFSET:
                self.kafka.seek_to_beginning(p)
            else:
                self.kafka.seek(p, offset + 1)
        log.info("assigned %s, resuming at %s", sorted(stored), stored)

    def _stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        """The partitions' stored offsets, and the live states stored with them (one read, so
        each state is the one of its offset), loaded: what the next batches start from."""
        live = self.live
        if live is None:
            return self.store.offsets(partitions)
        assert isinstance(self.store, RedisStateStore)
        names = [key for p in partitions for key in live.keys(self.topic, p)]
        stored, values = self.store.offsets_with(partitions, names)
        live.rollback()  # nothing uncommitted is left of them (the last batch settled)
        per = len(names) // len(partitions) if partitions else 0
        for i, p in enumerate(partitions):
            live.load(p, *values[per * i : per * i + per], lenient=True)
        for problem in live.problems:
            log.error("live quality: %s", problem)
        live.problems.clear()
        return stored

    def _abort(self, batch: StoreBatch) -> None:
        """Give a batch up: nothing of it lands, and the live states of every batch not
        committed are undone with it (a later batch was folded over it)."""
        batch.abort()
        if self.live is not None:
            self.live.rollback()

    def _resync(self) -> None:
        """Positions of every assigned partition from Redis, and seek there (stored + 1)."""
        assigned = self.kafka.assignment()
        self.redis.ping()  # also when nothing is assigned: proves Redis answers
        self.seek_to_stored(sorted(assigned))
        for p in set(self.positions) - assigned:
            del self.positions[p]
        if self.live is not None:
            self.live.drop(set(self.live._committed) - assigned)

    def _recheck_offsets(self) -> None:
        """Re-seek every assigned partition whose stored offset is not our position.

        A batch compares only its own partitions' offsets, so a partition that gets no new
        records (a caught-up consumer) would never notice that Redis lost its last writes (the
        AOF tail lost in a crash, a failover to a lagging replica): its stored offset went back
        together with the state, and the events after it would stay unapplied until a restart.
        Run every `offset_recheck_s`, busy or idle: one MGET. A Redis that does not answer
        means an outage: `_wait_for_redis` then re-seeks every partition from Redis.
        """
        self.recheck_at = time.monotonic() + self.settings.offset_recheck_s
        self._settle()
        # Only partitions we resumed: between a revocation and the assignment after it,
        # kafka-python still lists the old partitions (until the join completes), and
        # seeking them there would make a rejoin look like idling (`_joining`).
        assigned = sorted(p for p in self.kafka.assignment() if p in self.positions)
        if not assigned:
            return
        try:
            stored = self.store.offsets(assigned)
            ours = {p: self.positions.get(p, NO_OFFSET) for p in assigned}
            behind = {p: (ours[p], stored[p]) for p in assigned if stored[p] < ours[p]}
            ahead = {p: (ours[p], stored[p]) for p in assigned if stored[p] > ours[p]}
            if behind:
                log.warning("Redis lost writes: stored offsets went back (ours, stored) %s; "
                            "re-applying from there", behind)  # fmt: skip
            if ahead:  # another writer (a zombie, or a partition moved away): as when fenced
                log.warning("stored offsets moved past ours (ours, stored) %s; re-seeking", ahead)
            if behind or ahead:
                self.seek_to_stored(sorted({*behind, *ahead}))
        except REDIS_DOWN as exc:
            if not waitable(exc):
                raise
            log.warning("offset re-check failed (%s: %s); re-reading offsets from Redis",
                        type(exc).__name__, exc)  # fmt: skip
            self.resync_needed = True

    def _wait_for_redis(self) -> None:
        """Wait until Redis answers, then resync positions from it; back-off doubles up to a cap.

        Never re-apply blindly: a connection lost during EXEC leaves the outcome unknown, so
        every assigned partition is re-seeked to its *stored* offset + 1 and polled again. An
        applied batch is then skipped, an unapplied one redone (scores may repeat: they are
        at-least-once anyway).

        Group membership: the partitions stay paused and poll() keeps being called while
        waiting, so heartbeats go on and max_poll_interval_ms is never exceeded: a Redis outage
        costs no rebalance, however long. If the group rebalances anyway (a member joins, the
        broker restarts), the listener parks the newly assigned partitions and they are
        seeked here like the others.
        """
        s = self.settings
        host, port = s.redis_host_port
        delay = s.redis_retry_initial_s
        started = time.monotonic()
        next_log = started
        attempts = 0
        while not self.stopping:
            self.kafka.pause(*self.kafka.assignment())
            try:
                self._resync()
            except REDIS_DOWN as exc:
                if not waitable(exc):
                    raise
                attempts += 1
                down_s = time.monotonic() - started
                if s.redis_retry_give_up_s is not None and down_s >= s.redis_retry_give_up_s:
                    raise RedisUnavailable(
                        f"Redis at {host}:{port} unreachable for {down_s:.0f}s "
                        f"(redis_retry_give_up_s={s.redis_retry_give_up_s:g}): {exc}"
                    ) from exc
                if time.monotonic() >= next_log:
                    log.warning("Redis at %s:%s unreachable for %.1fs (attempt %d), next try in "
                                "%.1fs: %s", host, port, down_s, attempts, delay, exc)  # fmt: skip
                    next_log = time.monotonic() + s.redis_retry_log_every_s
                self._poll_paused(delay)
                delay = min(delay * 2, s.redis_retry_max_s)
                continue
            self.resync_needed = False
            self.kafka.resume(*self.kafka.paused())
            log.warning("resynced from Redis after %.1fs (%d failed attempts); resuming at "
                        "stored offsets %s", time.monotonic() - started, attempts,
                        self.positions)  # fmt: skip
            return

    def _poll_paused(self, seconds: float) -> None:
        """Keep the group membership alive for `seconds` without taking any records."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self.kafka.pause(*self.kafka.assignment())  # also partitions assigned meanwhile
            # Any records returned are dropped: _resync seeks every partition before use.
            self.kafka.poll(timeout_ms=max(1, int(min(left, 1.0) * 1000)))

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        idle_exit_s: float | None = None,
        max_events: int | None = None,
        on_batch: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Consume until stopped (SIGTERM/SIGINT), idle for `idle_exit_s`, or `max_events`."""
        summary = self._summary = RunSummary()
        self._install_signals()
        self._model_watch.maybe_reload(summary)  # load a registered model before the clock runs
        warm_up(self.settings.feature_params)  # and the compiled feature fold
        message_writer.warm_up()  # and the compiled score-message writer
        record_batches.warm_up()  # and the compiled Kafka record framing
        resp_frames.warm_up()  # and the compiled Redis command framing
        session_values.warm_up()  # and the closed sessions' JSON
        warm_up_reads()  # and the compiled read of a batch's users
        partitioning.positive_murmur2_many([b"warm"])  # and the compiled key hash
        self.out.prepare(self.settings.scores_topic, OUTPUT_METADATA_WAIT_S)  # and its metadata
        tune_gc(self.settings.gc_gen0_threshold)
        started = last_data = time.monotonic()
        try:
            while not self.stopping:
                if self._refused is not None:
                    raise self._refused
                if self.resync_needed:
                    self._wait_for_redis()
                    last_data = time.monotonic()  # waiting for Redis is not idling
                    continue
                if time.monotonic() >= self.recheck_at:
                    self._recheck_offsets()
                    if self.resync_needed:
                        continue
                polled = self.kafka.poll(
                    timeout_ms=self._poll_timeout_ms(),
                    max_records=self.settings.batch_max_records,
                )
                self._model_watch.maybe_reload(summary)
                if self.resync_needed:  # an assignment in this poll could not read Redis
                    continue  # records dropped: the resync seeks back to them
                records, decoded = self._ordered(polled)
                held = self.merger is not None and len(self.merger) > 0
                joining = self._joining()
                self._note_joining(joining)
                if held or joining:
                    last_data = time.monotonic()
                if records or self._inflight is not None:
                    if records:
                        last_data = time.monotonic()
                    try:
                        if records:
                            self._handle(records, decoded, summary)
                        else:  # idle: count the last batch now
                            self._collect(summary)
                        if max_events is not None and self._taken(summary) >= max_events:
                            self._collect(summary)  # the last batch lands before we stop
                    except (*REDIS_DOWN, OutputFailed) as exc:
                        if isinstance(exc, OutputRefused) or not waitable(exc):
                            raise
                        # The batch did not commit, or we cannot know: nothing after it may
                        # be applied until the positions are re-read from Redis.
                        log.warning("batch interrupted (%s: %s); re-reading offsets from Redis",
                                    type(exc).__name__, exc)  # fmt: skip
                        self.resync_needed = True
                        continue
                    if on_batch:  # (also when the idle loop counted the last batch)
                        on_batch(summary)
                elif idle_exit_s is not None and time.monotonic() - last_data >= idle_exit_s:
                    break
                if max_events is not None and self._taken(summary) >= max_events:
                    break  # (landed: a batch still in flight was collected above)
        finally:
            try:
                self._settle()
                summary.seconds = time.monotonic() - started
                self.close()
            finally:  # only once the group is left: a SIGTERM while leaving still lets it leave
                self._restore_signals()
        if self._refused is not None:  # the last batch's outputs were refused
            raise self._refused
        return summary

    def _joining(self) -> bool:
        """Waiting for the group: no partition resumed yet, or a rejoin under way (revoked,
        and kafka-python keeps listing the old partitions until the join completes, which
        can take seconds). Not idle: `idle_exit_s` counts only once every partition is read."""
        return not self.positions or not self.kafka.assignment() <= self.positions.keys()

    def _note_joining(self, joining: bool) -> None:
        """Say so, every JOIN_REPORT_S, while the group keeps this consumer from reading: a
        join that never completes would otherwise be a silent hang (the idle clock waits)."""
        now = time.monotonic()
        if not joining:
            self._joining_since = None
        elif self._joining_since is None:
            self._joining_since = self._join_reported_at = now
        elif now - self._join_reported_at >= JOIN_REPORT_S:
            self._join_reported_at = now
            log.warning("not reading for %.0fs: waiting for the group (assigned %s, resumed %s)",
                        now - self._joining_since, sorted(self.kafka.assignment()),
                        sorted(self.positions))  # fmt: skip

    def _poll_timeout_ms(self) -> int:
        """How long a poll may wait for records: while a batch commits on the thread, no
        longer than that commit holds for the next batch's read (COMMIT_HOLD_S), so a batch
        followed by none is collected, counted and shown promptly, not a whole idle poll
        (`poll_timeout_ms`) after it landed."""
        timeout = self.settings.poll_timeout_ms
        if self._inflight is not None:
            return min(timeout, round(COMMIT_HOLD_S * 1000))
        return timeout

    def _taken(self, summary: RunSummary) -> int:
        """Events applied or dead-lettered: landed, and in the batch still committing."""
        done = summary.processed + summary.dead_lettered
        if self._inflight is not None:
            done += self._inflight.done.applied + self._inflight.done.dead
        return done

    def _ordered(
        self, records: Sequence[transport.Record]
    ) -> tuple[Sequence[transport.Record], list[Event | DecodeError] | None]:
        """The records to apply now: all of them in arrival order (not decoded yet), or with
        `consume_order = "event_time"` the merged prefix the merger can release, decoded."""
        if self.merger is None:
            return records, None
        self.merger.add(records)
        assigned = self.kafka.assignment()
        released = self.merger.release(self.settings.batch_max_records, assigned, self._at_end)
        for p, offset in self.merger.trim().items():
            if p in assigned:
                self.kafka.seek(p, offset)
        return [r for r, _ in released], [e for _, e in released]

    def _at_end(self, partition: int) -> bool:
        """Fetched up to the high watermark of the last fetch (unknown counts as not)."""
        highwater = self.kafka.highwater(partition)
        if highwater is None:
            return False
        position = self.kafka.position(partition, timeout_ms=1000)
        return position is not None and position >= highwater

    def _handle(
        self, records: Sequence[transport.Record], decoded: list[Event | DecodeError] | None,
        summary: RunSummary,
    ) -> None:  # fmt: skip
        """Apply, score, emit and commit one batch, in labelled steps.

        With `commit_overlap` the batch's transaction is left running on a thread (`_InFlight`)
        and this returns; the next batch is decoded, loaded and folded meanwhile (over the
        local copy only: `RedisStateStore.may_overlap`), and waits for it (`_collect`) before
        it reads its own offsets, sends its outputs or commits. So the order that makes the
        guarantees is kept: a batch's outputs are acknowledged before its state commits, and
        a batch reads its offsets only after the previous one landed. If that one failed, the
        batch folded over it is dropped with the local copy, as an aborted batch is."""
        t0 = time.perf_counter()
        t_start = time.monotonic()
        polled = Polled.of(records, decoded)
        partitions = polled.partition_set()
        # Records at or below the stored offset were already applied (a re-delivery): skip.
        polled = polled.after(self.positions, NO_OFFSET)
        records = polled.records
        incoming, undecodable = read_incoming(records, polled.decoded, polled.columns)
        cap = self.settings.dead_letter_max_bytes  # a dead letter always fits a request
        dead = [DeadLetter(exc.reason, r.topic, r.partition, r.offset, r.key, r.value,
                           max_bytes=cap) for r, exc in undecodable]  # fmt: skip
        if self.ownership_changed:
            if not self._collect(summary):
                return
            self._check_ownership()
        overlap = self._inflight is not None and getattr(self.store, "may_overlap", bool)()
        if not overlap and not self._collect(summary):
            return
        batch = self.store.begin(partitions)
        try:
            if not overlap:
                self._fence(batch, partitions)
            state = self.store.state(self.settings.feature_params, self.settings.admission_policy)
            loaded = batch.load(state, *incoming.events.items_by_user())
            if self._inflight is not None:
                self._inflight.read_done.set()  # the previous batch's EXEC may go now
            scored = self.scorer.run(state, incoming, loaded)
            if overlap:  # the previous batch must have landed before ours reads its offsets
                if not self._collect(summary):
                    self._abort(batch)
                    return
                self._fence(batch, partitions)
            dead += [DeadLetter(reason, self.topic, i.partition, i.offset, i.key, i.value,
                                max_bytes=cap)
                     for i, reason in scored.refused]  # fmt: skip
            applied = len(incoming) - len(scored.refused)
            advance_columns(scored.writes.offsets, polled.partitions, polled.offsets)
            scored.writes.stats = {"processed": applied, "dead_lettered": len(dead)}
            sent = self._send(scored.messages, dead)
            done = _Done(scored.writes.offsets, applied, len(dead), scored.latencies_ms, t0,
                         t_start)  # fmt: skip
            if self.settings.commit_overlap and isinstance(batch, RedisBatch):
                batch.learn(scored.writes)  # forgotten with the local copy if it fails
                read_done = threading.Event()
                if len(records) < self.settings.batch_max_records // 2:
                    read_done.set()  # a small batch: its EXEC is short, the next send waits on it
                future = self._committer.submit(
                    self._land, batch, scored.writes, sent, read_done, done
                )
                self._inflight = _InFlight(future, batch, done, read_done)
                return
            self._acknowledged(sent)
            batch.commit(scored.writes)
        except (*REDIS_DOWN, OutputFailed):
            self._abort(batch)
            raise
        except Fenced as exc:
            self._abort(batch)
            self._fenced(summary, exc, partitions)
            return
        self._record(summary, done)

    def _fence(self, batch: StoreBatch, partitions: set[int]) -> None:
        """The batch's partitions must be stored where we left them (else someone else wrote
        them: a zombie, or a partition moved away and back); from here on their offsets are
        watched."""
        stored = batch.offsets()
        if any(stored[p] != self.positions.get(p, NO_OFFSET) for p in partitions):
            raise Fenced(f"stored offsets {stored} moved past ours {self.positions}")

    def _send(self, messages: Sequence[tuple[bytes, bytes]], dead: list[DeadLetter]) -> int:
        """Send the batch's scores and dead letters; how many (`_acknowledged` waits)."""
        self.out.send_batch(self.settings.scores_topic, messages)
        for d in dead:
            self.out.send(self.settings.dead_letter_topic, d.value, d.key, d.headers())
        return len(messages) + len(dead)

    def _acknowledged(self, sent: int) -> None:
        """Wait until every output sent is acknowledged (acks=all); a permanent refusal stops
        the consumer, anything else is retried (the batch does not commit either way)."""
        failed = self.out.flush()
        if failed:  # e.g. the broker stayed down past kafka_delivery_timeout_ms
            for failure in failed:  # a permanent refusal stops the consumer
                if (why := transport.refusal(failure)) is not None:
                    topic = getattr(failure, "topic", None)
                    raise OutputRefused(topic, why, getattr(failure, "cause", failure))
            raise OutputFailed(f"{len(failed)} of {sent} outputs: {failed[0]}")

    def _land(
        self, batch: RedisBatch, writes: BatchWrites, sent: int, read_done: threading.Event,
        done: _Done,
    ) -> None:  # fmt: skip
        """On the committing thread: the batch's outputs acknowledged, then its state and
        offsets committed. The wait for the broker's acks overlaps the next batch's poll and
        fold too; the next batch sends nothing before this returned (`_collect`).

        A full batch's transaction is built, then held until the next batch's Redis read came
        back (at most COMMIT_HOLD_S): Redis runs one command at a time, and a read queued
        behind this EXEC (~2 ms of Redis a full batch) kept the consumer thread waiting ~2.3 us
        an event. That read touches no key this batch writes (`RedisStateStore.may_overlap`),
        so the order of the two changes nothing but who waits. A batch under half the poll
        size is not held (`_handle`): the next batch's send waits for this EXEC, and at low
        rates that wait is the event-to-score latency (measured: p99 at 5,000 events/s
        29 -> 45 ms when every batch was held)."""
        self._acknowledged(sent)
        batch.commit(writes, False, before_exec=lambda: read_done.wait(COMMIT_HOLD_S))
        done.landed = time.monotonic()

    def _fenced(self, summary: RunSummary, exc: Fenced, partitions: Iterable[int]) -> None:
        summary.fenced += 1
        log.warning("batch fenced, re-seeking: %s", exc)
        self.seek_to_stored(partitions)

    def _take_inflight(self) -> _InFlight | None:
        """The batch committing on the thread, if any, taken to be waited for: its EXEC need
        not hold for a next read any more."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.read_done.set()
        return inflight

    def _collect(self, summary: RunSummary) -> bool:
        """Wait for the batch committing on the thread, if any, and count it. False if it was
        fenced (every assigned partition is then re-seeked: the batch after it is dropped
        too); a Redis failure is raised, as from the batch itself."""
        inflight = self._take_inflight()
        if inflight is None:
            return True
        try:
            inflight.future.result()
        except Fenced as exc:
            self._abort(inflight.batch)
            self._fenced(summary, exc, self.kafka.assignment())
            return False
        except BaseException:
            self._abort(inflight.batch)
            raise
        self._record(summary, inflight.done)
        return True

    def _settle(self) -> None:
        """`_collect` where nothing can be raised (rebalance callbacks, re-seeks, closing): a
        failed commit only means the positions are read again from Redis."""
        inflight = self._take_inflight()
        if inflight is None:
            return
        try:
            inflight.future.result()
        except (Fenced, *REDIS_DOWN, OutputFailed) as exc:
            self._abort(inflight.batch)
            self.resync_needed = True
            if isinstance(exc, Fenced):  # counted whoever collects it (a re-check may)
                self._summary.fenced += 1
            if isinstance(exc, OutputRefused):  # stops the consumer where raising can
                self._refused = exc
            log.warning("the last batch did not commit (%s: %s); re-reading offsets from "
                        "Redis", type(exc).__name__, exc)  # fmt: skip
            return
        self._record(self._summary, inflight.done)

    def _record(self, summary: RunSummary, done: _Done) -> None:
        """A batch landed: our positions move, and it counts."""
        self.positions.update(done.offsets)
        if self.live is not None:
            self.live.commit()
            self._live_export.maybe(self.live)
        now = time.monotonic()
        if summary.first_batch_at is None:
            summary.first_batch_at = done.started
        summary.last_batch_at = done.landed or now  # (a batch collected later landed then)
        if self.keep_latencies:
            summary.latencies_ms.extend(done.latencies_ms)
        summary.processed += done.applied
        summary.dead_lettered += done.dead
        summary.batches += 1
        self.metrics.observe_batch(
            done.applied, done.dead, time.perf_counter() - done.t0, done.latencies_ms
        )
        self.metrics.observe_lag(self._highwaters, self.positions, self.topic)  # type: ignore[arg-type]

    def _check_ownership(self) -> None:
        """Tell the store whether this consumer holds every partition of the topic."""
        count = self.kafka.partition_count()
        whole = count is not None and self.kafka.assignment() == set(range(count))
        self.store.own(whole)
        self.ownership_changed = False
        log.info("holding %s partitions of %s: local state %s", len(self.kafka.assignment()),
                 count, "kept" if whole else "not kept")  # fmt: skip

    # -- lifecycle ---------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def stop(signum: int, _frame: object) -> None:
            log.info("signal %s: finishing the batch and leaving the group", signum)
            self.stopping = True

        with contextlib.suppress(ValueError):  # not the main thread (tests run consumers so)
            self._previous_handlers = {
                signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)
            }

    def _restore_signals(self) -> None:
        """Give SIGTERM and SIGINT back to whoever had them: a process that ran a consumer
        (a test run, an application) must still stop on Ctrl-C afterwards."""
        for signum, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def close(self) -> None:
        self._settle()
        self._committer.shutdown(wait=True)
        self.scorer.model_worker.close()
        try:
            self.out.close()  # sends what is still pending first
        finally:
            self.kafka.close()
            self.redis.close()


def tune_gc(gen0_threshold: int) -> None:
    """Fewer, later collections: a batch allocates ~100 objects per event, nearly all freed by
    reference counting, so CPython's default threshold (700) mostly rescans live state. The
    start-up objects (model, rules, clients) are frozen out of every later collection."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0_threshold, gen0), gen1, gen2)


class _LiveExport:
    """Every `live_quality_export_s`: the held partitions' figures to the Prometheus gauges,
    and a log line when the drift status turns "drifting" (or back)."""

    def __init__(self, settings: Settings) -> None:
        self.every_s = settings.live_quality_export_s
        self.next_at = 0.0
        self.status: str | None = None

    def maybe(self, live: LiveMonitors) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        if not live.quality_on:
            return
        summary = live.summary()
        export_live_quality(summary)
        drift = summary.get("drift")
        status = drift["status"] if drift else None
        if status == self.status:
            return
        if status == "drifting":
            assert drift is not None
            worst = [f"{name} {drift['features'][name]:.2f}" for name in drift["drifting"][:5]]
            if drift["label_drifting"]:
                worst.append(f"label {drift['label']['psi']:.2f}")
            log.warning("model %s drifting: PSI over %g: %s", live.version, drift["threshold"],
                        ", ".join(worst))  # fmt: skip
        elif self.status == "drifting":
            log.info("model %s no longer drifting", live.version)
        self.status = status


class _ModelWatch:
    """Polls the model registry and swaps a newly registered model in without a restart."""

    def __init__(self, settings: Settings, scorer: BatchScorer) -> None:
        self.settings = settings
        self.scorer = scorer
        self.next_check = 0.0
        self.version: str | None = None
        self.registry: ModelRegistry | None = ModelRegistry(settings)

    def maybe_reload(self, summary: RunSummary) -> None:
        now = time.monotonic()
        if self.registry is None or now < self.next_check:
            return
        self.next_check = now + self.settings.model_poll_s
        current = self.registry.current_version()
        if current is None or current == self.version:
            return
        try:
            bundle = self.registry.load(current)
        except Exception as exc:  # a refused model keeps the old one serving
            message = f"model {current} refused: {exc}"
            if message not in summary.errors:
                summary.errors.append(message)
                log.error(message)
            self.version = current
            return
        bundle.set_threads(self.settings.model_threads)
        self.scorer.model = bundle
        if self.scorer.live is not None:  # drift and the calibrators start afresh
            self.scorer.live.set_model(bundle.version, bundle.metrics)
        self.version = summary.model_version = current
        log.info("serving model %s", current)
