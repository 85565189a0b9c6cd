"""Fetched record batches made into `ConsumerRecord`s a batch at a time.

Why: kafka-python reads each record of a fetched v2 batch with a dozen Python-level varint
decodes and property lookups, then makes a `ConsumerRecord` from fifteen attribute reads, all
in a Python loop per record: about a fifth of the consumer thread's time holding the GIL. The
record layout (KIP-98: length, attributes, timestamp and offset deltas, key, value, headers,
every integer a zigzag varint) is simple enough to walk in one numba loop that returns every
record's fields as one table; the keys, values and records are then made by `map` over its
columns, with no Python bytecode per record. The fetcher's batch rules (CRC, leader epoch,
aborted transactions, control batches, positions) stay as kafka-python has them.

Anything unusual goes the per-record way: deserializers, a legacy or control batch, a batch
already partly read, a layout the scan does not accept (kafka-python's own record reader then
raises the error it always raised). Only kafka-python releases whose fetcher was read for this
use it (`use`), for every consumer `engage.kafka_clients` builds (engage's, the job floor's,
the readers'), unless `ENGAGE_KAFKA_FAST_FETCH=false`; tests/test_fetched_batches.py holds it
to kafka-python's own fetcher record for record and position for position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from itertools import repeat
from typing import Any

import numpy as np
from kafka import __version__ as KAFKA_PYTHON_VERSION
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record.util import decode_varint
from numba import njit

from engage.transport.record_columns import RecordColumns

#: Per record: size, timestamp delta, offset delta, key start and length, value start and
#: length, where the headers start and how many there are.
_COLUMNS = 9
#: kafka-python releases whose fetcher was read for this.
_READER_VERSIONS = ("3.0.",)
PartitionRecords = Fetcher.PartitionRecords
_stock_unpack = PartitionRecords._unpack_records
_stock_take = PartitionRecords.take
#: A `ConsumerRecord` from a tuple of its fields, in C (its own `__new__` is a Python lambda).
_new_record = partial(tuple.__new__, ConsumerRecord)


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


def read_headers(data: bytes, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        size, pos = decode_varint(data, pos)
        name = data[pos : pos + size].decode("utf-8")
        size, pos = decode_varint(data, pos + size)
        headers.append((name, data[pos : pos + size] if size >= 0 else None))
        pos += max(size, 0)
    return headers


def _header_size(headers: list[tuple[str, bytes | None]]) -> int:
    """kafka-python's `serialized_header_size`: -1 with no headers."""
    if not headers:
        return -1
    return sum(len(name.encode("utf-8")) + len(value or b"") for name, value in headers)


def _cut(data: bytes, starts: np.ndarray, sizes: np.ndarray) -> list[bytes | None]:
    """The byte strings at `starts` of `sizes` (-1: null). (A list comprehension: slicing by
    `map(data.__getitem__, map(slice, ...))` measured 1.6x slower.)"""
    if sizes.min(initial=0) >= 0:
        return [data[a:b] for a, b in zip(starts.tolist(), (starts + sizes).tolist(), strict=True)]
    spans = zip(starts.tolist(), sizes.tolist(), strict=True)
    return [data[a : a + n] if n >= 0 else None for a, n in spans]


def _scanned(batch: Any) -> np.ndarray | None:
    """The table of an unread data batch's records (`_scan`'s columns, a row a record), the
    batch marked read; None when it should be read the stock way (a control batch, one
    partly read, a layout the scan does not accept)."""
    batch._maybe_uncompress()
    count = batch._num_records
    if batch.is_control_batch or batch._next_record_index or count < 0:
        return None
    buffer = batch._buffer
    table = np.empty((count, _COLUMNS), np.int64)
    end = _scan(np.frombuffer(buffer, np.uint8), batch._pos, table)
    if end != len(buffer):
        return None
    batch._pos = end
    batch._next_record_index = count
    return table


