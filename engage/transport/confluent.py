"""The seam over confluent-kafka (librdkafka): `pip install 'engage[fast]'`,
`ENGAGE_KAFKA_CLIENT=confluent`. Imported only when chosen.

Same contract as the kafka-python seam, with librdkafka's own ways:

- poll: `poll()` waits for the first message, then `consume(n - 1, 0)` takes what is already
  fetched (`consume(n, timeout)` alone would wait the whole timeout for a full batch);
- assignment: `on_assign` runs the application's callback with seeks and pauses collected,
  then assigns the partitions *with* those offsets (a seek on a partition that is being
  assigned fails in librdkafka) and pauses what was asked;
- position: librdkafka reports the application position only once a message was consumed
  after the last seek; until then it is the offset sought (or, after a seek to the beginning,
  the log start offset of the last fetch);
- produce: idempotent, acks=all, lz4, murmur2 partitioner (the Java client's and
  kafka-python's: a key lands on the same partition whichever client sent it); only failed
  deliveries call back (`delivery.report.only.error`), `flush()` collects them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from engage import kafka_clients
from engage.settings import Settings
from engage.transport.base import (
    PERMANENT_CODES,
    DeliveryFailed,
    Headers,
    PartitionsCallback,
    PlainRecord,
    Record,
)

log = logging.getLogger("engage.kafka")
FETCH_MAX_BYTES = 64 * 1024 * 1024
PARTITION_FETCH_MAX_BYTES = 8 * 1024 * 1024


def _error_cb(err: KafkaError) -> None:
    """Client-wide errors (a broker down, a failed authentication): librdkafka retries them."""
    log.warning("kafka client: %s", err)


def common_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "reconnect.backoff.max.ms": settings.kafka_reconnect_backoff_max_ms,
        "logger": log,
        "error_cb": _error_cb,
    }
    config.update(kafka_clients.librdkafka_security(settings))
    return config


class ConfluentConsumer:
    def __init__(self, settings: Settings, group: str) -> None:
        self.topic = ""
        self.max_records = settings.batch_max_records
        config = common_config(settings)
        config.update(
            {
                "group.id": group,
                "enable.auto.commit": False,  # offsets live in Redis
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": settings.kafka_session_timeout_ms,
                "heartbeat.interval.ms": max(1000, settings.kafka_session_timeout_ms // 4),
                # librdkafka refuses a poll interval below the session timeout.
                "max.poll.interval.ms": max(
                    settings.kafka_max_poll_interval_ms, settings.kafka_session_timeout_ms
                ),
                "fetch.max.bytes": FETCH_MAX_BYTES,
                "max.partition.fetch.bytes": PARTITION_FETCH_MAX_BYTES,
                "receive.message.max.bytes": FETCH_MAX_BYTES + 1024 * 1024,
            }
        )
        self.client = Consumer(config)
        self._assigning: set[int] | None = None  # the partitions, inside on_assign
        self._assign_offsets: dict[int, int] = {}
        self._assign_paused: set[int] = set()
        self._sought: dict[int, int] = {}  # last seek per partition (OFFSET_BEGINNING too)
        self._paused: set[int] = set()
        self._on_assign: PartitionsCallback | None = None
        self._on_revoke: PartitionsCallback | None = None

    def _tps(self, partitions: Any) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in partitions]

    # -- group membership ------------------------------------------------------------------
    def subscribe(
        self, topic: str, on_assign: PartitionsCallback, on_revoke: PartitionsCallback
    ) -> None:
        self.topic = topic
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self.client.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, client: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._assigning = set(numbers)
        self._assign_offsets, self._assign_paused = {}, set()
        try:
            assert self._on_assign is not None
            self._on_assign(numbers)
        finally:  # assign even if the callback failed: its error is raised from poll()
            self._assigning = None
            for tp in partitions:
                tp.offset = self._assign_offsets.get(tp.partition, OFFSET_INVALID)
            client.assign(partitions)
            self._sought.update(self._assign_offsets)
            if self._assign_paused:
                client.pause(self._tps(self._assign_paused))
                self._paused |= self._assign_paused

    def _revoked(self, client: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        try:
            assert self._on_revoke is not None
            self._on_revoke(numbers)
        finally:
            # A partition assigned again later starts unpaused, as with kafka-python.
            if held := self._paused.intersection(numbers):
                try:
                    client.resume(self._tps(held))
                except KafkaException as exc:
                    log.debug("resume of revoked partitions %s: %s", sorted(held), exc)
            self._paused.difference_update(numbers)
            for p in numbers:
                self._sought.pop(p, None)

    def assignment(self) -> set[int]:
        if self._assigning is not None:
            return set(self._assigning)
        return {tp.partition for tp in self.client.assignment()}

    def partition_count(self) -> int | None:
        try:
            topic = self.client.list_topics(self.topic, timeout=5.0).topics.get(self.topic)
        except KafkaException:
            return None
        return len(topic.partitions) if topic is not None and topic.partitions else None

    # -- records ---------------------------------------------------------------------------
    def poll(self, timeout_ms: int, max_records: int | None = None) -> list[Record]:
        first = self.client.poll(timeout_ms / 1000)
        if first is None:
            return []
        limit = max_records or self.max_records
        messages = [first, *self.client.consume(limit - 1, 0)] if limit > 1 else [first]
        if not any(map(Message.error, messages)):  # the usual batch: columns read in C
            return list(
                map(
                    PlainRecord,
                    map(Message.topic, messages), map(Message.partition, messages),
                    map(Message.offset, messages), [t for _, t in map(Message.timestamp, messages)],
                    map(Message.key, messages), map(Message.value, messages),
                    map(Message.headers, messages),
                )
            )  # fmt: skip
        out: list[Record] = []
        for m in messages:
            err = m.error()
            if err is not None:
                self._message_error(err)
                continue
            out.append(
                PlainRecord(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.timestamp()[1],
                    m.key(),
                    m.value(),
                    m.headers(),
                )
            )
        return out

    @staticmethod
    def _message_error(err: KafkaError) -> None:
        if err.fatal():
            raise KafkaException(err)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka consumer: %s", err)

    # -- positioning -----------------------------------------------------------------------
    def seek(self, partition: int, offset: int) -> None:
        if self._assigning is not None and partition in self._assigning:
            self._assign_offsets[partition] = offset
            return
        self.client.seek(TopicPartition(self.topic, partition, offset))
        self._sought[partition] = offset

    def seek_to_beginning(self, partition: int) -> None:
        self.seek(partition, OFFSET_BEGINNING)

    def pause(self, *partitions: int) -> None:
        now = set(partitions)
        if self._assigning is not None:
            self._assign_paused |= now & self._assigning
            now -= self._assigning
        if now:
            self.client.pause(self._tps(now))
            self._paused |= now

    def resume(self, *partitions: int) -> None:
        if self._assigning is not None:
            self._assign_paused.difference_update(partitions)
        if partitions:
            self.client.resume(self._tps(partitions))
            self._paused.difference_update(partitions)

    def paused(self) -> set[int]:
        if self._assigning is not None:
            return self._paused | self._assign_paused
        return set(self._paused)

    def position(self, partition: int, timeout_ms: int = 1000) -> int | None:
        tp = TopicPartition(self.topic, partition)
        (pos,) = self.client.position([tp])
        if pos.offset >= 0:  # a message was consumed since the last seek
            return pos.offset
        sought = self._sought.get(partition)
        if sought is None:
            return None
        if sought >= 0:
            return sought
        if sought == OFFSET_BEGINNING:  # the log start of the last fetch, if one came back
            low, _high = self.client.get_watermark_offsets(tp, cached=True)
            return low if low >= 0 else None
        return None

    def highwater(self, partition: int) -> int | None:
        _low, high = self.client.get_watermark_offsets(
            TopicPartition(self.topic, partition), cached=True
        )
        return high if high >= 0 else None

    def close(self) -> None:
        self.client.close()


def refusal(exc: BaseException) -> str | None:
    """What a permanent refusal means, in words (librdkafka's codes for the broker's errors
    are the broker's numbers; a fatal error stops an idempotent producer for good); None for
    anything that may pass when sent again (timeouts, leader changes...)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(err, KafkaError):
        return None
    if err.code() in PERMANENT_CODES:
        return PERMANENT_CODES[err.code()]
    return f"fatal producer error: {err.str()}" if err.fatal() else None


class ConfluentProducer:
    def __init__(self, settings: Settings, linger_ms: int = 20, batch_bytes: int = 256 * 1024):
        self._failures: list[Exception] = []
        self._block_s = settings.kafka_delivery_timeout_ms / 1000
        config = common_config(settings)
        config.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "max.in.flight.requests.per.connection": 5,
                "linger.ms": linger_ms,
                "batch.size": batch_bytes,
                "compression.type": "lz4",
                "partitioner": "murmur2_random",
                # Surviving a broker restart: a record may wait out an outage this long.
                "message.timeout.ms": settings.kafka_delivery_timeout_ms,
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
            }
        )
        try:
            self.client = Producer(config)
        except KafkaException as exc:  # a librdkafka built without lz4
            log.warning("lz4 unavailable in librdkafka (%s): sending uncompressed", exc)
            config["compression.type"] = "none"
            self.client = Producer(config)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failures.append(DeliveryFailed(msg.topic() or "?", KafkaException(err)))

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        deadline = None
        while True:
            try:
                self.client.produce(topic, value=value, key=key, headers=headers)
                return
            except BufferError as exc:  # the queue is full: serve deliveries, then retry
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._block_s
                elif now >= deadline:
                    self._failures.append(DeliveryFailed(topic, exc))
                    return
                self.client.poll(0.05)
            except KafkaException as exc:  # refused at once, e.g. larger than message.max.bytes
                self._failures.append(DeliveryFailed(topic, exc))
                return

    def send_batch(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """`send` each record; the call made straight (a Python frame a record was a tenth of
        the consumer thread's time), `send` only for one the queue or the client refuses."""
        produce = self.client.produce
        for key, value in records:
            try:
                produce(topic, value, key)
            except (BufferError, KafkaException):
                self.send(topic, value, key)  # waits for room, or records the failure

    def prepare(self, topic: str, timeout_s: float) -> None:
        try:
            self.client.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:  # the first send waits and reports it
            log.debug("no metadata for %s yet: %s", topic, exc)

    def flush(self) -> list[Exception]:
        left = self.client.flush()  # serves the delivery callbacks; bounded by message.timeout
        failures, self._failures = self._failures, []
        if left:
            failures.append(TimeoutError(f"{left} records still unacknowledged after flush"))
        return failures

    def close(self) -> None:
        self.client.flush()
