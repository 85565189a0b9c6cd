"""A batch's per-key records held as columns, read as a mapping only when someone asks.

Why: a batch of 1M synthetic events touches ~850 users and closes ~770 sessions; a dict a
record, made on the consumer thread and walked again on the committing thread, cost 1-3 us a
record. The store writes such records from their columns (`PackedUsers`, `ClosedSessions`,
`ScoreHashes`); a reader that wants one record as a dict (the Cluster journal, the in-memory
store, the tests) gets it made from its row.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ColumnarMapping(Mapping[K, V]):
    """Records in rows; a subclass gives its keys in row order (`__iter__`, `__len__`) and a
    row's record (`_record`). A key's row is found in an index of the keys' positions, made
    on first use (Mapping's own `__contains__` would make the record to answer)."""

    _index: dict[K, int] | None = None

    def _positions(self) -> dict[K, int]:
        if self._index is None:
            self._index = dict(zip(self, range(len(self)), strict=True))
        return self._index

    def _record(self, row: int) -> V:
        """The record in row `row`."""
        raise NotImplementedError

    def __contains__(self, key: object) -> bool:
        return key in self._positions()

    def __getitem__(self, key: K) -> V:
        return self._record(self._positions()[key])
