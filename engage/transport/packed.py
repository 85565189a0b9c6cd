"""Keyed records whose values lie back to back in one buffer, as the compiled writer wrote them.

Why: a score batch is a thousand messages written into one buffer. Cutting it into a bytes
object per message and then copying each into a Kafka record with its own varints costs
~1.5 us an event on the consumer's one busy thread. Kept whole, the kafka-python transport
frames a partition's records straight from the buffer (engage/transport/record_batches.py);
any other reader sees an ordinary sequence of `(key, value)` pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import overload

import numpy as np


class PackedRecords(Sequence[tuple[bytes, bytes]]):
    """`(keys[i], values[ends[i-1]:ends[i]])` for each record i, in order.

    The keys may come coded (`coded`): each distinct key once and each record's code. A
    score batch's keys are its users', ~5 records a user: what is done per key (the
    partitioner's hash, lengths) is then done per distinct key."""

    def __init__(self, keys: list[bytes], values: bytes | memoryview, ends: np.ndarray) -> None:
        if len(keys) != len(ends):
            raise ValueError("PackedRecords takes one key per value")
        self.keys = keys
        self.values = values
        self.ends = np.asarray(ends, dtype=np.int64)
        #: Each distinct key once, and each record's index into it (`coded`): else the keys.
        self.distinct_keys: list[bytes] = keys
        self.key_codes: np.ndarray | None = None

    @classmethod
    def coded(
        cls,
        distinct_keys: list[bytes],
        codes: np.ndarray,
        values: bytes | memoryview,
        ends: np.ndarray,
    ) -> PackedRecords:
        """Records whose keys are `distinct_keys[codes[i]]`."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) and not 0 <= int(codes.min()) <= int(codes.max()) < len(distinct_keys):
            raise ValueError("a key code outside the distinct keys")
        keys = np.array(distinct_keys, dtype=object)[codes].tolist()
        packed = cls(keys, values, ends)
        packed.distinct_keys, packed.key_codes = distinct_keys, codes
        return packed

    def per_record(self, per_key: Sequence[int]) -> np.ndarray:
        """A value of each distinct key (in `distinct_keys` order) as one a record."""
        values = np.asarray(per_key, dtype=np.int64)
        return values if self.key_codes is None else values[self.key_codes]

    def starts(self) -> np.ndarray:
        out = np.empty_like(self.ends)
        out[:1] = 0
        out[1:] = self.ends[:-1]
        return out

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, bytes]]: ...
    def __getitem__(self, i: int | slice) -> tuple[bytes, bytes] | list[tuple[bytes, bytes]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        start = int(self.ends[i - 1]) if i > 0 else 0
        return self.keys[i], bytes(self.values[start : int(self.ends[i])])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        starts, ends, values = self.starts().tolist(), self.ends.tolist(), self.values
        for key, a, b in zip(self.keys, starts, ends, strict=True):
            yield key, bytes(values[a:b])

    def replaced(self, values: Mapping[int, bytes]) -> PackedRecords:
        """The same records with the values of some rows replaced (one copy of the buffer)."""
        if not values:
            return self
        rows = sorted(values)
        lengths = np.diff(self.ends, prepend=0)
        pieces: list[bytes | memoryview] = []
        whole = memoryview(self.values)
        at = 0
        for row in rows:
            start = int(self.ends[row - 1]) if row > 0 else 0
            pieces += (whole[at:start], values[row])
            at = int(self.ends[row])
            lengths[row] = len(values[row])
        pieces.append(whole[at:])
        out = PackedRecords(self.keys, b"".join(pieces), np.cumsum(lengths))
        out.distinct_keys, out.key_codes = self.distinct_keys, self.key_codes
        return out

    def _key_lengths(self) -> np.ndarray:
        distinct = np.fromiter(map(len, self.distinct_keys), np.int64, len(self.distinct_keys))
        return distinct if self.key_codes is None else distinct[self.key_codes]

    def key_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The keys back to back (uint8) and where each ends."""
        ends = np.cumsum(self._key_lengths())
        return np.frombuffer(b"".join(self.keys) or b"\0", dtype=np.uint8), ends

    def largest(self) -> int:
        """The largest key plus value length of any record (0 when empty)."""
        if not len(self):
            return 0
        return int(np.diff(self.ends, prepend=0).max()) + int(self._key_lengths().max())
