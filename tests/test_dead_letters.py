"""Dead letters always fit, and their at-least-once copies can be told apart.

- A message larger than the output producer's request limit (a 2 MB message on a topic that
  allows 4 MB) used to fail its batch's flush for ever: the dead letter must go out cut to fit,
  with the original's length and SHA-256, while every good event around it is applied.
- A crash after a batch's dead letters are acknowledged and before its Redis commit sends them
  again on replay: a reader deduplicates them by their source headers (`first_copies`).

The end-to-end tests run once per Kafka client, against the real Kafka and Redis.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.admin import NewTopic

from consumer.deadletter import (
    KEY_MAX_BYTES,
    REASON_CUT,
    REASON_MAX_BYTES,
    DeadLetter,
    first_copies,
    reason_of,
    source_of,
)
from consumer.runner import RunSummary, StreamConsumer
from engage import kafka_clients
from engage.redis_client import connect
from engage.settings import Settings
from features import keys
from features.events import Event
from features.items import ItemMeta
from tests.eventlog import engage_env, make_log
from tests.reference import diff_against_redis, reference_state

TOPIC_MAX_BYTES = 4 * 1024 * 1024
LIMIT = DeadLetter("r", "t", 0, 0, None, None).max_bytes


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


# -- the letter itself ------------------------------------------------------------------------
def test_a_letter_that_fits_is_sent_unchanged() -> None:
    value = b"x" * 65_000
    d = DeadLetter("Invalid JSON", "events", 3, 17, b"user:1", value)
    assert (d.key, d.value, d.reason) == (b"user:1", value, "Invalid JSON")
    assert [k for k, _ in d.headers()] == [
        "reason",
        "source_topic",
        "source_partition",
        "source_offset",
    ]
    assert source_of(d.headers()) == ("events", 3, 17)


def test_a_value_that_exactly_fills_the_limit_is_kept_and_one_byte_more_is_cut() -> None:
    probe = DeadLetter("oversized message", "events", 0, 5, b"k", b"")
    room = LIMIT - probe.size()
    exact = DeadLetter("oversized message", "events", 0, 5, b"k", b"v" * room)
    assert exact.value == b"v" * room and exact.size() == LIMIT
    over = DeadLetter("oversized message", "events", 0, 5, b"k", b"v" * (room + 1))
    meta = reason_of(over.headers())
    assert meta["original_length"] == str(room + 1)
    assert len(over.value) < room and over.size() <= LIMIT


def test_an_oversized_value_goes_out_as_a_prefix_with_its_length_and_sha256() -> None:
    big = random.Random(1).randbytes(2_000_000)
    d = DeadLetter("oversized message: 2000000 bytes > 65536", "events", 1, 9, b"u", big)
    meta = reason_of(d.headers())
    assert meta["reason"] == "oversized message: 2000000 bytes > 65536"
    assert meta["original_length"] == "2000000"
    assert meta["original_sha256"] == sha256(big)
    assert big.startswith(d.value) and LIMIT - 1000 < len(d.value) < LIMIT
    assert d.size() <= LIMIT
    # Under a smaller limit, and with a reason that did not say so: the reason says oversized.
    small = DeadLetter("duplicate: seen", "events", 1, 9, b"u", big, max_bytes=20_000)
    assert small.reason == "oversized: duplicate: seen"
    assert small.size() <= 20_000 and big.startswith(small.value) and len(small.value) > 19_000


def test_a_huge_key_and_a_huge_reason_are_cut_and_say_so() -> None:
    key = b"k" * 2_000_000
    # 9 ASCII bytes, then 2-byte characters: the cut falls inside one
    reason = "context.x" + "\u00e9" * 30_000 + ": String should have at most 64 characters"
    d = DeadLetter(reason, "events", 2, 4, key, b"{}")
    meta = reason_of(d.headers())
    assert d.key == key[:KEY_MAX_BYTES]
    assert meta["original_key_length"] == str(len(key))
    assert meta["original_key_sha256"] == sha256(key)
    assert d.value == b"{}" and "original_length" not in meta  # the value fitted
    encoded = d.reason.encode()  # valid UTF-8: no character cut in half
    assert len(encoded) <= REASON_MAX_BYTES and d.reason.endswith(REASON_CUT)
    assert reason.startswith(d.reason.removesuffix(REASON_CUT))
    assert d.size() <= LIMIT


def test_first_copies_keeps_one_of_each_source() -> None:
    def letter(offset: int, partition: int = 0, topic: str = "events") -> SimpleNamespace:
        d = DeadLetter("bad", topic, partition, offset, None, b"v%d" % offset)
        return SimpleNamespace(headers=d.headers(), value=d.value)

    read = [letter(1), letter(2), letter(1), letter(1, partition=1), letter(1, topic="other")]
    read += [letter(2), letter(3)]
    kept = list(first_copies(read))
    assert [source_of(m.headers) for m in kept] == [
        ("events", 0, 1),
        ("events", 0, 2),
        ("events", 1, 1),
        ("other", 0, 1),
        ("events", 0, 3),
    ]
    assert kept[0] is read[0]  # the first copy read
    # confluent-kafka's messages have a headers() method
    methods = [SimpleNamespace(headers=lambda m=m: m.headers) for m in read]
    assert len(list(first_copies(methods, headers=lambda m: m.headers()))) == 5


# -- end to end -------------------------------------------------------------------------------
def encoded(event: dict) -> tuple[bytes, bytes]:
    return event["user_id"].encode(), Event(**event).to_json()


def by_user(events: list[dict]) -> dict[str, list[dict]]:
    users: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        users[e["user_id"]].append(e)
    return users


def publish(
    settings: Settings, messages: list[tuple[bytes, bytes]], genres: dict, **producer: object
) -> None:
    """Item metadata to Redis; the messages to the events topic, in this order."""
    redis_client = connect(settings)
    for item, gs in genres.items():
        redis_client.hset(keys.item_meta_key(item), mapping=ItemMeta(tuple(gs)).to_hash())
    kafka_clients.ensure_topic(settings, settings.events_topic)
    out = kafka_clients.producer(settings, **producer)
    for key, value in messages:
        out.send(settings.events_topic, key=key, value=value)
    out.flush()
    out.close()


def read_dead_letters(settings: Settings) -> list:
    """Everything in the dead-letter topic (until 5 s without a message)."""
    dlq = kafka_clients.consumer(settings, settings.dead_letter_topic, consumer_timeout_ms=5000)
    try:
        return list(dlq)
    finally:
        dlq.close()


def consume_to_the_end(settings: Settings, group: str, timeout_s: float = 180.0) -> RunSummary:
    """Run a consumer until idle for 3 s; fail (not hang) if it never gets there."""
    consumer = StreamConsumer(settings, group=group)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = consumer.run(idle_exit_s=3.0)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        consumer.stopping = True
        thread.join(30)
        pytest.fail(f"the consumer was still busy after {timeout_s:.0f}s: a stalled batch?")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["summary"]  # type: ignore[return-value]


def stats(settings: Settings) -> dict[str, int]:
    raw = connect(settings).hgetall(keys.stats_key(settings.events_topic))
    return {k.decode(): int(v) for k, v in raw.items()}


@pytest.mark.stack
def test_a_2mb_message_on_a_4mb_topic_is_dead_lettered_cut_and_nothing_stalls(
    settings: Settings, kafka_client: str
) -> None:
    # A cap below the default: the consumer must take it from the settings.
    own = settings.model_copy(
        update={"kafka_client": kafka_client, "dead_letter_max_bytes": 600_000}
    )
    admin = kafka_clients.admin_client(own)
    try:
        config = {"max.message.bytes": str(TOPIC_MAX_BYTES)}
        admin.create_topics([NewTopic(own.events_topic, own.partitions, 1, topic_configs=config)])
    finally:
        admin.close()
    events, genres = make_log(n_users=12, events_per_user=20, seed=3)
    users = by_user(events)
    big = random.Random(2).randbytes(2 * 1024 * 1024)
    huge_key = random.Random(3).randbytes(1_500_000)
    long_field = b'{"event_id":"e","user_id":"u","ts":1700000000000,"event_type":"tag",' + (
        b'"source":"t","context":{"' + b"k" * 5000 + b'":1}}'
    )
    bad = [(b"user0", big), (huge_key, b"not json"), (b"user4", long_field)]
    messages = [encoded(e) for evs in users.values() for e in evs[:10]]
    messages += bad  # between good events, in their partitions
    messages += [encoded(e) for evs in users.values() for e in evs[10:]]
    publish(own, messages, genres, max_request_size=2 * TOPIC_MAX_BYTES)

    summary = consume_to_the_end(own, group=f"big-{own.events_topic}")

    assert (summary.processed, summary.dead_lettered) == (len(events), len(bad))
    assert stats(own) == {"processed": len(events), "dead_lettered": len(bad)}
    p = own.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, connect(own)) == []

    letters = read_dead_letters(own)
    assert len(letters) == len(bad)
    for m in letters:  # every letter within the bound, headers included
        size = len(m.key or b"") + len(m.value or b"")
        assert size + sum(len(k) + len(v) for k, v in m.headers) <= own.dead_letter_max_bytes
    by_key = {m.key: m for m in letters}
    cut_value, long_reason = by_key[b"user0"], by_key[b"user4"]
    cut_key = by_key[huge_key[:KEY_MAX_BYTES]]

    meta = reason_of(cut_value.headers)
    assert meta["reason"].startswith("oversized"), meta["reason"]
    assert meta["original_length"] == str(len(big))
    assert meta["original_sha256"] == sha256(big)
    cap = own.dead_letter_max_bytes
    assert big.startswith(cut_value.value) and cap - 1000 < len(cut_value.value) < cap
    assert meta["source_topic"] == own.events_topic

    meta = reason_of(cut_key.headers)
    assert cut_key.key == huge_key[:KEY_MAX_BYTES] and cut_key.value == b"not json"
    assert meta["original_key_length"] == str(len(huge_key))
    assert meta["original_key_sha256"] == sha256(huge_key)
    assert "Invalid JSON" in meta["reason"]

    meta = reason_of(long_reason.headers)
    assert long_reason.value == long_field  # the original bytes: they fit
    assert meta["reason"].startswith("context.kkk") and meta["reason"].endswith(REASON_CUT)
    assert len(meta["reason"].encode()) <= REASON_MAX_BYTES


CRASHED = 75
CRASH_SCRIPT = f'''
"""A consumer that dies between a batch's acknowledged dead letters and its Redis commit."""
import os
import sys

