"""Packed score records: read back as the pairs they hold, and framed into kafka-python's
producer batches byte for byte as the per-record path frames them."""

from __future__ import annotations

import random

import numpy as np
import pytest
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

from engage.transport import record_batches
from engage.transport.packed import PackedRecords


def pairs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    lengths = [0, 1, 63, 64, 127, 128, 8191, 8192, 20_000]  # varint widths change at 64, 8192
    return [
        (f"user{rng.randint(0, 40)}".encode() * rng.randint(1, 3),
         rng.randbytes(rng.choice(lengths) if rng.random() < 0.1 else rng.randint(100, 600)))
        for _ in range(n)
    ]  # fmt: skip


def packed(records: list[tuple[bytes, bytes]]) -> PackedRecords:
    ends = np.cumsum([len(v) for _, v in records], dtype=np.int64)
    return PackedRecords([k for k, _ in records], b"".join(v for _, v in records), ends)


def test_packed_records_read_back_as_their_pairs() -> None:
    records = pairs(500, seed=1)
    p = packed(records)
    assert len(p) == 500 and list(p) == records
    assert p[0] == records[0] and p[-1] == records[-1] and p[10:13] == records[10:13]
    assert p.largest() == max(len(v) for _, v in records) + max(len(k) for k, _ in records)
    assert list(packed([])) == [] and packed([]).largest() == 0
    with pytest.raises(ValueError):
        PackedRecords([b"k"], b"", np.array([0, 0]))


def test_replaced_rows_and_only_those_change() -> None:
    records = pairs(300, seed=2)
    new = {0: b"", 7: b"x" * 1000, 299: b"last", 150: records[150][1]}
    got = list(packed(records).replaced(new))
    want = [(k, new.get(i, v)) for i, (k, v) in enumerate(records)]
    assert got == want
    p = packed(records)
    assert p.replaced({}) is p


def coded(records: list[tuple[bytes, bytes]]) -> PackedRecords:
    distinct = list(dict.fromkeys(k for k, _ in records))
    codes = np.array([distinct.index(k) for k, _ in records], dtype=np.int64)
    ends = np.cumsum([len(v) for _, v in records], dtype=np.int64)
    return PackedRecords.coded(distinct, codes, b"".join(v for _, v in records), ends)


def test_coded_keys_read_as_the_keys_they_code() -> None:
    """Each distinct key once and a code a record: the same records, key table and largest
    as the keys given one a record; a value per distinct key lands on each of its records."""
    records = pairs(400, seed=4)
    plain, by_code = packed(records), coded(records)
    assert list(by_code) == records and by_code.keys == plain.keys
    for a, b in zip(by_code.key_table(), plain.key_table(), strict=True):
        assert np.array_equal(a, b)
    assert by_code.largest() == plain.largest()
    per_key = [len(k) * 7 for k in by_code.distinct_keys]
    assert by_code.per_record(per_key).tolist() == [len(k) * 7 for k, _ in records]
    assert plain.per_record([len(k) for k, _ in records]).tolist() == [len(k) for k, _ in records]
    replaced = by_code.replaced({3: b"three"})
    assert replaced.key_codes is by_code.key_codes and replaced[3] == (records[3][0], b"three")
    for bad in ([0, 1], [0, -1]):  # past the end, or before the start (no wrapping)
        with pytest.raises(ValueError):
            PackedRecords.coded([b"a"], np.array(bad), b"xy", np.array([1, 2]))
    assert list(PackedRecords.coded([], np.array([], dtype=np.int64), b"", np.array([]))) == []


def fresh_batch(size: int) -> ProducerBatch:
    return ProducerBatch(TopicPartition("t", 0), MemoryRecordsBuilder(2, 0, size), now=0.0)


@pytest.mark.parametrize("batch_size", [16 * 1024, 256 * 1024])
def test_framing_from_the_buffer_writes_the_bytes_the_pair_path_writes(batch_size: int) -> None:
    """Both paths fill producer batches from the same records (two calls, so the second
    continues an open batch at an offset and time delta); every batch's bytes, record count,
    offsets and largest record agree, and a full batch stops both at the same record."""
    records = pairs(2000, seed=3)
    where = [random.Random(i).randint(0, 2) for i in range(len(records))]
    lanes = record_batches.lanes(packed(records), where)
    for p, lane in lanes.items():
        mine = [records[i] for i in lane.rows.tolist()]
        assert mine and len(lane) == len(mine)
        by_pairs, by_lane = [fresh_batch(batch_size)], [fresh_batch(batch_size)]
        for out, source in ((by_pairs, mine), (by_lane, lane)):
            start, ts = 0, 1_700_000_000_000
            while start < len(mine):
                taken = record_batches._fill_any(out[-1], source, start, ts, 1.0)
                if taken == 0:
                    out.append(fresh_batch(batch_size))
                    continue
                start += taken
                ts += 17  # a later call: a nonzero timestamp delta
        assert len(by_pairs) == len(by_lane) > (1 if batch_size < 100_000 else 0)
        for a, b in zip(by_pairs, by_lane, strict=True):
            ra, rb = a.records, b.records
            assert bytes(ra._builder._buffer) == bytes(rb._builder._buffer), p
            assert ra._builder._num_records == rb._builder._num_records
            assert ra._next_offset == rb._next_offset
            assert ra._builder._max_timestamp == rb._builder._max_timestamp
            assert a.max_record_size == b.max_record_size
