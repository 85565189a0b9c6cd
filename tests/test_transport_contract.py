"""The Kafka seam (engage/transport) keeps one contract over both clients, on the real broker:
records come back with their attributes, assignment callbacks position partitions, seeks and
pauses do what the runner relies on, keys land where kafka-python puts them, a failed
delivery comes back from flush() (and stops a consumer's batch from committing), and the
security settings reach both clients (a SASL/SCRAM broker).

Every test runs once per client; the confluent runs need `pip install 'engage[fast]'` (a skip
outside CI, a failure in CI, where `.[dev]` installs it).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import redis
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from consumer.runner import OutputRefused, StreamConsumer
from engage import kafka_clients, transport
from engage.settings import Settings
from engage.transport.packed import PackedRecords
from features import keys
from tests import test_security
from tests.eventlog import make_log, publish_log

PARTITIONS = 3
N = 240


@pytest.fixture
def own(settings: Settings, kafka_client: str) -> Settings:
    """The test's settings with this client and a fresh 3-partition topic."""
    own = settings.model_copy(update={"kafka_client": kafka_client, "partitions": PARTITIONS})
    kafka_clients.ensure_topic(own, own.events_topic)
    return own


def partition_of(key: bytes) -> int:
    """Where kafka-python's (and the Java client's) default partitioner puts a key."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def key_of(i: int) -> bytes:
    return f"user:{i % 17}".encode()


def produce(settings: Settings, n: int = N) -> dict[int, int]:
    """`n` records through the seam's producer, all confirmed; records per partition."""
    out = transport.producer(settings, linger_ms=5)
    for i in range(n):
        out.send(settings.events_topic, f"v{i}".encode(), key_of(i), [("i", str(i).encode())])
    assert out.flush() == []
    out.close()
    return Counter(partition_of(key_of(i)) for i in range(n))


