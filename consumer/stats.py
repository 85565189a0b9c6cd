"""What `engage stats` reports: counters from Redis, lag = Kafka end offsets vs Redis offsets."""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition
from redis.cluster import RedisCluster

from consumer.store import stored_offsets
from engage import kafka_clients
from engage.redis_client import connect
from engage.settings import Settings
from features import keys


def collect_stats(settings: Settings) -> dict[str, Any]:
    client = connect(settings)
    counters = {
        k.decode(): int(v) for k, v in client.hgetall(keys.stats_key(settings.events_topic)).items()
    }
    partitions: list[dict[str, int]] = []
    try:
        kafka = kafka_clients.consumer(settings)
        found = kafka.partitions_for_topic(settings.events_topic) or set()
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(found)]
        ends = kafka.end_offsets(tps) if tps else {}
        kafka.close()
    except Exception:
        tps, ends = [], {}
    parts = [tp.partition for tp in tps]
    if isinstance(client, RedisCluster):  # offsets of many slots: no one MGET reads them all
        applied = {p: stored_offsets(client, settings.events_topic, [p])[p] for p in parts}
    else:
        applied = stored_offsets(client, settings.events_topic, parts)
    for tp in tps:
        end = ends.get(tp, 0)
        partitions.append({"partition": tp.partition, "applied": applied[tp.partition], "end": end,
                           "lag": max(0, end - applied[tp.partition] - 1)})  # fmt: skip
    return {
        "topic": settings.events_topic,
        "processed": counters.get("processed", 0),
        "dead_lettered": counters.get("dead_lettered", 0),
        "users": client.zcard(keys.leaderboard_key("rule")),
        "partitions": partitions,
        "total_lag": sum(p["lag"] for p in partitions),
    }