def consumer_records(tp: Any, leader_epoch: int, batch: Any) -> tuple[list[Any], int] | None:
    """Every record of an unread data batch as the `ConsumerRecord`s kafka-python's fetcher
    would make (no deserializers), and their bytes on the wire; None when the batch should be
    read the stock way. The records are made by `map` over the columns: no Python per record."""
    table = _scanned(batch)
    if table is None:
        return None
    count = len(table)
    data = bytes(batch._buffer)
    ts_type = batch.timestamp_type
    timestamps: Iterable[int] = (
        repeat(batch.max_timestamp, count)
        if ts_type == batch.LOG_APPEND_TIME
        else (table[:, 1] + batch.first_timestamp).tolist()
    )
    key_sizes, value_sizes, header_counts = table[:, 4], table[:, 6], table[:, 8]
    if header_counts.any():
        headers = [read_headers(data, at, n) if n else [] for at, n in table[:, 7:9].tolist()]
        header_sizes: Iterable[int] = list(map(_header_size, headers))
    else:
        headers, header_sizes = list(map(list, repeat((), count))), repeat(-1, count)
    columns = zip(
        repeat(tp.topic), repeat(tp.partition), repeat(leader_epoch),
        (table[:, 2] + batch.base_offset).tolist(), timestamps, repeat(ts_type),
        _cut(data, table[:, 3], key_sizes), _cut(data, table[:, 5], value_sizes), headers,
        repeat(None), key_sizes.tolist(), value_sizes.tolist(), header_sizes,
    )  # fmt: skip
    return list(map(_new_record, columns)), int(table[:, 0].sum())


def _unpack_records(
    self: Any, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
) -> Iterator[Any]:
    """`PartitionRecords._unpack_records` with each data batch's records made at once: the
    same batch rules (CRC, leader epoch, aborted transactions, control batches, the next
    offset after the last batch), the per-record way for anything `consumer_records` declines.
    The position after each record is set by `_take`, for the last record it returns."""
    if key_deserializer is not None or value_deserializer is not None:
        yield from _stock_unpack(self, tp, records, key_deserializer, value_deserializer)
        return
    for batch in _data_batches(self, records):
        if batch.magic == 2:
            made = consumer_records(tp, self.leader_epoch, batch)
            if made is not None:
                self.records_read += len(made[0])
                self.bytes_read += made[1]
                yield from made[0]
                continue
        yield from _one_by_one(self, tp, batch)
    self.drain()


def _data_batches(self: Any, records: Any) -> Iterator[Any]:
    """The fetched batches whose records are read, as kafka-python's fetcher has them: each
    CRC checked, the leader epoch noted, aborted transactions and control batches skipped
    (the position moved past them), and the position after the last v2 batch once the
    last is read."""
    last = None
    while (batch := records.next_batch()) is not None:
        last = batch
        if self.check_crcs and not batch.validate_crc():
            raise CorruptRecordError(
                f"Record batch for partition {self.topic_partition} at offset "
                f"{batch.base_offset} failed crc check"
            )
        if batch.magic == 2:
            self.leader_epoch = batch.leader_epoch
            if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                self._consume_aborted_transactions_up_to(batch.last_offset)
                if self._contains_abort_marker(batch):
                    self.aborted_producer_ids.discard(batch.producer_id)
                elif self._is_batch_aborted(batch):
                    self.next_fetch_offset = batch.next_offset
                    continue
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
        yield batch
    if last is not None and last.magic == 2:
        self.next_fetch_offset = last.next_offset


def _one_by_one(self: Any, tp: Any, batch: Any) -> Iterator[Any]:
    """A batch's records the way kafka-python reads them, one at a time."""
    for record in batch:
        if self.check_crcs and not record.validate_crc():
            raise CorruptRecordError(
                f"Record for partition {self.topic_partition} at offset {record.offset} "
                "failed crc check"
            )
        key, value, headers = record.key, record.value, record.headers
        self.records_read += 1
        self.bytes_read += record.size_in_bytes
        self.next_fetch_offset = record.offset + 1
        yield _new_record((
            tp.topic, tp.partition, self.leader_epoch, record.offset, record.timestamp,
            record.timestamp_type, key, value, headers, record.checksum,
            len(key) if key is not None else -1, len(value) if value is not None else -1,
            _header_size(headers),
        ))  # fmt: skip


def _take(self: Any, n: int | None = None) -> list[Any]:
    """`PartitionRecords.take`, then the position after the last record taken (records made
    a batch at a time do not move it one by one; it only ever moves forward)."""
    taken = _stock_take(self, n)
    if taken:
        self.next_fetch_offset = max(self.next_fetch_offset, taken[-1].offset + 1)
    return taken


