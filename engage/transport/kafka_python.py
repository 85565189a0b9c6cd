"""The seam over kafka-python (the default client): thin, its ConsumerRecords pass through.

kafka-python 3.0.12 quirk kept in mind by the callers: a partition paused while it holds
fetched records can stay parked after `resume()`, so the event-time merge bounds its buffers
by seeking back, never by pausing (consumer/ordering.py); the runner pauses only to wait for
Redis, and re-seeks every partition before it takes records again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka import __version__ as KAFKA_PYTHON_VERSION
from kafka.errors import BrokerResponseError, KafkaError, KafkaTimeoutError

from engage import kafka_clients
from engage.partitioning import CachedKeyPartitioner
from engage.settings import Settings
from engage.transport.base import (
    PERMANENT_CODES,
    DeliveryFailed,
    Headers,
    PartitionsCallback,
    Record,
)
from engage.transport.call_watch import CallWatch, CallWedged
from engage.transport.fetched_batches import read_columns
from engage.transport.packed import PackedRecords
from engage.transport.record_batches import append_records, outcome, writes_v2
from engage.transport.record_batches import lanes as packed_lanes
from engage.transport.record_columns import RecordColumns

log = logging.getLogger("engage.kafka")


class _Listener(ConsumerRebalanceListener):
    """One client's rebalance callbacks, passed on to the holder while that client is the
    holder's. Why the switch: a client replaced by `_renew` still tells its listener that its
    partitions are revoked when it finally closes (kafka-python's close revokes, or reports
    them lost), and a wedged one may close long after its successor was assigned the same
    partitions: passed on, that late revocation would take them from the holder for good."""

    def __init__(self, on_assign: PartitionsCallback, on_revoke: PartitionsCallback) -> None:
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self.current = True  # False once its client is replaced
        self.held: set[int] = set()  # what the holder was last told it holds

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if not self.current:
            return
        partitions = [tp.partition for tp in revoked]
        self.held.difference_update(partitions)
        _told("revocation", self.on_revoke, partitions)

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if not self.current:
            return
        partitions = [tp.partition for tp in assigned]
        _told("assignment", self.on_assign, partitions)
        self.held.update(partitions)

    def retire(self) -> None:
        self.current = False


def _join_left_unapplied(coordinator: Any) -> bool:
    """kafka-python 3.0.12 loses a join this way: a leader rejoining because the topic's
    metadata changed since its last assignment (`rejoin_needed` not set), whose poll gives up
    while the SyncGroup is in flight. Its new assignment makes the snapshots equal, so
    `need_rejoin()` reads False, and no later poll awaits the finished join: the assignment
    is never applied nor the listener told, and the group reads as joined. A finished join
    task nobody took is that state (a join awaited to the end clears the task); asked only
    between polls, when no poll of this client can be taking it."""
    task = getattr(coordinator, "_join_task", None)
    return task is not None and bool(getattr(task, "is_done", False))


def _told(what: str, tell: PartitionsCallback, partitions: list[int]) -> None:
    """A callback run on kafka-python's I/O loop, its failure said on engage's own logger
    (kafka-python logs it on its own, which an application may have silenced) and passed on."""
    try:
        tell(partitions)
    except Exception:
        log.exception("the holder's %s callback failed for %s", what, sorted(partitions))
        raise


#: Per partition and fetch: kafka-python keeps up to this much of every assigned partition
#: buffered. At 8 MiB the consumer's peak RSS grew with the events consumed (309 -> 512 MiB
#: from 100k to 5M synthetic events); at 1 MiB it stays flat (bench/rss_profile.py: 404, 432,
#: 426 MiB at 100k, 1M, 2M) and the rate is unchanged. A larger record is still fetched whole
#: (the broker returns a first batch above the limit).
PARTITION_FETCH_BYTES = 1024 * 1024


def consumer_options(settings: Settings, group: str) -> dict[str, Any]:
    """The KafkaConsumer options of engage's consumer (poll size, group timers, fetch limits);
    the benchmarks' consumers read the topic with the same ones."""
    return {
        "group_id": group,
        "max_poll_records": settings.batch_max_records,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "max_poll_interval_ms": settings.kafka_max_poll_interval_ms,
        "heartbeat_interval_ms": max(1000, settings.kafka_session_timeout_ms // 4),
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
    }


class KafkaPythonConsumer:
    def __init__(self, settings: Settings, group: str) -> None:
        self.topic = ""
        self._tps: dict[int, TopicPartition] = {}
        self._settings, self._group = settings, group
        self._listener: _Listener | None = None
        #: Since when the group has been seen stuck, and how: "unjoined", or "untold" (joined,
        #: holding partitions the holder was not told of). A clock a condition: a join that
        #: completes late must not inherit the unjoined time as time untold.
        self._stuck: tuple[str, float] | None = None
        self.renewals = 0  # clients rebuilt: their group stayed unjoined, or a call wedged
        self._calls = CallWatch("engage-kafka-watch")
        self._wedged: str | None = None  # a call freed outside poll: rebuild at the next poll
        self.client = self._new_client()

    def _new_client(self) -> Any:
        client = kafka_clients.consumer(
            self._settings, **consumer_options(self._settings, self._group)
        )
        #: Polls give `RecordColumns` (engage/transport/record_columns.py), not a record
        #: object each, wherever the batch-at-a-time reader is in use.
        self._columns = read_columns(client)
        return client

    def _tp(self, partition: int) -> TopicPartition:
        tp = self._tps.get(partition)
        if tp is None:
            tp = self._tps[partition] = TopicPartition(self.topic, partition)
        return tp

    def subscribe(
        self, topic: str, on_assign: PartitionsCallback, on_revoke: PartitionsCallback
    ) -> None:
        self.topic = topic
        self._tps.clear()
        # The topic's partitions known before the first join: else kafka-python joins with
        # none when the topic is new to it (an empty assignment, then a rebalance) and, about
        # one start in ten here, stays on that empty assignment until its next metadata refresh.
        self._listener = _Listener(on_assign, on_revoke)
        self._known_partitions()
        self.client.subscribe([topic], listener=self._listener)

    def poll(self, timeout_ms: int, max_records: int | None = None) -> Sequence[Record]:
        if self._wedged is not None:
            why, self._wedged = self._wedged, None
            self._renew(why)
        try:
            with self._watched("poll", timeout_ms / 1000):
                polled = self.client.poll(timeout_ms=timeout_ms, max_records=max_records)
        except CallWedged as exc:
            self._renew(str(exc))
            return []
        if not polled:
            self._watch_group()
        taken = chain.from_iterable(polled.values())  # (in C: no bytecode a record)
        return RecordColumns.concat(list(taken)) if self._columns else list(taken)

    def _request_timeout_s(self) -> float:
        return float(getattr(self.client, "config", {}).get("request_timeout_ms", 30_000)) / 1000

    def _watched(self, what: str, timeout_s: float) -> Any:
        """A call on the client that may take `timeout_s`, given `kafka_group_stuck_s` more
        before the watch frees it (engage/transport/call_watch.py)."""
        net = getattr(self.client, "_net", None)
        return self._calls.call(what, net, timeout_s + self._settings.kafka_group_stuck_s)

    def _watch_group(self) -> None:
        """Rebuild the client when its group stayed unjoined for `kafka_group_stuck_s`: the
        coordinator unknown, or a join that does not complete. Seen in CI with a broker that
        answered every other client: no heartbeat after a rejoin, the member removed, then
        seven minutes of empty polls looking for the coordinator; and, in a later run, a new
        group's only consumer polling ten minutes without ever reading (its group state was
        not logged: the runner now logs it). Also when the client holds partitions its holder
        was never told of (no assignment callback reached it: the runner would wait for them
        for ever): a new client's join tells it again. A legitimate join waits at most for the
        other members' next poll or a dead member's session timeout: seconds. A join that
        kafka-python finished but never applied (`_join_left_unapplied`) is redone at once."""
        coordinator = getattr(self.client, "_coordinator", None)
        if coordinator is None or self._listener is None:
            return
        joined = not (coordinator.coordinator_unknown() or coordinator.need_rejoin())
        if joined and _join_left_unapplied(coordinator):
            log.warning("group %s: kafka-python left a finished join unapplied (its poll gave up "
                        "as the group synced): rejoining", self._group)  # fmt: skip
            coordinator.request_rejoin()
            return
        if joined and self.assignment() <= self._listener.held:
            self._stuck = None
            return
        how, now = ("untold" if joined else "unjoined"), time.monotonic()
        if self._stuck is None or self._stuck[0] != how:
            self._stuck = (how, now)
        elif now - self._stuck[1] >= self._settings.kafka_group_stuck_s:
            stuck_s = now - self._stuck[1]
            if joined:  # (names the partitions: the rebuild message says which)
                untold = sorted(self.assignment() - self._listener.held)
                self._renew(f"holding {untold} untold for {stuck_s:.0f}s")
            else:
                state = getattr(coordinator, "state", "?")
                self._renew(f"not joined for {stuck_s:.0f}s (coordinator "
                            f"{coordinator.coordinator_id}, state {state})")  # fmt: skip

    def _renew(self, why: str) -> None:
        """A new client in the same group: the partitions are revoked first, as a rebalance
        would (the runner lets its last batch land), and assigned again when it joins."""
        old = self._listener
        assert old is not None
        log.warning("group %s %s: rebuilding the Kafka consumer", self._group, why)
        old.retire()  # the old client's own revocation, whenever it closes, goes nowhere
        held = sorted(old.held | self.assignment())
        if held:
            old.on_revoke(held)
        _close_aside(self.client)
        self._listener = _Listener(old.on_assign, old.on_revoke)
        self.client = self._new_client()
        self._known_partitions()
        self.client.subscribe([self.topic], listener=self._listener)
        self._stuck = None
        self.renewals += 1

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self.client.assignment()}

    def partition_count(self) -> int | None:
        partitions = self._known_partitions()
        return len(partitions) if partitions else None

    def _known_partitions(self) -> set[int] | None:
        """The topic's partitions (a metadata request when the client has none), or None if
        kafka-python's wait for them wedged (freed by the watch)."""
        try:
            with self._watched("metadata request", self._request_timeout_s()):
                partitions: set[int] = self.client.partitions_for_topic(self.topic)
                return partitions
        except CallWedged as exc:
            log.warning("%s", exc)
            return None

    def seek(self, partition: int, offset: int) -> None:
        self.client.seek(self._tp(partition), offset)

    def seek_to_beginning(self, partition: int) -> None:
        self.client.seek_to_beginning(self._tp(partition))  # (no argument would mean: all)

    def pause(self, *partitions: int) -> None:
        self.client.pause(*map(self._tp, partitions))

    def resume(self, *partitions: int) -> None:
        self.client.resume(*map(self._tp, partitions))

    def paused(self) -> set[int]:
        return {tp.partition for tp in self.client.paused()}

    def position(self, partition: int, timeout_ms: int = 1000) -> int | None:
        try:
            with self._watched("position", timeout_ms / 1000):
                at: int | None = self.client.position(self._tp(partition), timeout_ms=timeout_ms)
                return at
        except CallWedged as exc:  # unknown; rebuilt at the next poll, not in the caller's merge
            self._wedged = str(exc)
            return None

    def highwater(self, partition: int) -> int | None:
        return self.client.highwater(self._tp(partition))

    def close(self) -> None:
        try:
            with self._watched("close", self._request_timeout_s()):
                self.client.close()
        except CallWedged as exc:
            log.warning("%s: left to close", exc)
        finally:
            self._calls.close()