from consumer.runner import StreamConsumer
from consumer.store import RedisBatch
from engage.settings import get_settings

commit = RedisBatch.commit


def commit_unless_dead_letters(self, writes, learn=True, **held):
    if writes.stats.get("dead_lettered"):
        os._exit({CRASHED})  # the batch's outputs were flushed (acks=all) just before this
    commit(self, writes, learn, **held)


RedisBatch.commit = commit_unless_dead_letters
StreamConsumer(get_settings(), group=sys.argv[1]).run(idle_exit_s=float(sys.argv[2]))
'''


@pytest.mark.stack
def test_dead_letters_repeated_by_a_crash_before_the_commit_dedupe_by_source(
    settings: Settings, kafka_client: str, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"kafka_client": kafka_client})
    events, genres = make_log(n_users=24, events_per_user=30, seed=21)
    users = by_user(events)
    messages = [encoded(e) for evs in users.values() for e in evs[:20]]
    undecodable = [(uid.encode(), b"not json #%d" % i) for i, uid in enumerate(list(users)[::3])]
    messages += undecodable
    duplicates = []
    for evs in users.values():
        for n, e in enumerate(evs[20:]):
            messages.append(encoded(e))
            if n % 4 == 1:  # the same event again, right away
                messages.append(encoded(e))
                duplicates.append(encoded(e))
    publish(own, messages, genres)
    expected = Counter(undecodable + duplicates)

    script = tmp_path / "crash_after_dead_letters.py"
    script.write_text(CRASH_SCRIPT)
    # Batches of 10: every partition starts with 20 good events, so some batches commit first.
    env = engage_env(own, ENGAGE_BATCH_MAX_RECORDS="10")
    crashed = subprocess.run([sys.executable, str(script), f"crashy-{own.events_topic}", "5"],
                             env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert crashed.returncode == CRASHED, crashed.stderr[-3000:]
    # Landed between the two: earlier batches committed, the dead-lettering one did not.
    before = stats(own)
    assert 0 < before.get("processed", 0) < len(events) and before.get("dead_lettered", 0) == 0

    # A normal consumer to the end (another group: offsets live in Redis, and the dead
    # member's session need not time out first).
    summary = consume_to_the_end(own, group=f"after-{own.events_topic}")
    assert summary.processed == len(events) - before["processed"]
    assert stats(own) == {"processed": len(events), "dead_lettered": sum(expected.values())}
    p = own.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, connect(own)) == []

    letters = read_dead_letters(own)
    copies = defaultdict(list)
    for m in letters:
        copies[source_of(m.headers)].append((m.key, m.value, m.headers))
    repeated = {s: c for s, c in copies.items() if len(c) > 1}
    assert repeated, "no dead letter was sent twice: the crash did not land before the commit"
    assert all(len(c) == 2 and c[0] == c[1] for c in repeated.values()), repeated
    kept = list(first_copies(letters))
    assert len(letters) > len(kept) == sum(expected.values())
    assert Counter((m.key, m.value) for m in kept) == expected
    reasons = Counter(reason_of(m.headers)["reason"].split(":")[0] for m in kept)
    assert reasons == {"message": len(undecodable), "duplicate": len(duplicates)}, reasons
