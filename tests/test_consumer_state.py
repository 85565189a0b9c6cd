"""The consumer's Redis state equals an independent reference, and bad input is dead-lettered."""

from __future__ import annotations

import pytest

from consumer.deadletter import reason_of
from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.redis_client import connect
from features.state_codec import decode_user, encode_user
from tests.eventlog import make_log, publish_log
from tests.reference import diff_against_redis, reference_state

pytestmark = pytest.mark.stack


def run_consumer(settings, group: str = "g1") -> object:
    return StreamConsumer(settings, group=group).run(idle_exit_s=3.0)


def test_state_equals_reference(settings, redis_client):
    events, genres = make_log()
    publish_log(settings, events, genres)
    summary = run_consumer(settings)
    assert summary.processed == len(events) and summary.dead_lettered == 0
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, redis_client) == []
    # A second consumer in the same group finds nothing new: offsets live in Redis.
    again = run_consumer(settings, group="g2-other-group")
    assert again.processed == 0
    assert diff_against_redis(ref, redis_client) == []


def test_reference_comparison_catches_a_wrong_count(settings, redis_client):
    events, genres = make_log(n_users=4, events_per_user=10)
    publish_log(settings, events, genres)
    run_consumer(settings)
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    state = decode_user(redis_client.hgetall("u:{user0}"))
    state["n"] = float(state["n"]) + 1
    redis_client.hset("u:{user0}", mapping=encode_user(state))
    assert any("user user0 n" in line for line in diff_against_redis(ref, redis_client))


BAD = [
    (b"u1", b"not json at all", "Invalid JSON"),
    (
        b"u1",
        b'{"event_id":"x","user_id":"u1","ts":1700000000000,"event_type":"teleport","source":"t"}',
        "event_type",
    ),
    (
        b"u1",
        b'{"event_id":"x","user_id":"u1","ts":1700000000000,"event_type":"rating","source":"t"}',
        "value",
    ),
    (b"u1", b'{"user_id":"u1","ts":1700000000000,"event_type":"tag","source":"t"}', "event_id"),
    (b"u1", b"\xff\xfe\x00garbage", "Invalid JSON"),
    (b"u1", b'{"event_id":"' + b"x" * 70_000 + b'"}', "oversized"),
    (b"u1", b'{"event_id":"x","user_id":"u1","ts":1,"event_type":"tag","source":"t"}', "ts"),
]


def test_bad_messages_are_dead_lettered_with_reason(settings, redis_client):
    events, genres = make_log(n_users=8, events_per_user=20)
    produced = publish_log(settings, events, genres, extra=[(k, v) for k, v, _ in BAD])
    summary = run_consumer(settings)
    assert summary.processed == len(events)
    assert summary.dead_lettered == len(BAD)
    assert summary.processed + summary.dead_lettered == produced
    stats = {k.decode(): int(v) for k, v in redis_client.hgetall(
        f"engage:stats:{settings.events_topic}").items()}  # fmt: skip
    assert stats == {"processed": len(events), "dead_lettered": len(BAD)}

    dlq = kafka_clients.consumer(settings, settings.dead_letter_topic, consumer_timeout_ms=5000)
    letters = []
    for msg in dlq:
        letters.append((msg.value, reason_of(msg.headers)))
        if len(letters) == len(BAD):
            break
    dlq.close()
    assert len(letters) == len(BAD)
    by_value = {value: meta for value, meta in letters}
    for _key, value, expected in BAD:
        meta = by_value[value]  # the original bytes, unchanged
        assert expected in meta["reason"], meta
        assert meta["source_topic"] == settings.events_topic
        assert int(meta["source_offset"]) >= 0 and meta["source_partition"].isdigit()
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, connect(settings)) == []
