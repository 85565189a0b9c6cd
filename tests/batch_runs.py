"""Driving `BatchScorer` over a log in random batches, as the consumer would, with the state in
memory (tests that compare what batches write)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np

from consumer.batch import Incoming
from consumer.state_store import Loaded
from features.state_codec import STATE_FIELD, packed_user
from features.stream import StreamState

T = TypeVar("T")


def random_batches(rows: Sequence[T], rng: np.random.Generator, most: int) -> Iterator[list[T]]:
    """`rows` cut into consecutive batches of 1 to `most` - 1 rows."""
    a = 0
    while a < len(rows):
        b = min(a + int(rng.integers(1, most)), len(rows))
        yield list(rows[a:b])
        a = b


def loaded_from_tables(state: StreamState, batch: Sequence[Incoming]) -> Loaded:
    """What a store reports loading for `batch`: each user's packed state as the tables hold
    it (b"" for a user they do not)."""
    known = state.tables.user_index
    return Loaded({i.event.user_id: packed_user(state.tables, i.event.user_id)[STATE_FIELD]
                   if i.event.user_id in known else b"" for i in batch})  # fmt: skip