#: How long a replaced client may take to close before it is left to its daemon thread.
_CLOSE_ASIDE_S = 5.0


def _close_aside(client: Any) -> None:
    """Close a replaced (wedged) client on a thread of its own: its close may wait on the
    same I/O loop that wedged, and the new client must not wait for it."""

    def close() -> None:
        try:
            client.close(autocommit=False, timeout_ms=1000)
        except Exception as exc:  # a wedged client: dropped either way
            log.warning("closing the old Kafka consumer failed: %s", exc)

    closer = threading.Thread(target=close, name="engage-kafka-close", daemon=True)
    closer.start()
    closer.join(_CLOSE_ASIDE_S)
    if closer.is_alive():
        log.warning("the old Kafka consumer did not close in %.0fs: left to close", _CLOSE_ASIDE_S)


#: kafka-python releases whose producer internals `KafkaPythonProducer` appends to directly.
_DIRECT_APPEND_VERSIONS = ("3.0.",)
#: Room left for a record's framing when checking that it fits under max_request_size.
_RECORD_OVERHEAD = 128


#: How many times a flush is repeated while kafka-python says a future is not done yet.
_FLUSH_ROUNDS = 16
#: A flush waits in slices this long: kafka-python 3.0.12's `flush()` waits on the batches
#: incomplete when it began, and a batch the broker refused as too large is split into new
#: ones and dropped without its own future ever completing, so an unbounded wait that began
#: before the split never returns. Each slice begins again from the batches incomplete then.
_FLUSH_SLICE_S = 1.0