class Member:
    """A seam consumer used as the runner uses it: `next` holds each partition's next offset
    (the runner keeps it in Redis; None: the beginning) and every assignment seeks there, so
    a rebalance at any moment (kafka-python may rejoin right after its first join) changes
    nothing. `applied` takes each partition's records in order; one re-delivered below `next`
    is skipped (as the runner skips what Redis says is applied), a gap fails the test."""

    def __init__(self, settings: Settings, start: dict[int, int | None] | None = None):
        self.kafka = transport.consumer(settings, f"contract-{settings.events_topic}")
        self.next: dict[int, int | None] = dict.fromkeys(range(PARTITIONS)) | (start or {})
        self.parked = False  # pause the partitions at assignment (Redis down; the bench gate)
        self.assigned: list[list[int]] = []
        self.revoked: list[list[int]] = []
        self.applied: list = []
        self.kafka.subscribe(settings.events_topic, self.on_assign, self.revoked.append)

    def on_assign(self, partitions: list[int]) -> None:
        self.assigned.append(sorted(partitions))
        for p in partitions:
            self.seek(p, self.next[p])
        if self.parked:
            self.kafka.pause(*partitions)

    def seek(self, partition: int, offset: int | None) -> None:
        self.next[partition] = offset
        if offset is None:
            self.kafka.seek_to_beginning(partition)
        else:
            self.kafka.seek(partition, offset)

    def take(self, records: list) -> None:
        for r in records:
            expected = self.next[r.partition]
            if expected is not None and r.offset < expected:
                continue
            assert r.offset == (expected or 0), (
                f"partition {r.partition}: {r.offset} after a seek to {expected}"
            )
            self.applied.append(r)
            self.next[r.partition] = r.offset + 1

    def poll_until(self, done: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"{len(self.applied)} records: {self.assigned}"
            self.take(self.kafka.poll(timeout_ms=200, max_records=50))

    def poll_for(self, seconds: float) -> list:
        """Poll without taking anything (as the runner does while it waits for Redis)."""
        records: list = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            records += self.kafka.poll(timeout_ms=100)
        return records

    def offsets(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        for r in self.applied:
            out[r.partition].append(r.offset)
        return out


@pytest.mark.stack
def test_records_round_trip_with_assignment_callbacks(own: Settings) -> None:
    counts = produce(own)
    member = Member(own)
    started_ms = time.time() * 1000
    try:
        member.poll_until(lambda: len(member.applied) >= N)
        assert member.assigned[-1] == list(range(PARTITIONS))
        assert member.kafka.assignment() == set(range(PARTITIONS))
        for r in member.applied:
            i = int(r.value.decode()[1:])
            assert r.topic == own.events_topic and r.key == key_of(i)
            assert r.partition == partition_of(r.key)  # the same partitioner for both clients
            assert list(r.headers) == [("i", str(i).encode())]
            assert started_ms - 120_000 < r.timestamp < time.time() * 1000 + 1000
        assert member.offsets() == {p: list(range(counts[p])) for p in range(PARTITIONS)}
        for p in range(PARTITIONS):
            assert member.kafka.position(p) == member.kafka.highwater(p) == counts[p]
    finally:
        member.kafka.close()


def as_form(records: list[tuple[bytes, bytes]], form: str) -> Sequence[tuple[bytes, bytes]]:
    if form == "pairs":
        return records
    ends = np.cumsum([len(v) for _, v in records])  # the compiled writer's buffer
    values = b"".join(v for _, v in records)
    if form == "coded":  # each distinct key once, a code a record (a score batch's users)
        distinct = list(dict.fromkeys(k for k, _ in records))
        codes = np.array([distinct.index(k) for k, _ in records])
        return PackedRecords.coded(distinct, codes, values, ends)
    return PackedRecords([k for k, _ in records], values, ends)


@pytest.mark.stack
@pytest.mark.parametrize("form", ["pairs", "packed", "coded"])
def test_batches_of_records_round_trip_in_order(own: Settings, form: str) -> None:
    """`send_batch` (kafka-python: written into its producer batches in one pass) delivers
    every record once, where the partitioner puts its key, in order per partition, also when
    the records span many producer batches and `send` is mixed in between; given as pairs or
    packed in one buffer (`PackedRecords`, framed by the compiled kernel), with coded keys."""
    out = transport.producer(own, linger_ms=5, batch_bytes=16 * 1024)
    values = [f"{i:06d}".encode() + os.urandom(150 + i % 300) for i in range(3000)]
    sent = [(key_of(i), v) for i, v in enumerate(values)]
    started_ms = time.time() * 1000
    out.send_batch(own.events_topic, as_form(sent[:1000], form))
    for key, value in sent[1000:1010]:
        out.send(own.events_topic, value, key)
    out.send_batch(own.events_topic, as_form(sent[1010:], form))
    assert out.flush() == []
    out.close()
    member = Member(own)
    try:
        member.poll_until(lambda: len(member.applied) >= len(sent))
        got = {p: [(r.key, r.value) for r in member.applied if r.partition == p]
               for p in range(PARTITIONS)}  # fmt: skip
        want = {p: [kv for kv in sent if partition_of(kv[0]) == p] for p in range(PARTITIONS)}
        assert got == want
        assert all(started_ms - 60_000 < r.timestamp < time.time() * 1000 + 1000
                   for r in member.applied)  # fmt: skip
    finally:
        member.kafka.close()


@pytest.mark.stack
def test_seeks_at_assignment_and_after(own: Settings) -> None:
    counts = produce(own)
    member = Member(own, start={0: 5, 1: None, 2: counts[2]})  # an offset, the start, the end
    try:
        member.poll_until(lambda: len(member.applied) >= counts[0] - 5 + counts[1])
        assert member.offsets() == {0: list(range(5, counts[0])), 1: list(range(counts[1])), 2: []}
        assert member.kafka.position(2) == counts[2]
        member.applied.clear()
        member.seek(0, 2)  # back: what the event-time merge does to trim its buffers
        assert member.kafka.position(0) == 2
        member.poll_until(lambda: len(member.applied) >= counts[0] - 2)
        assert member.offsets() == {0: list(range(2, counts[0])), 1: [], 2: []}
        assert member.kafka.position(0) == member.kafka.highwater(0) == counts[0]
    finally:
        member.kafka.close()


@pytest.mark.stack
def test_pause_at_assignment_and_resume_after_a_seek(own: Settings) -> None:
    """As the runner does: partitions parked at assignment (Redis down; the bench's gate), and
    a pause mid-stream that ends with a seek to the last applied offset + 1 and a resume."""
    counts = produce(own)
    member = Member(own)
    member.parked = True
    try:
        member.poll_until(lambda: bool(member.assigned))
        assert member.poll_for(2.0) == []
        assert member.kafka.paused() == set(range(PARTITIONS))
        member.parked = False
        member.kafka.resume(*member.kafka.paused())
        assert member.kafka.paused() == set()
        member.poll_until(lambda: len(member.applied) >= N // 3)
        member.kafka.pause(*member.kafka.assignment())
        member.poll_for(1.0)  # whatever comes while paused is dropped, as _poll_paused does
        for p in member.kafka.assignment():
            member.seek(p, member.next[p])
        member.kafka.resume(*member.kafka.paused())
        member.poll_until(lambda: len(member.applied) >= N)
        assert member.offsets() == {p: list(range(counts[p])) for p in range(PARTITIONS)}
    finally:
        member.kafka.close()


def small_topic(settings: Settings, name: str, max_bytes: int) -> None:
    admin = kafka_clients.admin_client(settings)
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs={"max.message.bytes": max_bytes})])
    finally:
        admin.close()


