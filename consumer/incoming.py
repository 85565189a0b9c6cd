"""A polled batch's valid events and where each came from, as columns.

Why: the consumer's hot path (admission, the fold, the score messages, the writes) reads
fields of a whole batch; an object per record to read them back from cost more than the
reading. `read_incoming` fills the columns with the compiled reader (`features.event_reader`);
indexing a batch still gives an `Incoming` (for a refusal's dead letter, a shown row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self, cast

import numpy as np

from engage.transport.base import Record
from engage.transport.record_columns import RecordColumns
from features.distinct import sorted_distinct
from features.event_batch import EventBatch, Rows
from features.event_reader import read_block, read_events
from features.events import DecodeError, Event


@dataclass(slots=True)
class Incoming:
    """A decoded event and where it came from (the raw record, in case it is refused)."""

    event: Event
    partition: int
    offset: int
    kafka_ts_ms: int
    key: bytes | None = None
    value: bytes = b""


@dataclass(eq=False)
class IncomingBatch(Rows[Incoming]):
    """Events (`events`, row `i` of each column is event `i`) and their records' partition,
    offset, Kafka timestamp, key and raw value (the last two read only for a dead letter: they
    may be cut from the fetched bytes when read, `record_columns.Spans`)."""

    events: EventBatch
    partitions: list[int]
    offsets: list[int]
    kafka_ts_ms: list[int]
    keys: Sequence[bytes | None]
    values: Sequence[bytes]
    #: `partitions` and `offsets` as the poll's int64 arrays, when read from them (None after
    #: `take`, and for batches made from objects).
    arrays: tuple[np.ndarray, np.ndarray] | None = field(default=None, kw_only=True)

    def partition_offset_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """`partitions` and `offsets` as int64 arrays (the poll's own when it kept them)."""
        if self.arrays is not None:
            return self.arrays
        return np.asarray(self.partitions, np.int64), np.asarray(self.offsets, np.int64)

    @classmethod
    def of(cls, incoming: Sequence[Incoming]) -> IncomingBatch:
        """The columns of `incoming` (a batch is returned as it is)."""
        if isinstance(incoming, IncomingBatch):
            return incoming
        return cls(
            EventBatch.of([i.event for i in incoming]), [i.partition for i in incoming],
            [i.offset for i in incoming], [i.kafka_ts_ms for i in incoming],
            [i.key for i in incoming], [i.value for i in incoming],
        )  # fmt: skip

    def take(self, rows: Sequence[int]) -> Self:
        """The batch of rows `rows`, in that order."""
        return type(self)(
            self.events.take(rows), [self.partitions[r] for r in rows],
            [self.offsets[r] for r in rows], [self.kafka_ts_ms[r] for r in rows],
            [self.keys[r] for r in rows], [self.values[r] for r in rows],
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.partitions)

    def row(self, index: int) -> Incoming:
        return Incoming(self.events[index], self.partitions[index], self.offsets[index],
                        self.kafka_ts_ms[index], self.keys[index], self.values[index])  # fmt: skip


@dataclass(slots=True)
class Polled:
    """A poll's records, their partitions and offsets as arrays (the batch's offset checks
    and progress are numpy passes, not a step a record), and, for records that are objects,
    their columns (`record_columns`); records polled as `RecordColumns` are columns already.
    `decoded`: the records' events when they were decoded already (the event-time merge)."""

    records: Sequence[Record]
    decoded: list[Event | DecodeError] | None
    columns: tuple[list[Any], ...] | None
    partitions: np.ndarray  # int64, one a record
    offsets: np.ndarray

    @classmethod
    def of(cls, records: Sequence[Record], decoded: list[Event | DecodeError] | None) -> Polled:
        if isinstance(records, RecordColumns):
            return cls(records, decoded, None, records.partitions, records.offsets)
        columns = record_columns(records)
        n = len(records)
        return cls(
            records, decoded, columns,
            np.fromiter(columns[0], np.int64, n), np.fromiter(columns[1], np.int64, n),
        )  # fmt: skip

    def partition_set(self) -> set[int]:
        return set(sorted_distinct(self.partitions).tolist()) if len(self.records) else set()

    def after(self, positions: dict[int, int], none: int) -> Polled:
        """The records past each partition's position (`none` where it has none): those at or
        below it were applied already (a re-delivery)."""
        if not len(self.records):
            return self
        top = int(self.partitions.max())
        stored = np.array([positions.get(p, none) for p in range(top + 1)], np.int64)
        keep = self.offsets > stored[self.partitions]
        if keep.all():
            return self
        rows = np.flatnonzero(keep).tolist()
        decoded = None if self.decoded is None else [self.decoded[k] for k in rows]
        records = self.records
        if isinstance(records, RecordColumns):
            return Polled(records.take(keep), decoded, None, self.partitions[keep],
                          self.offsets[keep])  # fmt: skip
        assert self.columns is not None
        return Polled(
            [records[k] for k in rows], decoded,
            tuple([column[k] for k in rows] for column in self.columns),
            self.partitions[keep], self.offsets[keep],
        )  # fmt: skip


def read_incoming(
    records: Sequence[Record],
    decoded: Sequence[Event | DecodeError] | None = None,
    columns: tuple[list[Any], ...] | None = None,
) -> tuple[IncomingBatch, list[tuple[Record, DecodeError]]]:
    """The records' valid events as a batch, and each other record with why it is not one.
    `decoded`: the records' events when they were decoded already (the event-time merge);
    `columns`: their `record_columns` when made already."""
    if isinstance(records, RecordColumns) and decoded is None:
        return _read_columns(records)
    partitions, offsets, timestamps, keys, values = columns or record_columns(records)
    if decoded is None:
        events, rows, errors = read_events(values)
        undecodable = [(records[i], exc) for i, exc in errors]
    else:
        rows = [i for i, e in enumerate(decoded) if isinstance(e, Event)]
        events = EventBatch.of([decoded[i] for i in rows])  # type: ignore[misc]
        undecodable = [(r, e) for r, e in zip(records, decoded, strict=True)
                       if isinstance(e, DecodeError)]  # fmt: skip
    if len(rows) < len(records):
        partitions, offsets, timestamps, keys, values = (
            [column[i] for i in rows] for column in (partitions, offsets, timestamps, keys, values)
        )  # fmt: skip
    if not all(values):  # a tombstone (None) is kept as empty bytes
        values = [value or b"" for value in values]
    return IncomingBatch(events, partitions, offsets, timestamps, keys, values), undecodable


def _read_columns(
    records: RecordColumns,
) -> tuple[IncomingBatch, list[tuple[Record, DecodeError]]]:
    """`read_incoming` of polled columns: the values read where they lie in the fetched
    bytes, a key or value cut only when a dead letter reads it."""
    starts, ends = records.value_at, records.value_ends()
    events, rows, errors = read_block(records.data, starts, ends, records.values())
    undecodable: list[tuple[Record, DecodeError]] = [(records[i], exc) for i, exc in errors]
    kept = records if len(rows) == len(records) else records.take(rows)
    incoming = IncomingBatch(
        events, kept.partitions.tolist(), kept.offsets.tolist(), kept.timestamps.tolist(),
        kept.keys(), cast(Sequence[bytes], kept.values(empty_null=True)),  # (tombstone: b"")
        arrays=(kept.partitions, kept.offsets),
    )  # fmt: skip
    return incoming, undecodable


_COLUMNS = ("partition", "offset", "timestamp", "key", "value")


def record_columns(records: Sequence[Record]) -> tuple[list[Any], ...]:
    """The records' partitions, offsets, timestamps, keys and values, one list each. Records
    that are named tuples (kafka-python's `ConsumerRecord`; a poll's are all of one type)
    are transposed by one `zip` in C: 107 -> 67 ns a record on a 2,000-record batch."""
    fields: tuple[str, ...] = getattr(type(records[0]), "_fields", ()) if records else ()
    if all(f in fields for f in _COLUMNS):
        transposed = list(zip(*records, strict=True))
        return tuple(list(transposed[fields.index(f)]) for f in _COLUMNS)
    return (
        [r.partition for r in records], [r.offset for r in records],
        [r.timestamp for r in records], [r.key for r in records], [r.value for r in records],
    )  # fmt: skip