class FatalProducerError(KafkaError):
    """The idempotent producer is in a fatal state: nothing it sends can succeed again."""


def refusal(exc: BaseException) -> str | None:
    """What a permanent refusal by the broker (or by the client's own size check) means, in
    words; None for anything that may pass when sent again (timeouts, leader changes...)."""
    if isinstance(exc, BrokerResponseError):
        return PERMANENT_CODES.get(exc.errno)
    if isinstance(exc, FatalProducerError):
        return f"fatal producer error: {exc}"
    return None


def _largest(records: Sequence[tuple[bytes, bytes]]) -> int:
    return max((len(k) + len(v) for k, v in records), default=0)


class KafkaPythonProducer:
    """kafka-python's producer; keyed records without headers skip `KafkaProducer.send`.

    Why: `send` costs ~28 us of CPU per record here, a quarter of the consumer's whole
    per-event cost, and about 40% of it is checks and bookkeeping that a score message does
    not need (argument and header validation, serializers, a size estimate, a debug line
    whose arguments are formatted anyway). For a keyed record without headers, of a topic
    whose metadata is known, that fits under `max_request_size`, `send` does exactly: pick
    the partition with the configured partitioner, append to the record accumulator, wake
    the sender when a batch filled or began. This does the same three steps itself. Anything
    else (and any other kafka-python release than those checked) goes through `send`.
    """

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.client = kafka_clients.producer(settings, **overrides)
        #: How long a flush may take in all: a record waits out an outage this long at most.
        self._flush_limit_s = settings.kafka_delivery_timeout_ms / 1000 + 5.0
        self._pending: list[tuple[str, Any]] = []  # (topic, future) since the last flush
        self._batches: list[Any] = []  # producer batches send_batch wrote to since then
        self._failures: list[Exception] = []  # sends refused before any future existed
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        internals = ("_metadata", "_accumulator", "_sender")
        self._direct = KAFKA_PYTHON_VERSION.startswith(_DIRECT_APPEND_VERSIONS) and all(
            hasattr(self.client, name) for name in internals
        )
        self._max_record = self.client.config["max_request_size"] - _RECORD_OVERHEAD
        self._bulk = self._direct and writes_v2(self.client._accumulator)

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        try:
            future = None
            if self._direct and headers is None and key is not None and value is not None:
                future = self._append(topic, value, key)
            if future is None:
                future = self.client.send(
                    topic, value=value, key=key, headers=None if headers is None else list(headers)
                )
        except KafkaError as exc:  # e.g. KafkaTimeoutError: the buffer stayed full too long
            self._failures.append(DeliveryFailed(topic, exc))
            return
        self._pending.append((topic, future))

    def _append(self, topic: str, value: bytes, key: bytes) -> Any:
        """`KafkaProducer.send`'s own steps for a keyed record; None: let `send` do it."""
        client = self.client
        metadata = client._metadata
        if len(key) + len(value) > self._max_record or metadata.partitions_for_topic(topic) is None:
            return None
        partition = client.config["partitioner"].partition(topic, key, key, value, value, metadata)
        tp = self._tp(topic, partition)
        future, batch_is_full, new_batch_created, _ = client._accumulator.append(
            tp, None, key, value, []
        )
        if batch_is_full or new_batch_created:
            client._sender.wakeup()
        return future

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    def send_batch(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Keyed records without headers, each partition's written into its producer batch in
        one pass (engage/transport/record_batches.py); else one `send` each."""
        client = self.client
        metadata = client._metadata
        packed = records if isinstance(records, PackedRecords) else None
        if (
            not self._bulk
            or metadata.partitions_for_topic(topic) is None
            or (_largest(records) if packed is None else packed.largest()) > self._max_record
        ):
            for key, value in records:
                self.send(topic, value, key)
            return
        partitioner = client.config["partitioner"]
        keys = [key for key, _ in records] if packed is None else packed.distinct_keys
        where: Sequence[int] | np.ndarray | None
        if isinstance(partitioner, CachedKeyPartitioner):  # one metadata lookup a batch
            where = partitioner.partitions_of(topic, keys, metadata)
            if where is not None and packed is not None:  # each distinct key's, hashed once
                where = packed.per_record(where)
        else:
            where = [partitioner.partition(topic, k, k, v, v, metadata) for k, v in records]
        if where is None:  # the topic left the metadata meanwhile: the stock path
            for key, value in records:
                self.send(topic, value, key)
            return
        lanes: dict[int, Any]
        if packed is not None:  # framed straight from the writer's buffer
            lanes = packed_lanes(packed, where)
        else:
            lanes = {}
            for p, record in zip(where, records, strict=True):
                lanes.setdefault(p, []).append(record)
        wake = False
        try:
            for p, lane in lanes.items():
                batches, woken = append_records(client._accumulator, self._tp(topic, p), lane)
                self._batches += batches
                wake = wake or woken
        except (KafkaError, RuntimeError) as exc:  # a closed producer
            self._failures.append(DeliveryFailed(topic, exc))
        if wake:
            client._sender.wakeup()

    def prepare(self, topic: str, timeout_s: float) -> None:
        wait = getattr(self.client, "_wait_on_metadata", None)  # partitions_for waits max_block_ms
        if wait is None:
            return
        try:
            wait(topic, int(timeout_s * 1000))
        except (KafkaError, RuntimeError) as exc:  # the first send waits and reports it
            log.debug("no metadata for %s yet: %s", topic, exc)

    def flush(self) -> list[Exception]:
        pending, self._pending = self._pending, []
        batches, self._batches = list(dict.fromkeys(self._batches)), []
        failures, self._failures = self._failures, []
        deadline = time.monotonic() + self._flush_limit_s
        attempt = 0
        while True:
            try:
                self.client.flush(timeout=_FLUSH_SLICE_S)
                break
            except KafkaTimeoutError as exc:  # a slice passed (see _FLUSH_SLICE_S)
                if time.monotonic() >= deadline:
                    failures.append(exc)
                    break
            except KafkaError as exc:  # e.g. UnknownError('Future not done'): kafka-python
                # 3.0.12 raises it when a batch was split after MESSAGE_TOO_LARGE, before the
                # halves are answered: wait for them too, so the broker's refusal comes back.
                attempt += 1
                if attempt == _FLUSH_ROUNDS:
                    failures.append(exc)
                    break
        for topic, future in pending:
            if future.failed():
                failures.append(DeliveryFailed(topic, future.exception))
            elif not future.is_done:  # (only when flush failed)
                failures.append(
                    DeliveryFailed(topic, TimeoutError("still unacknowledged after flush"))
                )
        failures += [
            DeliveryFailed(batch.topic_partition.topic, error)
            for batch in batches
            if (error := outcome(batch)) is not None
        ]
        if failures and not any(refusal(getattr(f, "cause", f)) for f in failures):
            failures += self._fatal(failures)  # why the batches were aborted
        return failures

    def _fatal(self, failures: list[Exception]) -> list[Exception]:
        """The error that put the idempotent producer in its fatal state, if it is in one:
        every later batch is then aborted without a word of why (kafka-python 3.0.12 after a
        MESSAGE_TOO_LARGE it could not split further), and no send can succeed again."""
        manager = getattr(getattr(self.client, "_sender", None), "_transaction_manager", None)
        if manager is None or not manager.has_fatal_error():
            return []
        topic = next((f.topic for f in failures if isinstance(f, DeliveryFailed)), "?")
        last = manager.last_error
        error = last if isinstance(last, BrokerResponseError) else FatalProducerError(last)
        return [DeliveryFailed(topic, error)]

    def close(self) -> None:
        self.client.close()  # sends what is still pending first