def consumer_columns(tp: Any, batch: Any) -> tuple[RecordColumns, int] | None:
    """Every record of an unread data batch as columns over the batch's bytes (no object a
    record), and their bytes on the wire; None when the batch should be read the stock way."""
    table = _scanned(batch)
    if table is None:
        return None
    count = len(table)
    columns = table.T.copy()  # (each column contiguous)
    if batch.timestamp_type == batch.LOG_APPEND_TIME:
        timestamps = np.full(count, batch.max_timestamp, dtype=np.int64)
    else:
        timestamps = columns[1] + batch.first_timestamp
    data = bytes(batch._buffer)
    held = None
    if columns[8].any():  # read now, as kafka-python does: a bad one fails the take
        held = [read_headers(data, at, n) if n else [] for at, n in table[:, 7:9].tolist()]
    made = RecordColumns(
        tp.topic, data, np.full(count, tp.partition, dtype=np.int64),
        columns[2] + batch.base_offset, timestamps, columns[3], columns[4], columns[5],
        columns[6], held_headers=held,
    )  # fmt: skip
    return made, int(columns[0].sum())


class _Taken(list[RecordColumns]):
    """A columnar take: its chunks, and as its length the records they hold (what the
    fetcher counts against `max_records` and returns as the records taken)."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        super().__init__()
        self.records = 0

    def __len__(self) -> int:
        return self.records


class ColumnarPartitionRecords(PartitionRecords):  # type: ignore[misc,valid-type]
    """A fetched partition's records taken as `RecordColumns` chunks, one a fetched batch
    (split where a take ends inside one): the fetcher's rules and positions as
    `_unpack_records` and `_take` keep them, with no object a record. A consumer reads
    this way when its fetcher is given the class (`read_columns`); its poll then returns
    chunks, which `engage.transport.kafka_python` joins into one `RecordColumns`."""

    next_fetch_offset: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rest: RecordColumns | None = None  # what the last take left of a chunk
        super().__init__(*args, **kwargs)

    def _maybe_skip_record(self, chunk: Any) -> bool:
        return False  # each chunk starts at or after the fetch offset already

    def drain(self) -> None:
        self._rest = None
        super().drain()

    def _unpack_records(
        self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[RecordColumns]:
        if key_deserializer is not None or value_deserializer is not None:
            raise ValueError("a columnar fetch takes no deserializers")
        for batch in _data_batches(self, records):
            made = consumer_columns(tp, batch) if batch.magic == 2 else None
            if made is None:  # kafka-python's own reader, a record a chunk (as it fails)
                for record in _one_by_one(self, tp, batch):
                    if record.offset >= self.fetch_offset:
                        yield RecordColumns.of_records([record])
                continue
            chunk = made[0]
            self.records_read += len(chunk)
            self.bytes_read += made[1]
            if len(chunk) and chunk.offsets[0] < self.fetch_offset:  # a fetch from mid-batch
                chunk = chunk.take(chunk.offsets >= self.fetch_offset)
            if len(chunk):
                yield chunk
        self.drain()

    def take(self, n: int | None = None) -> _Taken:
        """Up to `n` records as chunks; the position after the last one taken."""
        self._maybe_raise_next_inline_exception()
        taken = _Taken()
        try:
            while n is None or taken.records < n:
                chunk, self._rest = self._rest, None
                if chunk is None:
                    if self.record_iterator is None:
                        break
                    chunk = next(self.record_iterator, None)
                    if chunk is None:
                        break
                if n is not None and len(chunk) > n - taken.records:
                    room = n - taken.records
                    chunk, self._rest = chunk[:room], chunk[room:]
                taken.append(chunk)
                taken.records += len(chunk)
        except Exception as exc:  # as PartitionRecords.take: raised now, or at the next take
            if not taken:
                raise
            self._next_inline_exception = exc
        if taken:
            self.next_fetch_offset = max(self.next_fetch_offset, int(taken[-1].offsets[-1]) + 1)
        return taken


def read_columns(consumer: Any) -> bool:
    """Make `consumer` (a KafkaConsumer) fetch columns (`ColumnarPartitionRecords`): its
    polls then return `RecordColumns` chunks. Only where the batch-at-a-time reader is in use
    (`use`); whether it now reads columns."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None or PartitionRecords._unpack_records is not _unpack_records:
        return False
    fetcher.PartitionRecords = ColumnarPartitionRecords
    return True


def use(fast: bool) -> bool:
    """Read every fetched v2 batch of this process a batch at a time (`fast`, on a
    kafka-python release it was written for) or kafka-python's way; whether it is fast."""
    fast = fast and KAFKA_PYTHON_VERSION.startswith(_READER_VERSIONS)
    PartitionRecords._unpack_records = _unpack_records if fast else _stock_unpack
    PartitionRecords.take = _take if fast else _stock_take
    return fast
