"""A batch of valid events as columns: what the consumer's hot path reads instead of objects.

Why: the consumer's front end made a pydantic `Event` per record, then read its attributes
back into lists for admission, the fold and the score messages: ~2 us an event of the
consumer thread's ~16. A compiled reader (`features.event_reader`) fills these columns
straight from the messages; the offline module and the tests, which hold `Event` objects,
get the same columns from `EventBatch.of`. Indexing a batch makes the `Event` of a row
(for the rare paths that want one: a refusal, a shown row), equal to what validation makes.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, overload

import numpy as np

from features.events import SCHEMA_VERSION, Event, EventType

_new = object.__new__
_set = object.__setattr__
_OPTIONAL = ("item_id", "session_id", "value", "context")


def assemble_event(
    event_id: str, user_id: str, ts: int, event_type: EventType, item_id: str | None,
    session_id: str | None, value: float | None, context: dict[str, Any] | None, source: str,
) -> Event:  # fmt: skip
    """The `Event` validation makes of a message with these (already valid) fields, made
    without validating again: the same fields, and as fields given the optional ones that
    are not None (as for a message without nulls), so it compares and encodes alike."""
    fields = {
        "event_id": event_id, "user_id": user_id, "ts": ts, "event_type": event_type,
        "item_id": item_id, "session_id": session_id, "value": value, "context": context,
        "source": source, "schema_version": SCHEMA_VERSION,
    }  # fmt: skip
    given = {"event_id", "user_id", "ts", "event_type", "source", "schema_version"}
    given.update(name for name in _OPTIONAL if fields[name] is not None)
    event = _new(Event)
    _set(event, "__dict__", fields)
    _set(event, "__pydantic_fields_set__", given)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


Row = TypeVar("Row")


class Rows(Sequence[Row]):
    """Columns read as a sequence of rows: `row(i)` makes row `i` (for the rare path that
    wants one), `take(rows)` a batch of some, and a slice is a `take`."""

    @abstractmethod
    def row(self, index: int) -> Row: ...

    @abstractmethod
    def take(self, rows: Sequence[int]) -> Self: ...

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> Self: ...

    def __getitem__(self, index: int | slice) -> Row | Self:
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        return self.row(index)

    def __iter__(self) -> Iterator[Row]:
        return (self.row(i) for i in range(len(self)))


@dataclass(frozen=True)
class CodedColumns:
    """A batch's user and item ids as codes, and its types, times and values as arrays, as
    the compiled reader found them. Ids: each distinct id once, in the order of its first row,
    and each row's code (-1: the row has no item). Why: the reader finds them with a hash a
    row, and the fold's tables then look up and allocate per distinct id (~200 users and
    ~1,100 items in a 2,000-event MovieLens batch), not per row; the arrays spare the fold
    making them again from the lists."""

    users: list[str]
    user_codes: np.ndarray  # int64, one a row
    items: list[str]
    item_codes: np.ndarray  # int64, one a row, -1 for none
    type_index: np.ndarray  # int64: each row's type, its index in `tuple(EventType)`
    ts: np.ndarray  # int64
    values: np.ndarray  # float64, NaN where the event has none
    #: Each row's context facts (`vector.context_fact_columns`), (n, N_CONTEXT_FACTS).
    context_facts: np.ndarray | None = None
    #: The session ids as the user and item ids are (None: not read as codes).
    sessions: list[str] | None = None
    session_codes: np.ndarray | None = None  # int64, one a row, -1 for none


@dataclass(eq=False)
class EventBatch(Rows[Event]):
    """Events as one list per field, row `i` of each being event `i`."""

    event_ids: list[str]
    user_ids: list[str]
    ts: list[int]
    event_types: list[EventType]
    item_ids: list[str | None]
    session_ids: list[str | None]
    values: list[float | None]
    contexts: Sequence[dict[str, Any] | None]  # (a read batch's: `event_reader.ReadContexts`)
    sources: list[str]
    #: The reader's codes and arrays (`CodedColumns`); None after a row changed or was
    #: taken, and for batches made from `Event`s.
    codes: CodedColumns | None = field(default=None, repr=False, kw_only=True)

    @classmethod
    def of(cls, events: Sequence[Event]) -> EventBatch:
        """The columns of `events` (a batch is returned as it is)."""
        if isinstance(events, EventBatch):
            return events
        return cls(
            [e.event_id for e in events], [e.user_id for e in events],
            [e.ts for e in events], [e.event_type for e in events],
            [e.item_id for e in events], [e.session_id for e in events],
            [e.value for e in events], [e.context for e in events],
            [e.source for e in events],
        )  # fmt: skip

    def _columns(self) -> tuple[Sequence[Any], ...]:
        return (
            self.event_ids, self.user_ids, self.ts, self.event_types, self.item_ids,
            self.session_ids, self.values, self.contexts, self.sources,
        )  # fmt: skip

    def take(self, rows: Sequence[int]) -> Self:
        """The batch of rows `rows`, in that order (a column that makes its rows when read,
        `event_reader.ReadContexts`, is taken without making them)."""
        return type(self)(*(_taken(column, rows) for column in self._columns()))

    def __len__(self) -> int:
        return len(self.event_ids)

    def items_by_user(self) -> tuple[dict[str, set[str]], set[str]]:
        """Each user's items in the batch (a user with none: an empty set), users in the
        order of their first row, and every item: what the batch reads. From the reader's
        codes, one sort of the distinct (user, item) pairs, not a dict and set step a row."""
        codes = self.codes
        if codes is None:
            by_user: dict[str, set[str]] = {}
            for user, item_id in zip(self.user_ids, self.item_ids, strict=True):
                wanted = by_user.setdefault(user, set())
                if item_id is not None:
                    wanted.add(item_id)
            return by_user, {i for i in self.item_ids if i is not None}
        width = len(codes.items) + 1  # item code + 1: 0 is "no item"
        pairs = np.sort(codes.user_codes * width + (codes.item_codes + 1))
        pairs = pairs[np.diff(pairs, prepend=-1) != 0]  # (np.unique: 150 us, this 15)
        user_of, item_of = np.divmod(pairs, width)  # sorted by user code: first-row order
        starts = np.flatnonzero(np.diff(user_of, prepend=-1))
        names = np.array([None, *codes.items], dtype=object)[item_of]
        ends = [*starts[1:].tolist(), len(pairs)]
        users = codes.users
        by_user = {}
        for user, start, end in zip(user_of[starts].tolist(), starts.tolist(), ends, strict=True):
            first = start + int(item_of[start] == 0)  # the "no item" pair sorts first
            by_user[users[user]] = set(names[first:end].tolist())
        return by_user, set(codes.items)

    def row(self, index: int) -> Event:
        return assemble_event(*(column[index] for column in self._columns()))


def _taken(column: Sequence[Any], rows: Sequence[int]) -> Any:
    subset = getattr(column, "subset", None)
    return subset(rows) if subset is not None else [column[r] for r in rows]