@pytest.mark.stack
def test_a_refused_delivery_comes_back_from_flush(own: Settings) -> None:
    topic = f"{own.events_topic}.small"
    small_topic(own, topic, 1024)
    out = transport.producer(own, linger_ms=5)
    try:
        out.send(topic, os.urandom(8192), b"k")  # random: lz4 cannot shrink it under the limit
        failures = out.flush()
        assert len(failures) == 1 and isinstance(failures[0], Exception)
        assert "toolarge" in str(failures[0]).lower().replace(" ", "").replace("_", "")
        assert out.flush() == []  # reported once
        # (Not asserted: later sends to that partition. kafka-python 3.0.12 fails them all
        # with the same error; librdkafka delivers them.)
    finally:
        out.close()


@pytest.mark.stack
def test_prepare_learns_a_topic_before_the_first_send(own: Settings) -> None:
    """A starting consumer asks for its scores topic's metadata (`Producer.prepare`), so its
    first batch's send does not wait for it."""
    out = transport.producer(own, linger_ms=5)
    try:
        out.prepare(own.events_topic, 10.0)
        if own.kafka_client == "confluent":
            known = out.client.list_topics(own.events_topic, timeout=10.0)  # type: ignore[attr-defined]
            assert len(known.topics[own.events_topic].partitions) == PARTITIONS
        else:  # asked and answered: the producer's own metadata has the topic
            metadata = out.client._metadata  # type: ignore[attr-defined]
            assert metadata.partitions_for_topic(own.events_topic) == set(range(PARTITIONS))
        out.send(own.events_topic, b"v", b"k")
        assert out.flush() == []
    finally:
        out.close()


def retriable_failure(settings: Settings) -> Exception:
    """A delivery failure that may pass when sent again, as this client reports it."""
    if settings.kafka_client == "confluent":
        from confluent_kafka import KafkaError, KafkaException

        cause: Exception = KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
    else:
        from kafka.errors import NotLeaderForPartitionError

        cause = NotLeaderForPartitionError()
    return transport.DeliveryFailed(settings.scores_topic, cause)


def nothing_committed(settings: Settings) -> bool:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        offsets = client.keys(keys.offset_key(settings.events_topic, 0).removesuffix("0") + "*")
        return client.hgetall(keys.stats_key(settings.events_topic)) == {} and not offsets
    finally:
        client.close()


