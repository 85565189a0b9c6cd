"""Item aggregates as per-partition shards (features.item_shards): the codec round-trips, a
batch's shards equal the sums of their partitions' increments, and an item's state is the sum
of its shards whichever partitions and batches its events came in (no servers)."""

from __future__ import annotations

import numpy as np
import pytest

from features.item_shards import (
    FIELDS,
    N_FIELDS,
    SHARD_BYTES,
    ItemFormatError,
    LoadedItems,
    ShardWrites,
    decode_item,
    pack_shards,
    shard_field,
    unpack_shards,
)


def _delta(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Increments as the fold makes them: integers and multiples of 1/1024, some absent."""
    values = rng.integers(0, 5 * 1024, size=(n, N_FIELDS)) / 1024.0
    present = rng.random((n, N_FIELDS)) < 0.7
    return np.where(present, values, 0.0), present


def _events(
    rng: np.random.Generator, items: list[str], partitions: list[int], n: int,
    next_offset: dict[int, int],
) -> tuple[list[str | None], list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray,
           np.ndarray]:  # fmt: skip
    """n events as `updated` takes them: each one's item (or none) and its place among the
    batch's items, its partition and the partition's next offset (`next_offset` moves on), and
    its increments."""
    item_of = rng.choice([*items, None], size=n).tolist()
    batch_items = list(dict.fromkeys(i for i in item_of if i is not None))
    loc = np.array([-1 if i is None else batch_items.index(i) for i in item_of])
    parts = rng.choice(partitions, size=n)
    offsets = np.zeros(n, dtype=np.int64)
    for e, p in enumerate(parts.tolist()):
        offsets[e], next_offset[p] = next_offset[p], next_offset[p] + 1
    delta, present = _delta(rng, n)
    return item_of, batch_items, loc, parts, offsets, delta, present


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(1)
    values, present = _delta(rng, 5)
    offsets = np.array([0, 7, 2**40, 3, 9], dtype=np.int64)
    blobs = pack_shards(values, present, offsets)
    assert all(len(b) == SHARD_BYTES for b in blobs)
    got_values, got_present, got_offsets = unpack_shards(blobs)
    assert (got_values == values).all() and (got_present == present).all()
    assert (got_offsets == offsets).all()


def test_refuses_other_formats() -> None:
    with pytest.raises(ItemFormatError, match="replay the log"):
        decode_item({b"n": b"3", b"r_sum": b"7.5"})  # per-field increments of older versions
    blob = pack_shards(np.zeros((1, N_FIELDS)), np.zeros((1, N_FIELDS), bool), np.zeros(1))[0]
    with pytest.raises(ItemFormatError, match="damaged"):
        decode_item({b"p0": blob[:-1]})
    with pytest.raises(ItemFormatError, match="layout"):
        decode_item({b"p0": blob[:1] + b"\0\0\0\0" + blob[5:]})


def test_batches_over_partitions_sum_to_the_sequential_state() -> None:
    """Three batches, events of three partitions and four items interleaved: after writing
    each batch's shards (as the store does) and reading them back, every item's decoded state
    equals the plain running sum of its events' increments, and each shard holds its
    partition's largest offset."""
    rng = np.random.default_rng(7)
    items = ["a", "b", "c", "d"]
    redis: dict[str, dict[bytes, bytes]] = {}  # i:{item} hashes
    want = {item: np.zeros(N_FIELDS) for item in items}
    want_set = {item: np.zeros(N_FIELDS, bool) for item in items}
    last = {}
    next_offset = {0: 0, 1: 0, 5: 0}
    for _batch in range(3):
        item_of, batch_items, loc, parts, offsets, delta, present = _events(
            rng, items, [0, 1, 5], 40, next_offset
        )
        loaded = LoadedItems(batch_items, [redis.get(i, {}) for i in batch_items])
        for item, fields in (
            loaded.updated(batch_items, loc, parts, offsets, delta, present).by_item().items()
        ):
            redis.setdefault(item, {}).update({k.encode(): v for k, v in fields.items()})
        for e, item in enumerate(item_of):
            if item is not None:
                want[item] += delta[e]
                want_set[item] |= present[e]
                last[(item, int(parts[e]))] = int(offsets[e])
    for item in items:
        expected = {FIELDS[c]: want[item][c] for c in np.flatnonzero(want_set[item])}
        assert decode_item(redis.get(item, {})) == expected
    for (item, p), offset in last.items():
        shard = redis[item][shard_field(p).encode()]
        assert unpack_shards([shard])[2][0] == offset


def test_an_item_absent_from_the_batch_is_not_written() -> None:
    loaded = LoadedItems.empty()
    delta, present = np.ones((2, N_FIELDS)), np.ones((2, N_FIELDS), bool)
    out = loaded.updated(["x"], np.array([-1, -1]), np.array([0, 0]), np.array([1, 2]),
                         delta, present)  # fmt: skip
    assert not out and out.by_item() == {}


def test_held_shards_absorbed_batch_after_batch_write_what_fresh_reads_write() -> None:
    """The consumer that holds every partition keeps its items' shards between batches
    (`absorb`) and reads only items it does not hold: batch after batch it writes the same
    shards as a consumer that reads every item back from Redis, partition by partition."""
    rng = np.random.default_rng(11)
    items = [f"m{k}" for k in range(30)]
    redis: dict[str, dict[bytes, bytes]] = {}
    held = LoadedItems.empty()
    next_offset = {p: 0 for p in range(4)}
    for _batch in range(6):
        _, batch_items, loc, parts, offsets, delta, present = _events(
            rng, items, [0, 2, 3], 120, next_offset
        )
        fresh = LoadedItems(batch_items, [redis.get(i, {}) for i in batch_items])
        unread = [i for i in batch_items if i not in held.items]
        held.extend(unread, [redis.get(i, {}) for i in unread])
        want = fresh.updated(batch_items, loc, parts, offsets, delta, present)
        got = held.updated(batch_items, loc, parts, offsets, delta, present)
        assert got.partitions == want.partitions
        assert list(got.partitions) == sorted(got.partitions)  # a partition at a time
        for part_items, _ in got.partitions.values():  # each in the batch's item order, once
            places = [batch_items.index(i) for i in part_items]
            assert places == sorted(set(places))
        assert len(got) == sum(len(shards) for shards in got.by_item().values())
        assert ShardWrites.of(got.by_item()).by_item() == got.by_item()
        held.absorb()
        for item, fields in got.by_item().items():
            redis.setdefault(item, {}).update({k.encode(): v for k, v in fields.items()})
