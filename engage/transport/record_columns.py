"""A poll's records as columns over the fetched bytes, with no object per record.

Why: the consumer reads a record's partition, offset, timestamp and value, and its key only
to dead-letter it. Made into kafka-python's `ConsumerRecord`s (a 13-field tuple, a key and a
value `bytes` each), a MovieLens record cost ~760 ns on the consumer thread before engage
saw it, `record_columns` ~120 more to take the tuples apart again, and the event reader then
joined the values back into one buffer. Here a fetched batch stays one `bytes` with the
records' places in it as numpy columns (the scan in fetched_batches.py finds them); the
event reader reads the values where they lie, and a record object is made only for what is
looked at one by one (a dead letter, the event-time merge).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from engage.transport.base import Headers, PlainRecord


class Spans(Sequence[bytes | None]):
    """Byte strings of one buffer by start and length (-1: None, or b"" with `empty_null`),
    cut when read."""

    __slots__ = ("at", "data", "empty_null", "size")

    def __init__(self, data: bytes, at: np.ndarray, size: np.ndarray, empty_null: bool) -> None:
        self.data, self.at, self.size, self.empty_null = data, at, size, empty_null

    def __len__(self) -> int:
        return len(self.at)

    @overload
    def __getitem__(self, i: int) -> bytes | None: ...
    @overload
    def __getitem__(self, i: slice) -> Spans: ...
    def __getitem__(self, i: int | slice) -> bytes | Spans | None:
        if isinstance(i, slice):
            return Spans(self.data, self.at[i], self.size[i], self.empty_null)
        n = int(self.size[i])
        if n < 0:
            return b"" if self.empty_null else None
        a = int(self.at[i])
        return self.data[a : a + n]


class RecordColumns(Sequence[PlainRecord]):
    """Records of one topic: `partitions`, `offsets`, `timestamps` (ms), their keys and values
    as places in `data` (`*_at`, `*_size`; size -1: null), and their headers as lists when any
    record has some. Indexing makes the record (`PlainRecord`); `take` and slices keep
    columns."""

    __slots__ = (
        "data",
        "held_headers",
        "key_at",
        "key_size",
        "offsets",
        "partitions",
        "timestamps",
        "topic",
        "value_at",
        "value_size",
    )  # fmt: skip

    def __init__(
        self, topic: str, data: bytes, partitions: np.ndarray, offsets: np.ndarray,
        timestamps: np.ndarray, key_at: np.ndarray, key_size: np.ndarray,
        value_at: np.ndarray, value_size: np.ndarray,
        held_headers: list[Any] | None = None,
    ) -> None:  # fmt: skip
        self.topic, self.data = topic, data
        self.partitions, self.offsets, self.timestamps = partitions, offsets, timestamps
        self.key_at, self.key_size = key_at, key_size
        self.value_at, self.value_size = value_at, value_size
        self.held_headers = held_headers  # each record's headers; None: no record has any

    @classmethod
    def empty(cls, topic: str = "") -> RecordColumns:
        none = np.zeros(0, dtype=np.int64)
        return cls(topic, b"", none, none, none, none, none, none, none)

    @classmethod
    def of_records(cls, records: Sequence[Any]) -> RecordColumns:
        """Records that are objects already (a batch kafka-python read its own way)."""
        if not records:
            return cls.empty()
        pieces: list[bytes] = []
        at = 0
        places: list[list[int]] = [[], [], [], []]  # key at, key size, value at, value size
        for r in records:
            for k, blob in ((0, r.key), (2, r.value)):
                places[k].append(at)
                places[k + 1].append(-1 if blob is None else len(blob))
                if blob:
                    pieces.append(blob)
                    at += len(blob)
        headers: list[Any] = [list(r.headers or ()) for r in records]
        key_at, key_size, value_at, value_size = (np.array(c, dtype=np.int64) for c in places)
        return cls(
            records[0].topic, b"".join(pieces),
            np.array([r.partition for r in records], dtype=np.int64),
            np.array([r.offset for r in records], dtype=np.int64),
            np.array([r.timestamp for r in records], dtype=np.int64),
            key_at, key_size, value_at, value_size, headers if any(headers) else None,
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[RecordColumns]) -> RecordColumns:
        """The records of `parts`, in order, over one buffer."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        starts = np.cumsum([0, *(len(p.data) for p in parts[:-1])])
        held = None
        if any(p.held_headers is not None for p in parts):
            held = [p._headers(i) for p in parts for i in range(len(p))]
        return cls(
            parts[0].topic, b"".join(p.data for p in parts),
            np.concatenate([p.partitions for p in parts]),
            np.concatenate([p.offsets for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.key_at + s for p, s in zip(parts, starts, strict=True)]),
            np.concatenate([p.key_size for p in parts]),
            np.concatenate([p.value_at + s for p, s in zip(parts, starts, strict=True)]),
            np.concatenate([p.value_size for p in parts]), held,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.offsets)

    def take(self, rows: Sequence[int] | np.ndarray | slice) -> RecordColumns:
        """The records at `rows` (indices, a boolean mask or a slice), in that order."""
        pick: slice | np.ndarray = rows if isinstance(rows, slice) else np.asarray(rows)
        if isinstance(pick, np.ndarray):
            pick = np.flatnonzero(pick) if pick.dtype == np.bool_ else pick.astype(np.intp)
        held = self.held_headers
        if held is not None:
            rows_at = range(len(self))[pick] if isinstance(pick, slice) else pick.tolist()
            held = [held[k] for k in rows_at]
        return RecordColumns(
            self.topic, self.data, self.partitions[pick], self.offsets[pick],
            self.timestamps[pick], self.key_at[pick], self.key_size[pick],
            self.value_at[pick], self.value_size[pick], held,
        )  # fmt: skip

    @overload
    def __getitem__(self, i: int) -> PlainRecord: ...
    @overload
    def __getitem__(self, i: slice) -> RecordColumns: ...
    def __getitem__(self, i: int | slice) -> PlainRecord | RecordColumns:
        if isinstance(i, slice):
            return self.take(i)
        if i < 0:
            i += len(self)
        return PlainRecord(
            self.topic, int(self.partitions[i]), int(self.offsets[i]),
            int(self.timestamps[i]), self.keys()[i], self.values()[i], self._headers(i),
        )  # fmt: skip

    def __iter__(self) -> Iterator[PlainRecord]:
        return (self[i] for i in range(len(self)))

    def _headers(self, i: int) -> Headers:
        return [] if self.held_headers is None else self.held_headers[i]

    def keys(self) -> Spans:
        return Spans(self.data, self.key_at, self.key_size, empty_null=False)

    def values(self, empty_null: bool = False) -> Spans:
        """The values (a null one: None, or b"" with `empty_null`), cut when read."""
        return Spans(self.data, self.value_at, self.value_size, empty_null)

    def value_ends(self) -> np.ndarray:
        """Where each value ends in `data` (a null one: where it would begin)."""
        return self.value_at + np.maximum(self.value_size, 0)
