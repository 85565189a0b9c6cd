"""engage.partitioning: the key cache is bounded and maps keys exactly as kafka-python's default
partitioner (and so the Java client) does. No Kafka needed: a stand-in for ClusterMetadata."""

from __future__ import annotations

import random
import tracemalloc

import pytest
from kafka.partitioner import DefaultPartitioner

from engage.partitioning import (
    MAX_CACHED_KEYS,
    CachedKeyPartitioner,
    positive_murmur2,
    positive_murmur2_many,
)


class Cluster:
    """The three ClusterMetadata calls the partitioners make."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        found = self.partitions.get(topic)
        return set(found) if found is not None else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.partitions.get(topic, ()))


def keys(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    out = [f"syn0-u{i}".encode() for i in range(n)]
    out += [rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]  # every tail length, empty
    out += [f"ユーザー{i}".encode() for i in range(50)]  # multi-byte UTF-8
    return out


@pytest.mark.parametrize(
    "partitions",
    [{0}, set(range(3)), set(range(6)), set(range(64)), {0, 2, 5, 9}, {3, 4, 5}],
    ids=["1", "3", "6", "64", "gaps", "no-zero"],
)
def test_same_partition_as_the_default(partitions: set[int]) -> None:
    cluster = Cluster({"events": partitions, "scores": set(range(4))})
    default, cached = DefaultPartitioner(), CachedKeyPartitioner(max_keys=100)
    for _ in range(2):  # cold (misses), then again (hits and evictions: 2,050 keys over 100)
        for key in keys(1_000):
            for topic in ("events", "scores"):
                expected = default.partition(topic, None, key, None, b"v", cluster)
                assert cached.partition(topic, None, key, None, b"v", cluster) == expected, key
    for topic in ("events", "scores"):  # a whole batch's keys with one metadata lookup
        expected = [default.partition(topic, None, k, None, b"v", cluster) for k in keys(1_000)]
        assert cached.partitions_of(topic, keys(1_000), cluster) == expected
    assert cached.partitions_of("missing", [b"k"], cluster) is None


def test_the_compiled_hash_is_murmur2() -> None:
    """The batch path's compiled murmur2 agrees with kafka-python's on every tail length,
    multi-byte text, high bytes and the empty key (and on no keys at all)."""
    batch = keys(2_000, seed=5) + [bytes([255]) * n for n in range(12)] + [b""]
    assert positive_murmur2_many(batch).tolist() == [positive_murmur2(k) for k in batch]
    assert positive_murmur2_many([]).tolist() == []


def test_partition_count_change_moves_keys_as_the_default() -> None:
    """One cached hash serves a topic whose partition count grew (the metadata changed)."""
    cached, default = CachedKeyPartitioner(), DefaultPartitioner()
    for count in (3, 6, 12):
        cluster = Cluster({"t": set(range(count))})
        for key in keys(300):
            assert cached.partition("t", None, key, None, b"v", cluster) == default.partition(
                "t", None, key, None, b"v", cluster
            )


def test_no_key_and_unknown_topic_as_the_default() -> None:
    cluster = Cluster({"t": set(range(6))})
    cached = CachedKeyPartitioner()
    assert cached.partition("t", None, None, None, b"v", cluster) in range(6)
    with pytest.raises(ValueError, match="not found"):
        cached.partition("missing", None, b"k", None, b"v", cluster)
    assert cached.cache_info().currsize == 0


def test_cache_is_bounded_lru() -> None:
    cluster = Cluster({"t": set(range(6))})
    cached = CachedKeyPartitioner(max_keys=1_000)
    hot = [f"hot{i}".encode() for i in range(100)]
    for i in range(20_000):  # a stream of new users, with a hot set seen again and again
        cached.partition("t", None, f"user{i}".encode(), None, b"v", cluster)
        cached.partition("t", None, hot[i % len(hot)], None, b"v", cluster)
    info = cached.cache_info()
    assert info.maxsize == 1_000
    assert info.currsize == 1_000
    assert info.hits >= 20_000 - len(hot)  # the hot keys stay cached (least recently used out)


def test_memory_stays_bounded_with_the_number_of_keys() -> None:
    """The default bound, not the number of keys ever seen, caps the cache's memory (the
    unbounded cache grew a long-running consumer's RSS by ~150 bytes per user)."""
    cluster = Cluster({"t": set(range(6))})
    cached = CachedKeyPartitioner()

    def send(first: int, last: int) -> int:
        for i in range(first, last):
            cached.partition("t", None, f"syn0-u{i}".encode(), None, b"v", cluster)
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        full = send(0, 2 * MAX_CACHED_KEYS)  # full, and evicting for as long again
        after = send(2 * MAX_CACHED_KEYS, 6 * MAX_CACHED_KEYS)
    finally:
        tracemalloc.stop()
    assert cached.cache_info().currsize == MAX_CACHED_KEYS
    assert full < 320 * MAX_CACHED_KEYS  # ~260 bytes a key: entry, the key's bytes, the table
    assert abs(after - full) < 0.05 * full  # three times as many keys again: no growth
