"""The sessions a batch's events closed, held as a block of numbers, not a dict a session.

Why: a batch of the synthetic funnel closes a session every ~5 events, and each was a dict of
its eight fields made on the consumer thread, walked again on the committing thread to write
its JSON (~2.8 us a session between them). Here they stay the fold's float rows; a reader
that wants a session's fields as a dict (the Cluster journal, the in-memory store, the tests)
gets one made when it asks, and the store writes the JSON from the rows
(consumer/session_values.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from features.aggregates import State
from features.columnar import ColumnarMapping
from features.fold_layout import SESSION_FIELDS


class ClosedSessions(ColumnarMapping[tuple[str, str], State]):
    """(user, session id) -> its `session_fields`, as `rows` in SESSION_FIELDS order. Given
    a key twice (a session id used again, closed again in the batch), it holds it as a dict
    would: where it came first, with the fields it came with last."""

    def __init__(self, users: list[str], sessions: list[str], rows: np.ndarray) -> None:
        if len(users) != len(sessions) or rows.shape != (len(users), len(SESSION_FIELDS)):
            raise ValueError("ClosedSessions needs a user, a session id and a row a session")
        self._index = dict(zip(zip(users, sessions, strict=True), range(len(users)), strict=True))
        if len(self._index) < len(users):
            kept = list(self._index.values())
            users, sessions = [users[i] for i in kept], [sessions[i] for i in kept]
            rows = rows[kept]
            self._index = dict(zip(self._index, range(len(kept)), strict=True))
        self.users, self.sessions, self.rows = users, sessions, rows

    def _record(self, row: int) -> State:
        return dict(zip(SESSION_FIELDS, self.rows[row].tolist(), strict=True))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return zip(self.users, self.sessions, strict=True)

    def __len__(self) -> int:
        return len(self.users)
