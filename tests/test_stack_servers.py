"""The real Kafka and Redis behave as the pipeline relies on: keyed order, pipelines, MULTI/EXEC."""

from __future__ import annotations

from collections import defaultdict

import pytest

from engage.kafka_clients import admin_client, consumer, ensure_topic, producer

pytestmark = pytest.mark.stack


def test_topic_with_six_partitions_keeps_per_key_order(settings):
    assert ensure_topic(settings, settings.events_topic, partitions=6) is True
    assert ensure_topic(settings, settings.events_topic, partitions=6) is False
    admin = admin_client(settings)
    described = admin.describe_topics([settings.events_topic])[0]
    admin.close()
    assert len(described["partitions"]) == 6

    keys = [f"user-{i}" for i in range(20)]
    sent = [(k, n) for n in range(25) for k in keys]
    prod = producer(settings)
    for key, n in sent:
        prod.send(settings.events_topic, key=key.encode(), value=f"{key}|{n}".encode())
    prod.flush()
    prod.close()

    cons = consumer(settings, settings.events_topic, consumer_timeout_ms=5000)
    seen: dict[str, list[int]] = defaultdict(list)
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    for msg in cons:
        key, n = msg.value.decode().split("|")
        assert msg.key.decode() == key
        seen[key].append(int(n))
        partitions_of_key[key].add(msg.partition)
        if sum(map(len, seen.values())) == len(sent):
            break
    cons.close()
    assert sum(map(len, seen.values())) == len(sent)
    for key in keys:
        assert seen[key] == list(range(25)), f"order broken for {key}"
        assert len(partitions_of_key[key]) == 1
    assert len(set().union(*partitions_of_key.values())) > 1  # keys really spread


def test_redis_pipeline_round_trip(redis_client):
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100):
        pipe.hincrby("h", f"f{i % 10}", i)
    pipe.hgetall("h")
    results = pipe.execute()
    totals = {k.decode(): int(v) for k, v in results[-1].items()}
    assert totals == {f"f{j}": sum(i for i in range(100) if i % 10 == j) for j in range(10)}


def test_redis_multi_exec_is_atomic_and_watch_aborts(redis_client):
    import redis

    pipe = redis_client.pipeline(transaction=True)
    pipe.hset("acct", mapping={"a": 1, "b": 2})
    pipe.hincrby("acct", "a", 10)
    pipe.set("offset", 41)
    assert pipe.execute() == [2, 11, True]
    assert redis_client.hget("acct", "a") == b"11"

    # A WATCHed key changed by someone else makes EXEC fail: nothing of the transaction lands.
    with redis_client.pipeline(transaction=True) as watched:
        watched.watch("offset")
        redis_client.set("offset", 42)
        watched.multi()
        watched.hincrby("acct", "a", 1000)
        with pytest.raises(redis.WatchError):
            watched.execute()
    assert redis_client.hget("acct", "a") == b"11"
