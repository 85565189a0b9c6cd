"""A user's recent scores, read back from the scores topic for the dashboard's timeline.

The consumer keeps only each user's current score in Redis, but it writes every score to the
scores topic keyed by user id (murmur2, as the Java client), so one partition holds all of a
user's score messages. Reading the newest `api_history_scan_messages` of that one partition
bounds the cost of a look-up whatever the topic's length; older scores are out of reach.
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaConfigurationError, KafkaError

from engage import kafka_clients
from engage.partitioning import positive_murmur2
from engage.settings import Settings
from scoring.score_record import NotAScore, decode_message

#: Bytes fetched per partition and request: a few round trips cover the whole scan.
FETCH_BYTES = 4 * 1024 * 1024


class KafkaUnavailable(RuntimeError):
    """Kafka did not answer in time: the history cannot be read now."""


def key_partition(key: bytes, partitions: set[int]) -> int:
    """The partition the default (murmur2) partitioner sends `key` to, as the consumer's
    producer does (engage.partitioning.CachedKeyPartitioner)."""
    ordered = sorted(partitions)
    return ordered[positive_murmur2(key) % len(ordered)]


def _point(value: bytes) -> dict[str, Any] | None:
    """A timeline point from one score message; None for a message that is not one (or
    lacks what a point shows: its event's time, the rule score and label)."""
    try:
        record = decode_message(value)
    except NotAScore:
        return None
    rule = record.rule
    if record.event_ts is None or rule.score is None or rule.label is None:
        return None
    return {
        "event_id": record.event_id,
        "event_ts": record.event_ts,
        "rule_score": rule.score,
        "label": rule.label,
        "propensity": None if record.model is None else record.model.propensity,
        "scored_at": record.scored_at or 0.0,
    }


def _scan(
    client: KafkaConsumer, tp: TopicPartition, key: bytes, end: int, deadline: float
) -> dict[str, dict[str, Any]]:
    """The user's points among the records before `end`, by event id (the topic is at least
    once: a redelivered score replaces its first copy, keeping the log's order)."""
    found: dict[str, dict[str, Any]] = {}
    while client.position(tp) < end:
        if time.monotonic() > deadline:
            raise KafkaUnavailable("Kafka did not return the scores topic in time")
        for record in client.poll(timeout_ms=500, max_records=5_000).get(tp, []):
            if record.offset >= end:
                break
            if record.key == key and record.value is not None:
                point = _point(record.value)
                if point is not None:
                    found.pop(point["event_id"], None)
                    found[point["event_id"]] = point
    return found


def recent_scores(settings: Settings, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The user's last `limit` scores (oldest first) among the newest scanned messages of
    their scores-topic partition; [] when the topic does not exist yet."""
    timeout_s = settings.api_history_timeout_s
    deadline = time.monotonic() + timeout_s
    try:
        client = kafka_clients.consumer(
            settings, bootstrap_timeout_ms=int(timeout_s * 1000),
            max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=FETCH_BYTES,
        )  # fmt: skip
    except KafkaConfigurationError:
        raise  # a bug here, not an outage
    except KafkaError as exc:
        raise KafkaUnavailable(f"Kafka is unavailable: {type(exc).__name__}") from exc
    try:
        partitions = client.partitions_for_topic(settings.scores_topic)
        if not partitions:
            return []
        key = user_id.encode()
        tp = TopicPartition(settings.scores_topic, key_partition(key, partitions))
        client.assign([tp])
        end = client.end_offsets([tp])[tp]
        begin = client.beginning_offsets([tp])[tp]
        client.seek(tp, max(begin, end - settings.api_history_scan_messages))
        points = list(_scan(client, tp, key, end, deadline).values())
    except KafkaError as exc:
        raise KafkaUnavailable(f"Kafka is unavailable: {type(exc).__name__}") from exc
    finally:
        client.close()
    return points[-limit:]
