"""Many keyed records written into kafka-python's open producer batch of a partition at once.

Why: kafka-python encodes and files each record on its own: a lock, a bounds check, a dozen
one-byte varint writes and a future per record, ~20 us of CPU per score message here, the
largest single cost of the consumer after its own features. A score batch is thousands of
keyed records without headers, all stamped at the same time, whose only result anyone reads
is whether the whole batch was acknowledged. So this writes a partition's records into the
accumulator's last open batch (or new ones, made as the accumulator makes them) in one pass
under the partition's lock, in the same v2 record layout kafka-python writes (KIP-98: length,
attributes, timestamp and offset deltas, key, value, no headers, every integer a zigzag
varint). It returns the batches written to instead of one future per record (2.5 us each to
make, more to complete): `outcome` then reads each batch's final state. A batch the broker
refused as too large is split by kafka-python into new batches that carry only the per-record
futures, so the original never reaches a final state; `outcome` reports it as failed (its
records may or may not have been delivered by the split batches: at least once).

Only kafka-python releases whose internals were read for this (`engage.transport.
kafka_python._DIRECT_APPEND_VERSIONS`) use it, and only with the v2 record format
(`writes_v2`);
tests/test_transport_contract.py reads every record back through a consumer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from kafka.producer.producer_batch import FinalState, ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint
from numba import njit

from engage.byte_copy import copy_bytes
from engage.transport.packed import PackedRecords
from features.distinct import sorted_distinct


def _varint(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


#: Zigzag varints of small non-negative integers (lengths and offset deltas), precomputed.
_SMALL = [_varint(i) for i in range(1 << 14)]
#: Attributes (0) of a record; its header count (0) ends it.
_ATTRIBUTES = b"\x00"
_NO_HEADERS = b"\x00"


def writes_v2(accumulator: Any) -> bool:
    """Whether the accumulator makes v2 record batches (every broker since Kafka 0.11)."""
    return getattr(accumulator, "config", {}).get("message_version") == 2


def varint(value: int) -> bytes:
    return _SMALL[value] if 0 <= value < len(_SMALL) else _varint(value)


def append_records(
    accumulator: Any, tp: Any, records: Sequence[tuple[bytes, bytes]] | _Lane
) -> tuple[list[Any], bool]:
    """File `records` ((key, value), in order; or a `_Lane` of packed records) for partition
    `tp`. Returns the batches they went into and whether the sender should be woken (a batch
    filled or one was started), as `RecordAccumulator.append` reports per record."""
    now = time.monotonic()
    timestamp = int(time.time() * 1000)
    batches: list[ProducerBatch] = []
    wake = False
    accumulator._appends_in_progress.increment()
    try:
        with accumulator._tp_lock(tp):
            dq = accumulator._batches[tp]
            start = 0
            while start < len(records):
                batch = dq[-1] if dq else None
                taken = _fill_any(batch, records, start, timestamp, now) if batch is not None else 0
                if taken == 0:  # no open batch, or it is full: start one as append() does
                    if accumulator._closed:
                        raise RuntimeError("the producer's record accumulator is closed")
                    config = accumulator.config
                    builder = MemoryRecordsBuilder(
                        config["message_version"], config["compression_attrs"],
                        config["batch_size"],
                    )  # fmt: skip
                    batch = ProducerBatch(tp, builder, now=now)
                    dq.append(batch)
                    accumulator._incomplete.add(batch)
                    wake = True
                    taken = _fill_any(batch, records, start, timestamp, now)
                assert batch is not None
                batches.append(batch)
                start += taken
            wake = wake or len(dq) > 1 or dq[-1].records.is_full()
    finally:
        accumulator._appends_in_progress.decrement()
    return batches, wake


def outcome(batch: ProducerBatch) -> Exception | None:
    """None if the broker acknowledged the batch; else why not. Ask after a flush."""
    state = batch.final_state
    if state is FinalState.SUCCEEDED:
        return None
    if state is None:
        return RuntimeError(
            f"a producer batch for {batch.topic_partition} reached no final state (split after "
            "the broker refused it as too large, or still in flight)"
        )
    error = batch.produce_future.exception
    return error if isinstance(error, Exception) else RuntimeError(f"batch {state.name}")


def _fill_any(
    batch: ProducerBatch, records: Sequence[tuple[bytes, bytes]] | _Lane, start: int, ts: int,
    now: float,
) -> int:  # fmt: skip
    if isinstance(records, _Lane):
        return _fill_lane(batch, records, start, ts, now)
    return _fill(batch, records, start, ts, now)


def _fill(
    batch: ProducerBatch, records: Sequence[tuple[bytes, bytes]], start: int, ts: int, now: float
) -> int:
    """Write records from `start` into `batch` while they fit; returns how many were written
    (0 if the batch is closed or the first does not fit). A batch's first record always fits,
    as in `DefaultRecordBatchBuilder.append`."""
    builder = batch.records
    if builder._closed:
        return 0
    inner = builder._builder
    buffer = inner._buffer
    if inner._first_timestamp is None:
        inner._first_timestamp = inner._max_timestamp = ts
        first = True
    else:
        first = False
        if inner._max_timestamp < ts:
            inner._max_timestamp = ts
    ts_delta = varint(ts - inner._first_timestamp)
    offset = builder._next_offset
    limit = inner._batch_size
    size = len(buffer)
    parts: list[bytes] = []
    largest = batch.max_record_size
    n = 0
    for key, value in records[start:]:
        body = b"".join(
            (_ATTRIBUTES, ts_delta, varint(offset + n), varint(len(key)), key,
             varint(len(value)), value, _NO_HEADERS)
        )  # fmt: skip
        length = varint(len(body))
        required = len(length) + len(body)
        if size + required > limit and not (first and n == 0):
            break
        parts += (length, body)
        size += required
        largest = max(largest, required)
        n += 1
    if n == 0:
        if first:  # (never: the first record always fits) undo the timestamp claim
            inner._first_timestamp = inner._max_timestamp = None
        return 0
    buffer += b"".join(parts)
    inner._num_records += n
    inner._last_offset = offset + n - 1
    builder._next_offset = offset + n
    batch.max_record_size = largest
    batch.last_append = now
    return n


class _Lane:
    """One partition's share of a `PackedRecords` batch: the rows `rows`, in order."""

    def __init__(self, keys: np.ndarray, key_ends: np.ndarray, values: np.ndarray,
                 value_ends: np.ndarray, rows: np.ndarray) -> None:  # fmt: skip
        self.keys, self.key_ends = keys, key_ends
        self.values, self.value_ends = values, value_ends
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)


