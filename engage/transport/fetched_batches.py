"""Fetched record batches parsed in one compiled pass instead of one record at a time.

Why: kafka-python reads each record of a fetched v2 batch with a dozen Python-level varint
decodes and property lookups, ~5 us of CPU per record here: half of what the consumer's whole
Kafka side costs, and more than its duplicate guard, rules and score messages together. The
record layout (KIP-98: length, attributes, timestamp and offset deltas, key, value, headers,
every integer a zigzag varint) is simple enough to walk in one numba loop that returns every
record's fields as one table; Python then only slices the keys and values out and makes the
same `DefaultRecord` objects kafka-python makes, so its fetcher (CRC check, transactions,
control batches, positions) runs unchanged around them.

Anything unusual goes the stock way: a control batch, a batch already partly read, a layout
the scan does not accept (kafka-python's own iterator then raises the error it always raised).
Only kafka-python releases whose record reader was read for this use it (`use`), for every
consumer `engage.kafka_clients` builds (engage's, the job floor's, the readers'), unless
`ENGAGE_KAFKA_FAST_FETCH=false`; tests/test_transport_contract.py checks it record for record
against kafka-python's reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from kafka import __version__ as KAFKA_PYTHON_VERSION
from kafka.record.default_records import DefaultRecord, DefaultRecordBatch
from kafka.record.util import decode_varint
from numba import njit

#: Per record: size, timestamp delta, offset delta, key start and length, value start and
#: length, where the headers start and how many there are.
_COLUMNS = 9
#: kafka-python releases whose `DefaultRecordBatch` was read for this.
_READER_VERSIONS = ("3.0.",)
_stock_iter = DefaultRecordBatch.__iter__


@njit(cache=True, nogil=True)
def _varint(buf: np.ndarray, pos: int) -> tuple[int, int]:
    """A zigzag varint at `pos`: its value and the position after it (-1: malformed)."""
    raw = np.uint64(0)
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            return 0, -1
        byte = buf[pos]
        pos += 1
        raw |= np.uint64(byte & 0x7F) << np.uint64(shift)
        if byte < 0x80:
            break
        shift += 7
    value = np.int64(raw >> np.uint64(1)) ^ -np.int64(raw & np.uint64(1))
    return int(value), pos


@njit(cache=True, nogil=True)
def _skip(buf: np.ndarray, pos: int, length: int) -> int:
    """The position after a nullable byte string of `length` at `pos` (-1: past the end)."""
    if length > 0:
        pos += length
    return pos if pos <= len(buf) else -1


@njit(cache=True, nogil=True)
def _scan(buf: np.ndarray, pos: int, out: np.ndarray) -> int:
    """Fill `out` with the fields of its rows' worth of records starting at `pos`; the
    position after the last one, or -1 when the layout is not what it should be."""
    for i in range(out.shape[0]):
        length, pos = _varint(buf, pos)
        if pos < 0:
            return -1
        start = pos
        out[i, 0] = length
        for k in range(3):  # attributes (unused), timestamp delta, offset delta
            value, pos = _varint(buf, pos)
            if pos < 0:
                return -1
            if k:
                out[i, k] = value
        for k in (3, 5):  # key, then value: start and length (-1: null)
            size, pos = _varint(buf, pos)
            if pos < 0:
                return -1
            out[i, k], out[i, k + 1] = pos, size
            pos = _skip(buf, pos, size)
            if pos < 0:
                return -1
        count, pos = _varint(buf, pos)
        if pos < 0 or count < 0:
            return -1
        out[i, 7], out[i, 8] = pos, count
        for _ in range(count):  # header key (a string, never null), then value
            for nullable in (False, True):
                size, pos = _varint(buf, pos)
                if pos < 0 or (size < 0 and not nullable):
                    return -1
                pos = _skip(buf, pos, size)
                if pos < 0:
                    return -1
        if pos - start != length:
            return -1
    return pos


def _headers(data: bytes, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        size, pos = decode_varint(data, pos)
        name = data[pos : pos + size].decode("utf-8")
        size, pos = decode_varint(data, pos + size)
        headers.append((name, data[pos : pos + size] if size >= 0 else None))
        pos += max(size, 0)
    return headers


class FetchedRecord(DefaultRecord):
    """A `DefaultRecord` whose fields are plain attributes (slots that shadow the parent's
    properties): kafka-python's fetcher reads about fifteen of them per record, ~0.45 us of
    property calls a record, now ~0.15."""

    __slots__ = (
        "headers",
        "key",
        "offset",
        "size_in_bytes",
        "timestamp",
        "timestamp_type",
        "value",
    )  # fmt: skip

    def __init__(
        self, size_in_bytes: int, offset: int, timestamp: int, timestamp_type: int,
        key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]],
    ) -> None:  # fmt: skip
        self.size_in_bytes = size_in_bytes
        self.offset = offset
        self.timestamp = timestamp
        self.timestamp_type = timestamp_type
        self.key = key
        self.value = value
        self.headers = headers

    def __repr__(self) -> str:
        return (
            f"DefaultRecord(offset={self.offset!r}, timestamp={self.timestamp!r}, "
            f"timestamp_type={self.timestamp_type!r}, key={self.key!r}, value={self.value!r}, "
            f"headers={self.headers!r})"
        )


def _records(batch: Any, data: bytes, rows: list[list[int]]) -> list[DefaultRecord]:
    """The `DefaultRecord`s of a scanned batch: offsets and timestamps from its header."""
    base, ts_type = batch.base_offset, batch.timestamp_type
    fixed_ts = batch.max_timestamp if ts_type == batch.LOG_APPEND_TIME else None
    first_ts = batch.first_timestamp
    records = []
    for size, ts_delta, offset_delta, key_at, key_size, value_at, value_size, at, headers in rows:
        records.append(
            FetchedRecord(
                size,
                base + offset_delta,
                first_ts + ts_delta if fixed_ts is None else fixed_ts,
                ts_type,
                data[key_at : key_at + key_size] if key_size >= 0 else None,
                data[value_at : value_at + value_size] if value_size >= 0 else None,
                _headers(data, at, headers) if headers else [],
            )
        )
    return records


def parsed_records(batch: Any) -> list[DefaultRecord] | None:
    """Every record of an unread data batch, as kafka-python's reader would give them; None
    when the batch should be read the stock way."""
    batch._maybe_uncompress()
    count = batch._num_records
    if batch.is_control_batch or batch._next_record_index or count < 0:
        return None
    buffer = batch._buffer
    table = np.empty((count, _COLUMNS), np.int64)
    end = _scan(np.frombuffer(buffer, np.uint8), batch._pos, table)
    if end != len(buffer):
        return None
    records = _records(batch, bytes(buffer), table.tolist())
    batch._pos = end
    batch._next_record_index = count
    return records


def _iter(batch: Any) -> Iterator[DefaultRecord]:
    records = parsed_records(batch)
    return _stock_iter(batch) if records is None else iter(records)


def use(fast: bool) -> bool:
    """Read every fetched v2 batch of this process with `parsed_records` (`fast`, on a
    kafka-python release it was written for) or kafka-python's reader; whether it is fast."""
    fast = fast and KAFKA_PYTHON_VERSION.startswith(_READER_VERSIONS)
    DefaultRecordBatch.__iter__ = _iter if fast else _stock_iter
    return fast
