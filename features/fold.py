"""A compiled batch of `MemoryState.step`: the same features and state, bit for bit, per batch.

`fold(state, events, params)` does for a list of events exactly what
`features.pipeline.MemoryState.step` does per event: the interaction vector from the state
before the event, `apply_event` on the user, `apply_item_delta` on the item, the propensity
vector after. A cheap Python pre-pass turns the events into columns (rows, codes, the seen-item
flags, `context_columns`); one numba kernel then loops over the events. The state is held in a
`FoldState`: float64 tables in the layouts of `features.fold_layout` (users, items), with
`dict` import/export so that the dicts equal today's `State` dicts exactly, including which
keys exist (a per-field "set" mask: `apply_event` creates some keys with the value 0.0).

Exactly equal, not close: the kernel is compiled without fastmath and mirrors every operation
of features/aggregates.py and features/vector.py in the same order: CPython's `max(a, b)` is
`b if b > a else a`, `min` likewise; `x ** y` is libm `pow` with run-time operands (see
`features.fold_layout`); `round()` of the item rater delta is `np.rint` (half to even); `sum()`
over a genre list is sequential (compensated, as CPython does from 3.12, when run there).
tests/test_fold.py compares everything with `MemoryState.step` using `==`.

Events are applied as given: admission (duplicates, lateness) is the caller's, as with `step`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, is_not
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from features import fold_layout as L
from features.aggregates import Applied, FeatureParams, State
from features.closed_sessions import ClosedSessions
from features.event_batch import EventBatch
from features.events import Event, EventType
from features.genre_rows import GenreRows
from features.items import ItemMeta
from features.vector import context_columns

if TYPE_CHECKING:
    from features.pipeline import MemoryState

#: CPython >= 3.12 sums floats with Neumaier compensation (`sum()` of the genre fields).
NEUMAIER_SUM = sys.version_info >= (3, 12)
_N_ITEM = len(L.ITEM_FIELDS)
_N_SESSION = len(L.SESSION_FIELDS)
_N_GENRES = len(L.GENRE_CODE)


# --------------------------------------------------------------------------- state


class FoldState:
    """Users, their item sets, items and item metadata, in numpy tables.

    `users[row]` is a user's numeric state in `fold_layout.USER_FIELDS` order and
    `user_set[row]` marks which of those fields exist in the dict form; `cs_id[row]` is the
    current session id (None: no such key). Items likewise (`items`, `item_set`), with their
    metadata as rows (`item_year`, 0 if unknown; `item_genres`, the genre codes in the
    metadata's order, -1 padded; `item_n_genres`; `item_genre_mask` over GENRES). `meta` is the
    item_id -> ItemMeta source (as `MemoryState.meta`, held, not copied); a touched item's
    metadata row is refreshed from it at every `fold` call. Tables grow by doubling; a row is
    never freed. `fold` mutates the tables in place, event by event.
    """

    def __init__(self, meta: dict[str, ItemMeta] | None = None, capacity: int = 1024) -> None:
        capacity = max(int(capacity), 1)
        self.meta: dict[str, ItemMeta] = meta if meta is not None else {}  # not copied
        self.user_index: dict[str, int] = {}
        self.user_ids: list[str] = []
        self.users = np.zeros((capacity, len(L.USER_FIELDS)), dtype=np.float64)
        self.user_set = np.zeros((capacity, len(L.USER_FIELDS)), dtype=np.uint8)
        self.cs_id: list[str | None] = []
        self.user_items: dict[str, set[str]] = {}
        self.item_index: dict[str, int] = {}
        self.item_ids: list[str] = []
        self.items = np.zeros((capacity, _N_ITEM), dtype=np.float64)
        self.item_set = np.zeros((capacity, _N_ITEM), dtype=np.uint8)
        self.item_year = np.zeros(capacity, dtype=np.float64)
        self.item_n_genres = np.zeros(capacity, dtype=np.int64)
        self.item_genres = np.full((capacity, 4), -1, dtype=np.int64)
        self.item_genre_mask = np.zeros((capacity, _N_GENRES), dtype=np.float64)
        self._item_meta: list[ItemMeta | None] = []  # what each metadata row was filled from
        self._genre_rows = GenreRows(L.GENRE_CODE)

    # -- rows

    def user_row(self, user_id: str) -> int:
        """The user's row, allocated (empty state) on first sight."""
        row = self.user_index.get(user_id)
        return self.user_rows([user_id])[0] if row is None else row

    def user_rows(self, user_ids: Sequence[str]) -> list[int]:
        """`user_row` of each of `user_ids`, new ones allocated together (`map`s in C: no
        bytecode a user; ~850 users a batch of 1M synthetic events, twice a batch)."""
        rows, added = _rows_of(self.user_index, self.user_ids, user_ids)
        if added:
            self.cs_id.extend(repeat(None, added))
            if (size := _room(len(self.users), len(self.user_ids))) is not None:
                self.users = _grow(self.users, size)
                self.user_set = _grow(self.user_set, size)
        return rows

    def item_row(self, item_id: str) -> int:
        """The item's row, allocated (empty state, metadata from `meta`) on first sight."""
        row = self.item_index.get(item_id)
        return self.item_rows([item_id])[0] if row is None else row

    def item_rows(self, item_ids: Sequence[str]) -> list[int]:
        """The rows of distinct `item_ids`: new ones allocated, and every one's metadata row
        refreshed from `meta` if that changed (one numpy update for all of them)."""
        filled_from = self._item_meta
        rows, added = _rows_of(self.item_index, self.item_ids, item_ids)
        filled_from.extend(repeat(None, added))
        metas = list(map(self.meta.get, item_ids))
        filled = map(filled_from.__getitem__, rows)
        stale = list(compress(range(len(rows)), map(is_not, metas, filled)))
        if (size := _room(len(self.items), len(self.item_ids))) is not None:
            self.items = _grow(self.items, size)
            self.item_set = _grow(self.item_set, size)
            self.item_year = _grow(self.item_year, size)
            self.item_n_genres = _grow(self.item_n_genres, size)
            self.item_genres = _grow(self.item_genres, size, fill=-1)
            self.item_genre_mask = _grow(self.item_genre_mask, size)
        if stale:
            self._set_meta_rows([rows[k] for k in stale], [metas[k] for k in stale])
        return rows

    def _set_meta_rows(self, rows: list[int], metas: list[ItemMeta | None]) -> None:
        genres = self._genre_rows
        which = genres.of([m.genres if m is not None else () for m in metas])
        width = genres.codes.shape[1]
        if width > self.item_genres.shape[1]:
            wider = np.full((len(self.item_genres), width), -1, dtype=np.int64)
            wider[:, : self.item_genres.shape[1]] = self.item_genres
            self.item_genres = wider
        at = np.array(rows, dtype=np.int64)
        self.item_year[at] = [float(m.year or 0) if m is not None else 0.0 for m in metas]
        self.item_n_genres[at] = genres.counts[which]
        self.item_genres[at] = -1
        self.item_genres[at, :width] = genres.codes[which]
        self.item_genre_mask[at] = genres.masks[which]
        for row, meta in zip(rows, metas, strict=True):
            self._item_meta[row] = meta

    def set_meta(self, item_id: str, meta: ItemMeta | None) -> None:
        if meta is None:
            self.meta.pop(item_id, None)
        else:
            self.meta[item_id] = meta
        if item_id in self.item_index:
            self._set_meta_rows([self.item_index[item_id]], [meta])

    # -- dict form

    def load_user(self, user_id: str, state: State, items: set[str] | None = None) -> None:
        """Replace the user's state with `state` (today's dict form) and, if given, its items."""
        row = self.user_row(user_id)
        values, present = np.zeros(len(L.USER_FIELDS)), np.zeros(len(L.USER_FIELDS), np.uint8)
        cs_id: str | None = None
        for key, value in state.items():
            if key == L.SESSION_ID_FIELD:
                cs_id = str(value)
                continue
            col = L.USER_COLUMN.get(key)
            if col is None:
                raise ValueError(f"features.fold: user field {key!r} is not in the layout")
            values[col], present[col] = float(value), 1
        self.users[row], self.user_set[row], self.cs_id[row] = values, present, cs_id
        if items is not None:
            self.user_items[user_id] = set(items)

    def export_user(self, user_id: str) -> State:
        """The user's state as today's dict (only the fields that exist); {} if unknown."""
        row = self.user_index.get(user_id)
        if row is None:
            return {}
        out: State = {}
        if self.cs_id[row] is not None:
            out[L.SESSION_ID_FIELD] = self.cs_id[row]  # type: ignore[assignment]
        values, present = self.users[row].tolist(), self.user_set[row]
        for col in np.flatnonzero(present).tolist():
            out[L.USER_FIELDS[col]] = values[col]
        return out

    def set_item_states(
        self, item_ids: Sequence[str], values: np.ndarray, present: np.ndarray
    ) -> None:
        """Replace the states of distinct `item_ids` (values and presence flags in layout
        order, as `features.item_shards.LoadedItems` sums them) in one numpy update."""
        rows = self.item_rows(item_ids)
        self.items[rows] = values
        self.item_set[rows] = present

    def load_item(self, item_id: str, state: State) -> None:
        row = self.item_row(item_id)
        values, present = np.zeros(_N_ITEM), np.zeros(_N_ITEM, np.uint8)
        for key, value in state.items():
            col = L.ITEM_COLUMN.get(key)
            if col is None:
                raise ValueError(f"features.fold: item field {key!r} is not in the layout")
            values[col], present[col] = float(value), 1  # type: ignore[arg-type]
        self.items[row], self.item_set[row] = values, present

    def export_item(self, item_id: str) -> State:
        row = self.item_index.get(item_id)
        if row is None:
            return {}
        values, present = self.items[row].tolist(), self.item_set[row]
        return {L.ITEM_FIELDS[c]: values[c] for c in np.flatnonzero(present).tolist()}

    def users_dict(self) -> dict[str, State]:
        return {user: self.export_user(user) for user in self.user_ids}

    def items_dict(self) -> dict[str, State]:
        return {item: self.export_item(item) for item in self.item_ids}

    @classmethod
    def from_memory(cls, memory: MemoryState) -> FoldState:
        """A FoldState holding a MemoryState's users, item sets, items and metadata."""
        state = cls(meta=memory.meta, capacity=max(len(memory.users), len(memory.items), 1))
        for user, fields in memory.users.items():
            state.load_user(user, fields, memory.user_items.get(user))
        for user, seen in memory.user_items.items():
            state.user_items[user] = set(seen)
        for item, fields in memory.items.items():
            state.load_item(item, fields)
        return state


def _rows_of(index: dict[str, int], ids: list[str], wanted: Sequence[str]) -> tuple[list[int], int]:
    """The rows of `wanted` in `index`, the new ones appended to `index` and `ids` in order of
    first sight (`map`s and `compress` in C: no bytecode an id); how many were new."""
    rows = list(map(index.get, wanted))
    if None not in rows:
        return rows, 0  # type: ignore[return-value]
    new = list(dict.fromkeys(compress(wanted, map(is_, rows, repeat(None)))))
    start = len(ids)
    index.update(zip(new, range(start, start + len(new)), strict=True))
    ids.extend(new)
    return list(map(index.__getitem__, wanted)), len(new)


def _room(capacity: int, rows: int) -> int | None:
    """The doubled capacity a table needs to hold `rows` (None: it holds them already)."""
    if rows <= capacity:
        return None
    while capacity < rows:
        capacity = max(2 * capacity, 16)
    return capacity


def _grow(table: np.ndarray, size: int | None = None, fill: int = 0) -> np.ndarray:
    shape = (size or max(2 * len(table), 16), *table.shape[1:])
    out = np.full(shape, fill, dtype=table.dtype)
    out[: len(table)] = table
    return out


# --------------------------------------------------------------------------- output


@dataclass
class FoldOutput:
    """What `fold` produced for its n events (rows in event order).

    Strings are interned per call: `closed_code` and `session_ids` index `strings`. Item
    deltas are in `fold_layout.ITEM_FIELDS` order with a mask of the fields the event's
    `Applied.item_delta` has; `item_deltas` are their per-item sums over the call, accumulated
    in event order from 0.0 (as consumer/batch.py sums them), for `item_ids`.
    `sessions` are the session_fields of each touched user's current session at the end.
    """

    before: np.ndarray  # float64 (n, len(INTERACTION_FEATURES)): the state before each event
    after: np.ndarray  # float64 (n, len(PROPENSITY_FEATURES)): the state right after
    strings: Sequence[str]
    closed: np.ndarray  # bool (n,): the event closed a session
    closed_code: np.ndarray  # int64 (n,): its id (-1 if none)
    closed_fields: np.ndarray  # float64 (n, len(SESSION_FIELDS)): its session_fields
    item_delta: np.ndarray  # float64 (n, len(ITEM_FIELDS))
    item_delta_set: np.ndarray  # bool (n, len(ITEM_FIELDS))
    item_loc: np.ndarray  # int64 (n,): the event's item in `item_ids` (-1: none)
    new_item: np.ndarray  # bool (n,)
    user_loc: np.ndarray  # int64 (n,): the event's user in `user_ids`
    user_ids: list[str]  # the call's users, in order of first appearance
    session_ids: list[str]  # each one's current session id at the end
    sessions: np.ndarray  # float64 (len(user_ids), len(SESSION_FIELDS))
    item_ids: list[str]  # the call's items, in order of first appearance
    item_deltas: np.ndarray  # float64 (len(item_ids), len(ITEM_FIELDS))
    item_deltas_set: np.ndarray  # bool (len(item_ids), len(ITEM_FIELDS))

    def __len__(self) -> int:
        return len(self.closed)

    def closed_session(self, i: int) -> tuple[str, State] | None:
        if not self.closed[i]:
            return None
        fields = dict(zip(L.SESSION_FIELDS, self.closed_fields[i].tolist(), strict=True))
        return self.strings[int(self.closed_code[i])], fields  # type: ignore[return-value]

    def closed_block(self) -> ClosedSessions:
        """The sessions the call's events closed (`closed_session` of each such row, in row
        order), by user and session id, their fields left as the fold's rows."""
        rows = np.flatnonzero(self.closed)
        users = list(map(self.user_ids.__getitem__, self.user_loc[rows].tolist()))
        sids = list(map(self.strings.__getitem__, self.closed_code[rows].tolist()))
        return ClosedSessions(users, sids, self.closed_fields[rows])

    def new_items_by_user(self) -> dict[str, set[str]]:
        """Each user's items first touched in the call (`Applied.new_item`), grouped a user
        at a time (MovieLens: nearly every event's item is new to its user)."""
        rows = np.flatnonzero(self.new_item)  # (a fresh item is never None)
        if not len(rows):
            return {}
        locs = self.user_loc[rows]
        order = np.argsort(locs, kind="stable")
        rows, locs = rows[order], locs[order]
        starts = np.flatnonzero(np.r_[True, locs[1:] != locs[:-1]])
        items = list(map(self.item_ids.__getitem__, self.item_loc[rows].tolist()))
        bounds = [*starts.tolist(), len(rows)]
        return {
            self.user_ids[loc]: set(items[a:b])
            for loc, a, b in zip(locs[starts].tolist(), bounds, bounds[1:], strict=False)
        }

    def item_delta_dict(self, i: int) -> dict[str, float]:
        values, present = self.item_delta[i].tolist(), self.item_delta_set[i]
        return {L.ITEM_FIELDS[c]: values[c] for c in np.flatnonzero(present).tolist()}

    def applied(self, i: int) -> Applied:
        """Event i's `Applied`, as `apply_event` returned it."""
        return Applied(self.closed_session(i), self.item_delta_dict(i), bool(self.new_item[i]))

    def item_deltas_dict(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for k, item in enumerate(self.item_ids):
            values, present = self.item_deltas[k].tolist(), self.item_deltas_set[k]
            out[item] = {L.ITEM_FIELDS[c]: values[c] for c in np.flatnonzero(present).tolist()}
        return out

    def sessions_dict(self) -> dict[tuple[str, str], State]:
        """(user, current session id) -> session_fields, for every user of the call."""
        return {
            (user, sid): dict(zip(L.SESSION_FIELDS, row, strict=True))
            for user, sid, row in zip(
                self.user_ids, self.session_ids, self.sessions.tolist(), strict=True
            )
        }


# --------------------------------------------------------------------------- fold


def fold(
    state: FoldState, events: Sequence[Event], params: FeatureParams | None = None
) -> FoldOutput:
    """`MemoryState.step` for each of `events` in order, on `state` (mutated in place)."""
    params = params or FeatureParams()
    n = len(events)
    cols = _columns(state, events)
    strings = cols.strings
    before = np.zeros((n, L.N_INTERACTION), dtype=np.float64)
    after = np.zeros((n, L.N_PROPENSITY), dtype=np.float64)
    closed = np.zeros(n, dtype=np.bool_)
    closed_code = np.full(n, -1, dtype=np.int64)
    closed_fields = np.zeros((n, _N_SESSION), dtype=np.float64)
    delta = np.zeros((n, _N_ITEM), dtype=np.float64)
    delta_set = np.zeros((n, _N_ITEM), dtype=np.bool_)
    new_item = np.zeros(n, dtype=np.bool_)
    acc = np.zeros((len(cols.item_ids), _N_ITEM), dtype=np.float64)
    acc_set = np.zeros((len(cols.item_ids), _N_ITEM), dtype=np.bool_)
    ucode = cols.user_codes
    if n:
        _kernel(
            state.users, state.user_set, state.items, state.item_set, state.item_year,
            state.item_n_genres, state.item_genres, state.item_genre_mask,
            cols.row, cols.loc, cols.item_row, cols.item_loc, cols.ts, cols.ts_day, cols.kind,
            cols.value, cols.engaged, cols.labelled, cols.sid, cols.new_id, cols.seen,
            cols.context, ucode,
            L.USER_COLS, L.ITEM_COLS, L.consts(params, NEUMAIER_SUM), L.RATING_CODE,
            L.TYPE_COLS, L.TYPE_STEP, L.COUNT_COLS, L.GC_COLS, L.GE_COLS, L.GR_COLS,
            L.EE_COLS, L.EE_ALPHA, L.ER_COLS, L.ER_ALPHA,
            before, after, closed, closed_code, closed_fields,
            delta, delta_set, new_item, acc, acc_set,
        )  # fmt: skip
    session_ids = [strings[c] for c in ucode.tolist()]
    for row, sid in zip(cols.user_rows.tolist(), session_ids, strict=True):
        state.cs_id[row] = sid
    return FoldOutput(
        before=before,
        after=after,
        strings=strings,
        closed=closed,
        closed_code=closed_code,
        closed_fields=closed_fields,
        item_delta=delta,
        item_delta_set=delta_set,
        item_loc=cols.item_loc,
        new_item=new_item,
        user_loc=cols.loc,
        user_ids=cols.user_ids,
        session_ids=session_ids,
        sessions=_session_rows(state.users[cols.user_rows]),
        item_ids=cols.item_ids,
        item_deltas=acc,
        item_deltas_set=acc_set,
    )


@dataclass
class _Columns:
    """The pre-pass: one call's events as kernel columns."""

    strings: Sequence[str]  # the session ids, by code (`SessionIds`)
    user_ids: list[str]  # the call's users in order of first appearance ("loc")
    user_rows: np.ndarray  # their rows in the state
    user_codes: np.ndarray  # their current cs_id's code (-1: none)
    item_ids: list[str]
    row: np.ndarray  # per event: the user's row, loc, the item's row and loc (-1: no item)
    loc: np.ndarray
    item_row: np.ndarray
    item_loc: np.ndarray
    ts: np.ndarray  # float(event.ts)
    ts_day: np.ndarray  # float(event.ts // MS_PER_DAY)
    kind: np.ndarray  # fold_layout.TYPE_CODE
    value: np.ndarray  # the rating (0.0 for other types)
    engaged: np.ndarray  # 1.0 / 0.0
    labelled: np.ndarray
    sid: np.ndarray  # code of event.session_id (-1: None)
    new_id: np.ndarray  # code of the id a session this event starts gets
    seen: np.ndarray  # the item is in the user's item set (or earlier in this call)
    context: np.ndarray  # context_columns (context_values of each event), (n, 6)


#: `fold_layout.TYPE_CODE` of each type by its index in `tuple(EventType)` (the reader's).
_LAYOUT_TYPE_CODE = np.array([L.TYPE_CODE[t] for t in EventType], dtype=np.int64)


def _columns(state: FoldState, events: Sequence[Event]) -> _Columns:
    batch = EventBatch.of(events)
    n = len(batch)
    user_col, item_col, ts_col = batch.user_ids, batch.item_ids, batch.ts
    kinds, sids = batch.event_types, batch.session_ids

    codes = batch.codes
    if codes is not None:  # the reader's: its distinct ids, in the same order
        user_ids, loc_arr = codes.users, codes.user_codes
        loc = loc_arr.tolist()
    else:
        user_ids = list(dict.fromkeys(user_col))
        user_loc = {user: k for k, user in enumerate(user_ids)}
        loc = [user_loc[user] for user in user_col]
        loc_arr = np.array(loc, dtype=np.int64)
    cs_id, user_items = state.cs_id, state.user_items
    user_rows = state.user_rows(user_ids)
    seen_sets = list(map(user_items.setdefault, user_ids, iter(set, None)))  # (a new set each)
    # Session ids as codes: the users' current ones, and the id each event would give a
    # session it starts (its session_id, else str(ts)).
    current = list(map(cs_id.__getitem__, user_rows))
    if codes is not None and codes.session_codes is not None:
        assert codes.sessions is not None
        strings, user_codes, new_arr = _coded_session_codes(
            current, codes.sessions, codes.session_codes, ts_col
        )
        sid = np.where(codes.session_codes < 0, -1, new_arr)
    else:
        strings, user_codes, new_codes = _session_codes(current, sids, ts_col)
        new_arr = np.array(new_codes, dtype=np.int64)
        sid = np.where(np.array([s is None for s in sids], dtype=np.bool_), -1, new_arr)
    if codes is not None:
        item_ids, item_loc_arr = codes.items, codes.item_codes
    else:
        item_ids = list(dict.fromkeys(i for i in item_col if i is not None))
        item_loc_of = {item: k for k, item in enumerate(item_ids)}
        item_loc_arr = np.array(
            [-1 if i is None else item_loc_of[i] for i in item_col], dtype=np.int64
        )
    item_rows = state.item_rows(item_ids)  # allocates; refreshes metadata
    seen = _seen_rows(loc, item_col, seen_sets)

    if codes is not None:  # the reader's arrays
        ts, kind = codes.ts, _LAYOUT_TYPE_CODE[codes.type_index]
        value = np.where(kind == L.RATING_CODE, codes.values, 0.0)
    else:
        type_code, rating = L.TYPE_CODE, EventType.RATING
        values = [v if k is rating else 0.0 for v, k in zip(batch.values, kinds, strict=True)]
        ts = np.array(ts_col, dtype=np.int64)
        kind = np.array([type_code[k] for k in kinds], dtype=np.int64)
        value = np.array(values, dtype=np.float64)
    item_rows_arr = np.array([*item_rows, -1], dtype=np.int64)  # [-1] for item_loc -1
    return _Columns(
        strings=strings,
        user_ids=user_ids,
        user_rows=np.array(user_rows, dtype=np.int64),
        user_codes=np.array(user_codes, dtype=np.int64),
        item_ids=item_ids,
        row=np.array(user_rows, dtype=np.int64)[loc_arr] if n else loc_arr,
        loc=loc_arr,
        item_row=item_rows_arr[item_loc_arr],
        item_loc=item_loc_arr,
        ts=ts.astype(np.float64),
        ts_day=(ts // L.MS_PER_DAY).astype(np.float64),  # an int: whole days
        kind=kind,
        value=value,
        engaged=L.engaged_column(kind, value),
        labelled=L.labelled_column(kind),
        sid=sid,
        new_id=new_arr,
        seen=seen,
        context=context_columns(batch.contexts, ts, None if codes is None else codes.context_facts),
    )


def _seen_rows(
    loc: list[int], item_col: Sequence[str | None], seen_sets: list[set[str]]
) -> np.ndarray:
    """Per row: its item is in its user's item set, or earlier in the batch; every item is
    added to its user's set. (Set operations a user over the reader's codes measured no
    faster: 0.13 - 0.27 against 0.12 - 0.17 us an event of MovieLens.)"""
    seen = [False] * len(loc)
    for e, (k, item) in enumerate(zip(loc, item_col, strict=True)):
        if item is not None:
            items = seen_sets[k]
            if item in items:
                seen[e] = True
            else:
                items.add(item)
    return np.array(seen, dtype=np.bool_)


class SessionIds(Sequence[str]):
    """Session ids by code: the interned ones (`named`), then, at `len(named) + row`, the
    id a session started by event `row` gets, `str(ts[row])`, made only when read."""

    def __init__(self, named: list[str], ts: Sequence[int]) -> None:
        self.named, self.ts = named, ts

    def __len__(self) -> int:
        return len(self.named) + len(self.ts)

    def __getitem__(self, code: int) -> str:  # type: ignore[override]
        base = len(self.named)
        return self.named[code] if code < base else str(self.ts[code - base])


def _session_codes(
    current: list[str | None], sids: Sequence[str | None], ts: Sequence[int]
) -> tuple[Sequence[str], list[int], list[int]]:
    """The session ids of a call as codes (the kernel compares codes where
    `continues_session` compares ids): their texts by code, each user's current id's code
    (-1: none), each event's new session's code.

    Codes are equal where the ids are. An event with no session_id starts a session named
    `str(ts)`, but only an explicit session_id is ever compared with a current id, and a
    time's digits can equal one only if it is all digits: if none is, each such event gets a
    code of its own and its text is made only if it is read (the string per event was a
    tenth of the fold's pre-pass). Else every id is interned."""
    explicit = [s for s in sids if s is not None]
    if any(s.isdigit() for s in dict.fromkeys(explicit)):
        new_ids = [str(t) if s is None else s for s, t in zip(sids, ts, strict=True)]
        codes = {text: k for k, text in enumerate(dict.fromkeys([*current, *new_ids]))}
        strings: Sequence[str] = list(codes)
        new_codes = [codes[text] for text in new_ids]
    else:
        codes = {text: k for k, text in enumerate(dict.fromkeys([*current, *explicit]))}
        strings = SessionIds(list(codes), ts)
        base = len(codes)
        new_codes = [base + k if s is None else codes[s] for k, s in enumerate(sids)]
    user_codes = [codes[c] if c else -1 for c in current]  # "" is falsy: continues_session
    return strings, user_codes, new_codes


def _coded_session_codes(
    current: list[str | None], names: list[str], row_codes: np.ndarray, ts: Sequence[int]
) -> tuple[Sequence[str], list[int], np.ndarray]:
    """`_session_codes` from the reader's codes (`names`: the distinct session ids in the
    order of their first row; `row_codes`: each row's, -1 for none): the same codes, with no
    step a row."""
    if any(name.isdigit() for name in names):  # (the rare case: ids a time could equal)
        sids = [None if c < 0 else names[c] for c in row_codes.tolist()]
        strings, user_codes, new_codes = _session_codes(current, sids, ts)
        return strings, user_codes, np.array(new_codes, dtype=np.int64)
    texts = list(dict.fromkeys([*current, *names]))
    codes = dict(zip(texts, range(len(texts)), strict=True))  # (`map`s in C: none a user)
    base = len(codes)
    named = np.fromiter(map(codes.__getitem__, names), np.int64, len(names))
    named = np.append(named, 0)  # [-1]: unused
    new = np.where(row_codes < 0, base + np.arange(len(row_codes)), named[row_codes])
    user_codes = np.fromiter(map(codes.__getitem__, current), np.int64, len(current))
    for none in (None, ""):  # no current session ("" is falsy: continues_session)
        if none in codes:
            user_codes[user_codes == codes[none]] = -1
    return SessionIds(texts, ts), user_codes.tolist(), new


def _session_rows(rows: np.ndarray) -> np.ndarray:
    """`aggregates.session_fields` of packed user rows."""
    c = L.USER_COLS
    n = rows[:, c.cs_n]
    out = np.empty((len(rows), _N_SESSION), dtype=np.float64)
    columns = (c.cs_start, c.cs_end, c.cs_n, c.cs_eng, c.cs_step, None, c.cs_rn, c.cs_rs)
    for k, col in enumerate(columns):
        out[:, k] = np.where(n == 1, 1.0, 0.0) if col is None else rows[:, col]
    return out


# --------------------------------------------------------------------------- the kernel
# Every helper mirrors one Python expression; comments name it. A user is row `r` of the table
# `U` (and of `US`, its "field exists" mask), an item row `i` of `IT`; C, IC: column tuples;
# K: constants (fold_layout). Tables are indexed in 2-D, never sliced into row views: a view
# costs two atomic reference-count updates, which were most of the kernel's time. For the same
# reason the helpers that take the tables are inlined: a call passing ~20 arrays counted their
# references too (the kernel alone over ml-latest-small: ~1.2 -> ~0.7 us an event).


@njit(cache=True, nogil=True)
def _max(a, b):  # CPython max(a, b)
    return b if b > a else a


@njit(cache=True, nogil=True)
def _min(a, b):  # CPython min(a, b)
    return b if b < a else a


@njit(cache=True, nogil=True)
def _w(U, US, r, col, value):  # user[field] = value
    U[r, col] = value
    US[r, col] = 1


@njit(cache=True, nogil=True)
def _rate(hits, trials, prior, K):  # vector._rate
    return (hits + prior * K.rate_prior_weight) / (trials + K.rate_prior_weight)


@njit(cache=True, nogil=True)
def _continues(U, r, C, K, current, sid, ts):  # aggregates.continues_session
    if current < 0:
        return False
    if sid >= 0:
        return sid == current
    return ts - U[r, C.cs_end] <= K.session_gap


@njit(cache=True, nogil=True, inline="always")
def _genre_sum(U, r, cols, G, i, n_genres, K):  # sum(user.get(f"xx:{g}", 0.0) for g in ...)
    if n_genres == 0:
        return 0.0
    total = 0.0 + U[r, cols[G[i, 0]]]  # int 0 + the first float
    comp = 0.0
    for k in range(1, n_genres):
        x = U[r, cols[G[i, k]]]
        if K.neumaier != 0.0:  # CPython >= 3.12: Neumaier's compensated sum
            t = total + x
            if abs(total) >= abs(x):
                comp += (total - t) + x
            else:
                comp += (x - t) + total
            total = t
        else:
            total += x
    if K.neumaier != 0.0 and comp != 0.0 and math.isfinite(comp):
        total += comp
    return total


@njit(cache=True, nogil=True, inline="always")
def _user_values(
    U, r, C, K, count_cols, ee_cols, ee_alpha, er_cols, er_alpha, ts, in_session, out, e
):  # fmt: skip
    """vector.user_values into out[e, :N_USER_FEATURES]; returns (rate, mean, slope,
    mean_year), the last two being vector.year_line."""
    n, lab, eng = U[r, C.n], U[r, C.lab], U[r, C.eng]
    r_n, r_sum, r_sq = U[r, C.r_n], U[r, C.r_sum], U[r, C.r_sq]
    mean = (r_sum + K.prior_mean * K.prior_weight) / (r_n + K.prior_weight)
    var = r_sq / r_n - (r_sum / r_n) ** K.two if r_n > 1 else 0.0
    dec_ts = U[r, C.dec_ts]
    fade = K.half ** (_max(0.0, ts - dec_ts) / K.half_life) if dec_ts else 0.0
    dec_e, dec_n = U[r, C.dec_e] * fade, U[r, C.dec_n] * fade
    last, first = U[r, C.last_ts], U[r, C.first_ts]
    sessions, closed = U[r, C.sess], U[r, C.cl_n]
    dr_ts = U[r, C.dr_ts]
    mood = K.half ** (_max(0.0, ts - dr_ts) / K.mood_half_life) if dr_ts else 0.0
    dr_s, dr_n = U[r, C.dr_s] * mood, U[r, C.dr_n] * mood
    s_rn = U[r, C.cs_rn] if in_session else 0.0
    s_rs = U[r, C.cs_rs] if in_session else 0.0
    rate = _rate(eng, lab, K.rate_prior, K)
    last_fade = K.half ** (_max(0.0, ts - last) / K.day_half_life) if last else 0.0
    slope, mean_year = 0.0, 0.0  # year_line
    y_n = U[r, C.y_n]
    if not y_n < 2:
        mean_year = U[r, C.y_s] / y_n
        y_var = U[r, C.y_ss] / y_n - mean_year * mean_year
        cov = U[r, C.y_r] / y_n - mean_year * U[r, C.y_rs] / y_n
        slope = cov / (_max(y_var, 0.0) + K.year_var_prior)
    umpw = K.user_mean_prior_weight
    out[e, 0] = n
    out[e, 1] = lab
    out[e, 2] = eng
    out[e, 3] = rate
    out[e, 4] = r_n
    out[e, 5] = mean
    out[e, 6] = math.sqrt(_max(var, 0.0))
    out[e, 7] = dec_e
    out[e, 8] = _rate(dec_e, dec_n, K.rate_prior, K)
    out[e, 9] = (ts - first) / K.ms_per_day if first else 0.0
    out[e, 10] = _max(0.0, ts - last) / K.ms_per_hour if last else -1.0
    out[e, 11] = U[r, C.items]
    out[e, 12] = sessions
    out[e, 13] = (sessions - 1) / sessions if sessions else 0.0
    out[e, 14] = U[r, C.cl_bounce] / closed if closed else 0.0
    out[e, 15] = U[r, C.cl_dur] / closed / K.ms_per_min if closed else 0.0
    for k in range(6):
        out[e, 16 + k] = U[r, count_cols[k]]
    out[e, 22] = U[r, C.cs_n] if in_session else 0.0
    out[e, 23] = U[r, C.cs_eng] if in_session else 0.0
    out[e, 24] = U[r, C.cs_step] if in_session else 0.0
    out[e, 25] = _max(0.0, ts - U[r, C.cs_start]) / K.ms_per_min if in_session else 0.0
    out[e, 26] = U[r, C.r_last] if r_n else -1.0
    out[e, 27] = (dr_s + mean * umpw) / (dr_n + umpw)
    out[e, 28] = dr_n
    out[e, 29] = s_rn
    out[e, 30] = (s_rs + mean * umpw) / (s_rn + umpw)
    k = 31
    for j in range(len(ee_cols)):
        out[e, k] = U[r, ee_cols[j]] + (1.0 - ee_alpha[j]) ** lab * rate
        k += 1
    for j in range(len(er_cols)):
        out[e, k] = U[r, er_cols[j]] + (1.0 - er_alpha[j]) ** r_n * mean
        k += 1
    out[e, k] = U[r, C.r_half] / r_n if r_n else -1.0
    out[e, k + 1] = U[r, C.r_top] / r_n if r_n else -1.0
    out[e, k + 2] = U[r, C.dd_n] * last_fade
    out[e, k + 3] = slope
    return rate, mean, slope, mean_year


@njit(cache=True, nogil=True, inline="always")
def _item_values(
    U, r, IT, i, IC, C, K, year, n_genres, G, GM, gc_cols, ge_cols, gr_cols, seen, ts,
    user_rate, user_mean, slope, mean_year, out, e, k,
):  # fmt: skip
    """vector.item_values into out[e, k:] (item row i of IT, genres row i of G and GM)."""
    i_n, i_rn, i_lab = IT[i, IC.n], IT[i, IC.r_n], IT[i, IC.lab]
    i_sum = IT[i, IC.r_sum]
    i_mean = (i_sum + K.prior_mean * K.prior_weight) / (i_rn + K.prior_weight)
    i_var = IT[i, IC.r_sq] / i_rn - (i_sum / i_rn) ** K.two if i_rn > 1 else 0.0
    i_rater = (IT[i, IC.rater] + K.prior_mean * K.prior_weight) / (i_rn + K.prior_weight)
    g_count = _genre_sum(U, r, gc_cols, G, i, n_genres, K)
    g_eng = _genre_sum(U, r, ge_cols, G, i, n_genres, K)
    g_rsum = _genre_sum(U, r, gr_cols, G, i, n_genres, K)
    lab = U[r, C.lab]
    umpw = K.user_mean_prior_weight
    out[e, k] = i_n
    out[e, k + 1] = i_mean
    out[e, k + 2] = _rate(IT[i, IC.eng], i_lab, K.rate_prior, K)
    out[e, k + 3] = year
    out[e, k + 4] = float(n_genres)
    out[e, k + 5] = g_count
    out[e, k + 6] = g_eng
    out[e, k + 7] = _rate(g_eng, g_count, user_rate, K)
    out[e, k + 8] = g_count / (lab * n_genres) if lab and n_genres else 0.0
    out[e, k + 9] = 1.0 if seen else 0.0
    k += 10
    for j in range(GM.shape[1]):
        out[e, k + j] = GM[i, j]
    k += GM.shape[1]
    out[e, k] = math.sqrt(_max(i_var, 0.0))
    out[e, k + 1] = i_rater
    out[e, k + 2] = i_mean - i_rater
    out[e, k + 3] = 1970.0 + ts / K.ms_per_year - year if year else -1.0
    out[e, k + 4] = ts / K.ms_per_day - IT[i, IC.ts_d] / i_n if i_n else -1.0
    out[e, k + 5] = (g_rsum + user_mean * umpw) / (g_count + umpw)
    out[e, k + 6] = user_mean - i_mean
    out[e, k + 7] = user_mean + slope * ((year - K.year_center) - mean_year) if year else user_mean


@njit(cache=True, nogil=True)
def _kernel(
    U, US, items, item_set, item_year, item_n_genres, item_genres, item_genre_mask,
    ev_row, ev_loc, ev_irow, ev_iloc, ev_ts, ev_tsday, ev_type, ev_value, ev_eng, ev_lab,
    ev_sid, ev_new_id, ev_seen, ctx, ucode,
    C, IC, K, rating_code, type_cols, type_step, count_cols, gc_cols, ge_cols, gr_cols,
    ee_cols, ee_alpha, er_cols, er_alpha,
    before, after, closed, closed_code, closed_fields,
    delta, delta_set, new_item, acc, acc_set,
):  # fmt: skip
    n_user = 31 + len(ee_cols) + len(er_cols) + 4  # N_USER_FEATURES
    n_ctx = ctx.shape[1]
    n_item_fields = items.shape[1]
    # An event without an item reads row 0 of these: an empty item, no metadata.
    no_item = np.zeros((1, n_item_fields), dtype=np.float64)
    no_genres = np.full((1, 1), -1, dtype=np.int64)
    no_mask = np.zeros((1, item_genre_mask.shape[1]), dtype=np.float64)
    half = K.half
    for e in range(len(ev_row)):
        r, loc, ir = ev_row[e], ev_loc[e], ev_irow[e]
        ts, sid, current = ev_ts[e], ev_sid[e], ucode[loc]
        if ir >= 0:
            IT, G, GM, i = items, item_genres, item_genre_mask, ir
            year, n_genres = item_year[ir], item_n_genres[ir]
        else:
            IT, G, GM, i = no_item, no_genres, no_mask, 0
            year, n_genres = 0.0, 0
        seen = ev_seen[e]

        # interaction_vector on the state before the event
        cont = _continues(U, r, C, K, current, sid, ts)
        rate, mean, slope, mean_year = _user_values(
            U, r, C, K, count_cols, ee_cols, ee_alpha, er_cols, er_alpha, ts, cont, before, e
        )
        for j in range(n_ctx):
            before[e, n_user + j] = ctx[e, j]
        _item_values(
            U, r, IT, i, IC, C, K, year, n_genres, G, GM, gc_cols, ge_cols, gr_cols, seen, ts,
            rate, mean, slope, mean_year, before, e, n_user + n_ctx,
        )  # fmt: skip

        # apply_event
        engaged, labelled = ev_eng[e], ev_lab[e]
        kind = ev_type[e]
        is_rating = kind == rating_code
        rating = ev_value[e]
        if not cont:
            if current >= 0:
                closed[e] = True
                closed_code[e] = current
                cs_n = U[r, C.cs_n]
                closed_fields[e, 0] = U[r, C.cs_start]
                closed_fields[e, 1] = U[r, C.cs_end]
                closed_fields[e, 2] = cs_n
                closed_fields[e, 3] = U[r, C.cs_eng]
                closed_fields[e, 4] = U[r, C.cs_step]
                closed_fields[e, 5] = 1.0 if cs_n == 1 else 0.0
                closed_fields[e, 6] = U[r, C.cs_rn]
                closed_fields[e, 7] = U[r, C.cs_rs]
                _w(U, US, r, C.cl_n, U[r, C.cl_n] + 1)
                _w(U, US, r, C.cl_bounce, U[r, C.cl_bounce] + (1.0 if U[r, C.cs_n] == 1 else 0.0))
                _w(U, US, r, C.cl_dur, U[r, C.cl_dur] + (U[r, C.cs_end] - U[r, C.cs_start]))
            current = ev_new_id[e]  # event.session_id, else str(event.ts)
            ucode[loc] = current
            _w(U, US, r, C.cs_start, ts)
            _w(U, US, r, C.cs_end, ts)
            _w(U, US, r, C.cs_n, 0.0)
            _w(U, US, r, C.cs_eng, 0.0)
            _w(U, US, r, C.cs_step, 0.0)
            _w(U, US, r, C.cs_rn, 0.0)
            _w(U, US, r, C.cs_rs, 0.0)
            _w(U, US, r, C.sess, U[r, C.sess] + 1)
        _w(U, US, r, C.cs_n, U[r, C.cs_n] + 1)
        _w(U, US, r, C.cs_eng, U[r, C.cs_eng] + engaged)
        _w(U, US, r, C.cs_end, _max(U[r, C.cs_end], ts))
        _w(U, US, r, C.cs_step, _max(U[r, C.cs_step], type_step[kind]))
        if is_rating:
            _w(U, US, r, C.cs_rn, U[r, C.cs_rn] + 1)
            _w(U, US, r, C.cs_rs, U[r, C.cs_rs] + rating)
        # user_rating_mean before this rating
        rater_mean = (U[r, C.r_sum] + K.prior_mean * K.prior_weight) / (
            U[r, C.r_n] + K.prior_weight
        )

        _w(U, US, r, C.n, U[r, C.n] + 1)
        _w(U, US, r, type_cols[kind], U[r, type_cols[kind]] + 1)
        if labelled:
            _w(U, US, r, C.lab, U[r, C.lab] + 1)
            _w(U, US, r, C.eng, U[r, C.eng] + engaged)
            for j in range(len(ee_cols)):
                a = ee_alpha[j]
                _w(U, US, r, ee_cols[j], U[r, ee_cols[j]] * (1.0 - a) + a * engaged)
        if is_rating:
            _w(U, US, r, C.r_n, U[r, C.r_n] + 1)
            _w(U, US, r, C.r_sum, U[r, C.r_sum] + rating)
            _w(U, US, r, C.r_sq, U[r, C.r_sq] + rating * rating)
            for j in range(len(er_cols)):
                a = er_alpha[j]
                _w(U, US, r, er_cols[j], U[r, er_cols[j]] * (1.0 - a) + a * rating)
            if rating % 1.0:
                _w(U, US, r, C.r_half, U[r, C.r_half] + 1)
            if rating >= 5.0:
                _w(U, US, r, C.r_top, U[r, C.r_top] + 1)
            if year:
                y = year - K.year_center
                _w(U, US, r, C.y_n, U[r, C.y_n] + 1)
                _w(U, US, r, C.y_s, U[r, C.y_s] + y)
                _w(U, US, r, C.y_ss, U[r, C.y_ss] + y * y)
                _w(U, US, r, C.y_r, U[r, C.y_r] + y * rating)
                _w(U, US, r, C.y_rs, U[r, C.y_rs] + rating)
            anchor = U[r, C.dr_ts]
            if ts >= anchor:
                _w(U, US, r, C.r_last, rating)
            factor = half ** (_max(0.0, ts - anchor) / K.mood_half_life) if anchor else 1.0
            _w(U, US, r, C.dr_s, U[r, C.dr_s] * factor + rating)
            _w(U, US, r, C.dr_n, U[r, C.dr_n] * factor + 1.0)
            _w(U, US, r, C.dr_ts, _max(anchor, ts))

        last = U[r, C.last_ts]
        if labelled:
            anchor = U[r, C.dec_ts]
            factor = half ** (_max(0.0, ts - anchor) / K.half_life) if anchor else 1.0
            _w(U, US, r, C.dec_e, U[r, C.dec_e] * factor + engaged)
            _w(U, US, r, C.dec_n, U[r, C.dec_n] * factor + 1.0)
            _w(U, US, r, C.dec_ts, _max(anchor, ts))
        day_fade = half ** (_max(0.0, ts - last) / K.day_half_life) if last else 1.0
        _w(U, US, r, C.dd_n, U[r, C.dd_n] * day_fade + 1.0)
        first = U[r, C.first_ts]
        _w(U, US, r, C.first_ts, _min(first if first else ts, ts))
        _w(U, US, r, C.last_ts, _max(last, ts))

        if labelled:
            for k in range(n_genres):
                g = G[i, k]
                _w(U, US, r, gc_cols[g], U[r, gc_cols[g]] + 1)
                _w(U, US, r, ge_cols[g], U[r, ge_cols[g]] + engaged)
                if is_rating:
                    _w(U, US, r, gr_cols[g], U[r, gr_cols[g]] + rating)
        fresh = ir >= 0 and not seen
        new_item[e] = fresh
        if fresh:
            _w(U, US, r, C.items, U[r, C.items] + 1)

        # the item delta, apply_item_delta, and the call's per-item sums
        if ir >= 0:
            delta[e, IC.n] = 1.0
            delta_set[e, IC.n] = True
            delta[e, IC.ts_d] = ev_tsday[e]
            delta_set[e, IC.ts_d] = True
            if labelled:
                delta[e, IC.lab] = 1.0
                delta_set[e, IC.lab] = True
                delta[e, IC.eng] = engaged
                delta_set[e, IC.eng] = True
            if is_rating:
                delta[e, IC.r_n] = 1.0
                delta_set[e, IC.r_n] = True
                delta[e, IC.r_sum] = rating
                delta_set[e, IC.r_sum] = True
                delta[e, IC.r_sq] = rating * rating
                delta_set[e, IC.r_sq] = True
                delta[e, IC.rater] = np.rint(rater_mean * K.quantum) / K.quantum
                delta_set[e, IC.rater] = True
            il = ev_iloc[e]
            for c in range(n_item_fields):
                if delta_set[e, c]:
                    items[ir, c] = items[ir, c] + delta[e, c]
                    item_set[ir, c] = 1
                    acc[il, c] = acc[il, c] + delta[e, c]
                    acc_set[il, c] = True

        # propensity_vector on the state after the event
        cont = _continues(U, r, C, K, current, sid, ts)
        _user_values(
            U, r, C, K, count_cols, ee_cols, ee_alpha, er_cols, er_alpha, ts, cont, after, e
        )
        for j in range(n_ctx):
            after[e, n_user + j] = ctx[e, j]
