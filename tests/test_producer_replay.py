"""Replays against the real broker and Redis: whole, valid, per-user ordered, metadata written."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from kafka.admin import NewTopic

from engage.kafka_clients import admin_client, consumer
from engage.settings import Settings
from features.events import decode_event
from features.items import ItemMeta
from features.keys import item_meta_key
from producer import movielens, synthetic
from producer.pacing import Speed
from producer.replay import ReplayOptions, replay
from producer.synthetic import SyntheticConfig
from tests.test_producer_movielens import write_fixture

pytestmark = pytest.mark.stack


def consume_all(settings: Settings, expected: int, timeout_s: float = 30.0) -> list:
    """Every record of the events topic (stops once `expected` arrived or at the timeout)."""
    client = consumer(settings, settings.events_topic, group_id=None, consumer_timeout_ms=1000)
    records, deadline = [], time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in client.poll(timeout_ms=500, max_records=5000).values():
                records.extend(batch)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        for batch in client.poll(timeout_ms=500).values():
            records.extend(batch)
    finally:
        client.close()
    return records


def test_synthetic_replay_is_consumed_back_whole_and_ordered(settings: Settings) -> None:
    config = SyntheticConfig(users=400, days=7, seed=21)
    expected = {e.event_id: e.to_json() for e in synthetic.events(config)}
    assert 2000 < len(expected) < 20_000
    summary = replay(synthetic.events(config), settings, ReplayOptions(progress=False))
    assert (summary.sent, summary.failed, summary.skipped) == (len(expected), 0, 0)
    assert summary.topic_created and summary.rate > 0

    records = consume_all(settings, len(expected))
    assert len(records) == len(expected)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    last_ts: dict[tuple[int, str], int] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = decode_event(record.value)
        assert record.key == event.user_id.encode()
        assert record.value == expected[event.event_id]
        partitions_of[event.user_id].add(record.partition)
        slot = (record.partition, event.user_id)
        assert event.ts >= last_ts.get(slot, 0), f"{event.user_id} went back in time"
        last_ts[slot] = event.ts
    assert {r.value for r in records} == set(expected.values())
    assert all(len(p) == 1 for p in partitions_of.values())
    assert len({r.partition for r in records}) == settings.partitions


def test_movielens_replay_writes_item_metadata(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    data = movielens.load_folder(write_fixture(tmp_path / "ml"))
    options = ReplayOptions(items=data.items, bad_rows=data.bad_rows.count, progress=False)
    summary = replay(data.events(), settings, options)
    assert (summary.sent, summary.failed, summary.items_written, summary.bad_rows) == (6, 0, 3, 9)
    assert ItemMeta.from_hash(redis_client.hgetall(item_meta_key("10"))) == ItemMeta(
        ("Action", "Adventure", "Thriller"), 1995
    )
    assert redis_client.hgetall(item_meta_key("30")) == {b"genres": b"", b"year": b""}
    records = consume_all(settings, 6)
    assert sorted(decode_event(r.value).event_id for r in records) == sorted(
        e.event_id for e in data.events()
    )


def test_limit_and_event_time_window(settings: Settings) -> None:
    config = SyntheticConfig(users=100, days=4, seed=4)
    events = list(synthetic.events(config))
    since, until = events[100].ts, events[-100].ts
    inside = [e for e in events if since <= e.ts < until]
    assert len(inside) > 100
    options = ReplayOptions(since_ms=since, until_ms=until, limit=50, progress=False)
    summary = replay(events, settings, options)
    assert summary.sent == 50 and summary.failed == 0
    assert summary.skipped == sum(1 for e in events[: events.index(inside[50])] if e.ts < since)
    records = consume_all(settings, 50, timeout_s=15)
    assert sorted(r.value for r in records) == sorted(e.to_json() for e in inside[:50])


def test_undeliverable_events_are_counted(settings: Settings) -> None:
    """The broker rejects records over the topic's max.message.bytes: errbacks count them."""
    admin = admin_client(settings)
    try:
        admin.create_topics(
            [
                NewTopic(
                    settings.events_topic,
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": "64"},
                )
            ]
        )
    finally:
        admin.close()
    events = list(synthetic.events(SyntheticConfig(users=5, days=2, seed=1)))[:20]
    summary = replay(events, settings, ReplayOptions(progress=False))
    assert summary.failed == 20 and summary.sent == 0 and not summary.ok
    assert summary.errors and "MessageSizeTooLarge" in summary.errors[0]


def test_paced_replay_sleeps_the_scaled_gaps(settings: Settings) -> None:
    """--speed N through the real send loop, timed by a fake clock (no wall-clock waits)."""
    from tests.test_producer_pacing import FakeClock

    events = list(synthetic.events(SyntheticConfig(users=20, days=2, seed=9)))[:200]
    clock = FakeClock()
    options = ReplayOptions(speed=Speed(500.0), progress=False)
    summary = replay(events, settings, options, clock=clock)
    assert summary.sent == 200 and summary.failed == 0
    span_s = (events[-1].ts - events[0].ts) / 1000
    assert sum(clock.sleeps) == pytest.approx(span_s / 500)
