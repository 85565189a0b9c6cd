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

from kafka.producer.producer_batch import FinalState, ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint


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
    accumulator: Any, tp: Any, records: Sequence[tuple[bytes, bytes]]
) -> tuple[list[Any], bool]:
    """File `records` ((key, value), in order) for partition `tp`. Returns the batches they
    went into and whether the sender should be woken (a batch filled or one was started), as
    `RecordAccumulator.append` reports per record."""
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
                taken = _fill(batch, records, start, timestamp, now) if batch is not None else 0
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
                    taken = _fill(batch, records, start, timestamp, now)
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
