"""Key -> partition with the Java client's murmur2 rule, cached per key.

kafka-python hashes every key in pure Python (a few microseconds per message); a replay has
few distinct users and millions of messages, so remembering the answer per key is the
largest single saving in the send loop. Same mapping as the default partitioner, so other
clients keyed by user id agree on where a user's events live.
"""

from __future__ import annotations

from kafka.partitioner import DefaultPartitioner

MAX_CACHED_KEYS = 1_000_000


class CachedKeyPartitioner(DefaultPartitioner):
    def __init__(self) -> None:
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):  # type: ignore[override]
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        slot = (topic, serialized_key, len(partitions) if partitions else 0)
        found = self._cache.get(slot)
        if found is None:
            found = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            self._cache[slot] = found
        return found