def lanes(packed: PackedRecords, partitions: Sequence[int] | np.ndarray) -> dict[int, _Lane]:
    """`packed` split by the partition of each record (in order within each)."""
    keys, key_ends = packed.key_table()
    values = np.frombuffer(packed.values or b"\0", dtype=np.uint8)
    where = np.asarray(partitions, dtype=np.int64)
    return {
        int(p): _Lane(keys, key_ends, values, packed.ends, np.flatnonzero(where == p))
        for p in sorted_distinct(where)
    }


def _fill_lane(batch: ProducerBatch, lane: _Lane, start: int, ts: int, now: float) -> int:
    """`_fill` for packed records: the compiled `_frame` writes them (same bytes)."""
    builder = batch.records
    if builder._closed:
        return 0
    inner = builder._builder
    buffer = inner._buffer
    first = inner._first_timestamp is None
    if first:
        inner._first_timestamp = inner._max_timestamp = ts
    elif inner._max_timestamp < ts:
        inner._max_timestamp = ts
    offset = builder._next_offset
    rows = lane.rows[start:]
    room = np.empty(int(_room(lane, rows)), dtype=np.uint8)
    n, size, largest = _frame(
        room, lane.keys, lane.key_ends, lane.values, lane.value_ends, rows,
        ts - inner._first_timestamp, offset, inner._batch_size - len(buffer), first,
    )  # fmt: skip
    if n == 0:
        if first:  # (never: the first record always fits) undo the timestamp claim
            inner._first_timestamp = inner._max_timestamp = None
        return 0
    buffer += room[:size].data
    inner._num_records += n
    inner._last_offset = offset + n - 1
    builder._next_offset = offset + n
    batch.max_record_size = max(batch.max_record_size, largest)
    batch.last_append = now
    return int(n)


def _room(lane: _Lane, rows: np.ndarray) -> int:
    """Bytes enough for `rows` framed: their keys and values, 30 bytes of varints each."""
    if not len(rows):
        return 0
    k, v = lane.key_ends, lane.value_ends
    key_len = k[rows] - np.where(rows > 0, k[rows - 1], 0)
    value_len = v[rows] - np.where(rows > 0, v[rows - 1], 0)
    return int(key_len.sum() + value_len.sum()) + 30 * len(rows)


@njit(cache=True, nogil=True)
def _put_varint(out, pos, value):  # kafka.record.util.encode_varint: zigzag, then LEB128
    v = (value << 1) ^ (value >> 63)
    while v >= 0x80:
        out[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    out[pos] = v
    return pos + 1


@njit(cache=True, nogil=True)
def _varint_len(value):
    v = (value << 1) ^ (value >> 63)
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@njit(cache=True, nogil=True)
def _frame(out, keys, key_ends, values, value_ends, rows, ts_delta, offset, room, first):
    """`_fill`'s loop: records of `rows` into `out` while they fit in `room` bytes (the first
    record of a new batch always). Returns (records written, bytes, the largest record)."""
    pos = 0
    largest = 0
    n = 0
    for row in rows:
        k0 = key_ends[row - 1] if row > 0 else 0
        v0 = value_ends[row - 1] if row > 0 else 0
        klen = key_ends[row] - k0
        vlen = value_ends[row] - v0
        body = (1 + _varint_len(ts_delta) + _varint_len(offset + n) + _varint_len(klen) + klen
                + _varint_len(vlen) + vlen + 1)  # fmt: skip
        required = _varint_len(body) + body
        if pos + required > room and not (first and n == 0):
            break
        pos = _put_varint(out, pos, body)
        out[pos] = 0  # attributes
        pos = _put_varint(out, pos + 1, ts_delta)
        pos = _put_varint(out, pos, offset + n)
        pos = _put_varint(out, pos, klen)
        pos = copy_bytes(out, pos, keys, k0, k0 + klen)
        pos = _put_varint(out, pos, vlen)
        pos = copy_bytes(out, pos, values, v0, v0 + vlen)
        out[pos] = 0  # no headers
        pos += 1
        largest = max(largest, required)
        n += 1
    return n, pos, largest


def warm_up() -> None:
    """Load the compiled framing (numba's cache, or a compile) before the first batch."""
    packed = PackedRecords([b"k"], b"v", np.array([1]))
    (lane,) = lanes(packed, [0]).values()
    _frame(np.empty(64, np.uint8), lane.keys, lane.key_ends, lane.values, lane.value_ends,
           lane.rows, 0, 0, 64, True)  # fmt: skip