@pytest.mark.stack
@pytest.mark.parametrize("failure", ["retriable", "permanent"])
def test_a_failed_score_delivery_never_commits_the_batch(
    own: Settings, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner sees a failed flush as OutputFailed: no state, no offsets. A failure that
    may pass (here: not the leader, twice) is retried until the batch commits; a permanent
    refusal (every score message larger than the topic's max.message.bytes) stops the
    consumer with OutputRefused naming the topic and the cause, nothing committed."""
    if failure == "permanent":
        small_topic(own, own.scores_topic, 64)  # every score message is larger
    events, genres = make_log(n_users=4, events_per_user=10)
    publish_log(own, events, genres)
    consumer = StreamConsumer(own, group=f"fail-{own.events_topic}")
    caplog.set_level(logging.WARNING, logger="engage.consumer")
    flushes: list[bool] = []  # per failed flush: whether nothing was committed at that point
    real_flush = consumer.out.flush

    def flush() -> list[Exception]:
        failed = real_flush()
        if failure == "retriable" and len(flushes) < 2:
            flushes.append(nothing_committed(own))
            failed = [*failed, retriable_failure(own)]
        return failed

    consumer.out.flush = flush  # type: ignore[method-assign]
    batches: list[object] = []

    def stop_after(seconds: float) -> None:  # a consumer that never ends fails, not hangs
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not consumer.stopping:
            time.sleep(0.1)
        consumer.stopping = True

    threading.Thread(target=stop_after, args=(90,), daemon=True).start()
    retried = lambda: [r.getMessage() for r in caplog.records if "OutputFailed" in r.getMessage()]  # noqa: E731
    if failure == "permanent":
        with pytest.raises(OutputRefused) as refused:
            consumer.run(on_batch=batches.append)
        assert refused.value.topic == own.scores_topic
        assert "too large" in str(refused.value) and own.scores_topic in str(refused.value)
        assert not consumer.stopping, "the consumer retried a permanent refusal until stopped"
        assert not retried(), "a permanent refusal was retried"
        # No batch landed (on_batch may have seen the loop hand the batch to the committing
        # thread: its acknowledgement is awaited there, and failed).
        assert all(summary.batches == 0 for summary in batches)  # type: ignore[attr-defined]
        assert nothing_committed(own)
        return
    summary = consumer.run(idle_exit_s=5, max_events=len(events), on_batch=batches.append)
    consumer.stopping = True
    assert flushes == [True, True], "a batch committed after a failed delivery"
    assert len(retried()) >= 2, "the failed delivery never surfaced"
    assert summary.processed == len(events), "the retried batch never committed"
    assert not nothing_committed(own)


# The private broker whose only listener is SASL_PLAINTEXT (SCRAM-SHA-512), as test_security's.
sasl_kafka = test_security.sasl_kafka


@pytest.mark.stack
def test_sasl_round_trip_through_the_seam(kafka_client: str, sasl_kafka: Settings) -> None:
    """The security settings reach either client (librdkafka's names for confluent)."""
    own = sasl_kafka.model_copy(
        update={"kafka_client": kafka_client, "events_topic": f"sasl.seam.{kafka_client}"}
    )
    kafka_clients.ensure_topic(own, own.events_topic, partitions=PARTITIONS)
    counts = produce(own, n=30)
    member = Member(own)
    try:
        member.poll_until(lambda: len(member.applied) >= 30)
        assert member.offsets() == {p: list(range(counts[p])) for p in range(PARTITIONS)}
    finally:
        member.kafka.close()


# -- without a broker ---------------------------------------------------------------------------


def test_security_settings_map_to_librdkafka_names() -> None:
    s = Settings(
        _env_file=None,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="engage",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile="/ca.pem",
        kafka_ssl_certfile="/cert.pem",
        kafka_ssl_keyfile="/key.pem",
    )
    assert kafka_clients.librdkafka_security(s) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "engage",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/cert.pem",
        "ssl.key.location": "/key.pem",
    }
    assert kafka_clients.librdkafka_security(Settings(_env_file=None)) == {}


def test_a_missing_confluent_kafka_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails as if missing
    monkeypatch.delitem(sys.modules, "engage.transport.confluent", raising=False)
    monkeypatch.delattr(transport, "confluent", raising=False)
    with pytest.raises(transport.TransportUnavailable, match=r"pip install 'engage\[fast\]'"):
        transport.consumer(Settings.model_construct(kafka_client="confluent"), "g")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"pip install 'engage\[fast\]'"):
        Settings(_env_file=None, kafka_client="confluent")
