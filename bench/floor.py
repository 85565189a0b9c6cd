"""The job floor: the least a consumer of the events topic can do with engage's clients.

What `consumer_movielens` is measured against (issue 15): the same MovieLens topic, the same
clients with the same settings (a kafka-python group member with engage's poll size and fetch
limits, the scores producer engage configures, redis-py), the same I/O per batch, and none of
engage's work (validation, features, admission, rules, model, duplicate guard, fencing):

- poll up to `batch_max_records` records; decode each value with orjson, nothing checked;
- per-user counters in a dict, in memory only: events, ratings n and sum;
- one small JSON score message per event on the scores topic; flush once per batch;
- one MULTI/EXEC per batch: an HSET of each touched user's counters, a SET of each partition's
  offset (engage's offset keys, so a restart resumes there), and the HINCRBY of the processed
  count the harness waits on (engage writes the same stats).

Undecodable records are counted as dead-lettered, not sent anywhere. bench/consumer_worker.py
runs it (job `"kind": "floor"`) as it runs the real consumer: gated, stopped and measured
the same way, so the two rates and CPU figures compare like with like.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import orjson
from kafka import ConsumerRebalanceListener, TopicPartition

from bench.common import engage_consumer_options
from consumer.runner import RunSummary, tune_gc
from consumer.state_store import NO_OFFSET
from consumer.store import stored_offsets
from engage import kafka_clients, redis_client
from engage.settings import Settings
from engage.transport.kafka_python import KafkaPythonProducer
from features import keys

#: The floor's Kafka client, whatever engage's consumer uses (its `kafka_client` setting).
TRANSPORT = "kafka-python"
#: Per user: [events, ratings, sum of the ratings' values].
Counters = list[float]


class _SeekToStored(ConsumerRebalanceListener):
    def __init__(self, owner: FloorConsumer) -> None:
        self.owner = owner

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.owner.seek_to_stored(assigned)  # looked up here: the worker's gate wraps it


class FloorConsumer:
    """One group member over the events topic doing the floor's work until SIGTERM."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.topic = settings.events_topic
        self.stopping = False
        self.counters: dict[str, Counters] = {}
        self.redis = redis_client.connect(settings)
        self.kafka = kafka_clients.consumer(settings, **engage_consumer_options(settings, group))
        # engage's own scores producer (engage/transport, the kafka-python seam with its
        # batch writes, send_batch): the floor sends exactly as the consumer does.
        self.out = KafkaPythonProducer(
            settings, linger_ms=5, batch_size=settings.output_batch_bytes
        )
        kafka_clients.ensure_topic(settings, settings.scores_topic)
        self.kafka.subscribe([self.topic], listener=_SeekToStored(self))

    def seek_to_stored(self, partitions: list[TopicPartition]) -> None:
        """Resume each partition after its offset in Redis (an emptied database: the start)."""
        stored = stored_offsets(self.redis, self.topic, (tp.partition for tp in partitions))
        for tp in partitions:
            offset = stored[tp.partition]
            if offset == NO_OFFSET:
                self.kafka.seek_to_beginning(tp)
            else:
                self.kafka.seek(tp, offset + 1)

    def run(self, on_batch: Callable[[RunSummary], None] | None = None) -> RunSummary:
        """Poll and apply batches until SIGTERM/SIGINT; the summary engage's consumer gives."""
        summary = RunSummary()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        tune_gc(self.settings.gc_gen0_threshold)  # as engage's consumer runs
        started = time.monotonic()
        try:
            while not self.stopping:
                polled = self.kafka.poll(
                    timeout_ms=self.settings.poll_timeout_ms,
                    max_records=self.settings.batch_max_records,
                )
                records = [r for batch in polled.values() for r in batch]
                if records:
                    self._handle(records, summary)
                    if on_batch:
                        on_batch(summary)
        finally:
            summary.seconds = time.monotonic() - started
            self.out.close()  # sends what is still pending first
            self.kafka.close()
            self.redis.close()
        return summary

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _count(self, value: bytes) -> tuple[str, Counters]:
        """Decode one record's JSON and count it for its user (ValueError etc. if broken)."""
        event: dict[str, Any] = orjson.loads(value)
        user = event["user_id"]
        counters = self.counters.get(user)
        if counters is None:
            counters = self.counters[user] = [0, 0, 0.0]
        counters[0] += 1
        if event["event_type"] == "rating":
            counters[1] += 1
            counters[2] += event["value"]
        return user, counters

    def _handle(self, records: list[Any], summary: RunSummary) -> None:
        """One batch: count, send a score per event, flush, then one transaction."""
        began = time.monotonic()
        messages: list[tuple[bytes, bytes]] = []
        touched: dict[str, Counters] = {}
        offsets: dict[int, int] = {}
        bad = 0
        for r in records:
            offsets[r.partition] = r.offset  # a partition's records come in offset order
            try:
                user, counters = self._count(r.value)
            except (ValueError, TypeError, KeyError):
                bad += 1
                continue
            touched[user] = counters
            events, ratings, total = counters
            score = {
                "user_id": user,
                "events": events,
                "mean_rating": total / ratings if ratings else None,
            }
            messages.append((r.key, orjson.dumps(score)))
        self.out.send_batch(self.settings.scores_topic, messages)
        failed = self.out.flush()
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(records) - bad} scores: {failed[0]}")
        self._commit(touched, offsets, len(records) - bad, bad)
        if summary.first_batch_at is None:
            summary.first_batch_at = began
        summary.last_batch_at = time.monotonic()
        summary.processed += len(records) - bad
        summary.dead_lettered += bad
        summary.batches += 1

    def _commit(
        self, touched: dict[str, Counters], offsets: dict[int, int], applied: int, bad: int
    ) -> None:
        """The batch's users, offsets and counts in one MULTI/EXEC."""
        pipe = self.redis.pipeline(transaction=True)
        for user, (events, ratings, total) in touched.items():
            fields = {"events": events, "ratings_n": ratings, "ratings_sum": total}
            pipe.hset(keys.user_key(user), mapping=fields)
        for partition, offset in offsets.items():
            pipe.set(keys.offset_key(self.topic, partition), offset)
        stats = keys.stats_key(self.topic)
        pipe.hincrby(stats, "processed", applied)
        if bad:
            pipe.hincrby(stats, "dead_lettered", bad)
        pipe.execute()
