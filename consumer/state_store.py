"""The consumer's state-store seam: what it asks of the place its state and offsets live.

Per batch the runner asks the store to `begin` a batch for the partitions it holds records of
(from then on, a write by anyone else to those partitions' progress fences the batch), reads
the stored `offsets` (its positions must match them), `load`s the users and items the batch
touches into the fold's tables, and `commit`s the batch's writes together with its offsets,
all or nothing. `Fenced` says another writer moved a partition; `OutcomeUnknown` (a
ConnectionError) says the commit may or may not have landed, so the runner re-reads the
offsets before it goes on.

Two stores implement it: `consumer.store.RedisStateStore` (one MULTI/EXEC on one Redis node)
and `MemoryStateStore` here (dicts, for tests that need no servers). `tests/test_state_store.py`
runs one suite over both. A Redis Cluster store (issue 17) is the next implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from features import recent_ids
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams, State
from features.distinct import sorted_distinct
from features.item_shards import LoadedItems, ShardWrites
from features.items import ItemMeta
from features.state_codec import load_packed_users
from features.stream import StreamState

NO_OFFSET = -1


class Fenced(Exception):
    """Another writer changed a partition's stored offset: this batch must not land."""


def advance_columns(offsets: dict[int, int], partitions: np.ndarray, done: np.ndarray) -> None:
    """Raise each partition's offset in `offsets` to the largest offset of that partition in
    the columns `partitions` and `done` (int64 arrays, row by row): what a batch commits as
    its progress. A numpy pass a partition, not a Python step a record."""
    if not len(partitions):
        return
    for partition in sorted_distinct(partitions).tolist():
        top = int(done[partitions == partition].max())
        if top > offsets.get(partition, NO_OFFSET):
            offsets[partition] = top


@dataclass
class Loaded:
    """What a batch read besides the fold's tables: each user's packed state (to write back
    only what changed) and the items' shards (the batch's increments are added to them)."""

    users: dict[str, bytes] = field(default_factory=dict)
    items: LoadedItems = field(default_factory=LoadedItems.empty)
    #: Users whose recent ids were read from the key an older engage kept them in
    #: (`keys.legacy_recent_ids_key`): the batch deletes it as it writes the field.
    legacy_seen: list[str] = field(default_factory=list)


@dataclass
class BatchWrites:
    """Everything one batch writes, applied in one transaction."""

    #: Each changed user's hash fields (`PackedUsers` from a batch; any such mapping).
    user_states: Mapping[str, dict[str, bytes | str]] = field(default_factory=dict)
    user_new_items: dict[str, set[str]] = field(default_factory=dict)
    user_recent_ids: dict[str, bytes] = field(default_factory=dict)  # replaces; recent_ids
    legacy_seen: list[str] = field(default_factory=list)  # as Loaded.legacy_seen
    #: (user, session id) -> its fields (`ClosedSessions` from a batch; any such mapping).
    closed_sessions: Mapping[tuple[str, str], State] = field(default_factory=dict)
    item_shards: ShardWrites = field(default_factory=ShardWrites)  # a partition at a time
    #: Each shown user's served score hash (`ScoreHashes` from a batch; any mapping of users
    #: to their HASH_FIELDS dicts).
    scores: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    leaderboard: dict[str, dict[str, float]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    publish: bytes | None = None
    #: Whole string values SET in the transaction: the live quality, drift and online
    #: calibration states (scoring.live_monitor). Bytes, never mutated once the batch is
    #: built (the next batch folds while the committing thread sends them).
    live: dict[str, bytes] = field(default_factory=dict)


class StoreBatch(Protocol):
    """One batch's view of the store, from `StateStore.begin` to `commit` or `abort`."""

    def offsets(self) -> dict[int, int]:
        """The stored offsets of the batch's partitions (NO_OFFSET: none yet); from this read
        on, a write to them by anyone else fences the batch."""
        ...

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        """Fill `state` with the users, their memberships of the batch's items, and the
        items the batch touches."""
        ...

    def commit(self, writes: BatchWrites) -> None:
        """Apply `writes` and their offsets atomically; `Fenced` if a partition moved."""
        ...

    def abort(self) -> None:
        """Give the batch up: nothing of it lands."""
        ...


class StateStore(Protocol):
    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The stored offsets of `partitions` (NO_OFFSET: none yet)."""
        ...

    def begin(self, partitions: Iterable[int]) -> StoreBatch:
        """Start a batch over `partitions`: a write to their offsets after its `offsets()`
        read fences it."""
        ...

    def own(self, whole_topic: bool) -> None:
        """Whether this consumer now holds every partition of the topic (so nobody else
        writes what it reads: a store may keep a local copy of what it committed)."""
        ...

    def forget(self) -> None:
        """Drop any local copy: the consumer re-seeks to the stored offsets."""
        ...

    def state(self, params: FeatureParams, admission: AdmissionPolicy) -> StreamState:
        """The state the next batch folds over (and `load` fills): empty tables, or a local
        copy's tables that already hold what earlier batches committed."""
        ...


def recent_of(
    users: Sequence[str], user_raws: Sequence[dict[bytes, bytes]],
    fetch_legacy: Callable[[list[str]], list[bytes | None]],
) -> tuple[list[bytes], list[str]]:  # fmt: skip
    """Each user's recent ids from its hash (`recent_ids.FIELD`), and the users whose hash
    lacks the field, theirs read (`fetch_legacy`: the values of their older keys,
    `keys.legacy_recent_ids_key`) in one more round trip: only after an upgrade."""
    recent = recent_ids.in_user_hashes(user_raws)
    legacy = [user for user, value in zip(users, recent, strict=True) if value is None]
    if not legacy:
        return recent, []  # type: ignore[return-value]
    found = iter(fetch_legacy(legacy))
    return [recent_ids.from_stored(next(found)) if v is None else v for v in recent], legacy


def fill_tables(
    state: StreamState,
    users: Sequence[str],
    user_raws: Sequence[dict[bytes, bytes]],
    memberships: dict[str, set[str]],
    recent: Sequence[bytes],
    items: Sequence[str],
    item_raws: Sequence[dict[bytes, bytes]],
    meta: dict[str, ItemMeta],
) -> Loaded:
    """Put what a store read into the fold's tables (the one place both stores do it): users'
    packed states, the items each user has touched (of the batch's), the duplicate guard's
    recent ids, the items' summed shards, and the item metadata source."""
    tables = state.tables
    loaded = dict(zip(users, load_packed_users(tables, users, user_raws), strict=True))
    for user, ids in zip(users, recent, strict=True):
        tables.user_items[user] = memberships.get(user, set())
        state.recent[user] = ids
    tables.meta = meta  # item rows read their metadata from it, once per item
    shards = LoadedItems(items, item_raws)
    tables.set_item_states(items, shards.totals, shards.total_present)
    return Loaded(loaded, shards)


@dataclass
class _MemoryData:
    users: dict[str, dict[bytes, bytes]] = field(default_factory=dict)  # as HGETALL returns
    user_items: dict[str, set[str]] = field(default_factory=dict)
    recent: dict[str, bytes] = field(default_factory=dict)
    sessions: dict[tuple[str, str], State] = field(default_factory=dict)
    items: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    scores: dict[str, dict[str, str | float]] = field(default_factory=dict)
    leaderboard: dict[str, dict[str, float]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    published: list[bytes] = field(default_factory=list)


class MemoryStateStore:
    """The store in process memory: what Redis holds, as dicts; a partition's offset carries
    a version that `begin` remembers and `commit` compares, as Redis WATCH does."""

    def __init__(self, meta: dict[str, ItemMeta] | None = None) -> None:
        self.data = _MemoryData()
        self.meta: dict[str, ItemMeta] = meta if meta is not None else {}
        self._versions: dict[int, int] = {}

    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return {p: self.data.offsets.get(p, NO_OFFSET) for p in partitions}

    def begin(self, partitions: Iterable[int]) -> _MemoryBatch:
        return _MemoryBatch(self, {p: self._versions.get(p, 0) for p in partitions})

    def own(self, whole_topic: bool) -> None:
        pass  # it is its own copy

    def forget(self) -> None:
        pass

    def state(self, params: FeatureParams, admission: AdmissionPolicy) -> StreamState:
        return StreamState(params=params, admission=admission)

    def set_offset(self, partition: int, offset: int) -> None:
        """Another writer's progress (what a zombie consumer does): fences open batches."""
        self.data.offsets[partition] = offset
        self._versions[partition] = self._versions.get(partition, 0) + 1


class _MemoryBatch:
    def __init__(self, store: MemoryStateStore, versions: dict[int, int]) -> None:
        self.store = store
        self.versions = versions
        self.done = False

    def offsets(self) -> dict[int, int]:
        return self.store.offsets(self.versions)

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        data, users, item_list = self.store.data, list(user_items), list(items)
        memberships = {u: data.user_items.get(u, set()) & user_items[u] for u in users}
        return fill_tables(
            state, users, [dict(data.users.get(u, {})) for u in users], memberships,
            [data.recent.get(u, b"") for u in users], item_list,
            [dict(data.items.get(i, {})) for i in item_list], self.store.meta,
        )  # fmt: skip

    def commit(self, writes: BatchWrites) -> None:
        if self.done:
            raise RuntimeError("this batch was already committed or aborted")
        self.done = True
        store = self.store
        if any(store._versions.get(p, 0) != v for p, v in self.versions.items()):
            raise Fenced(f"offsets of {sorted(self.versions)} were written meanwhile")
        data = store.data
        for user, fields in writes.user_states.items():
            data.users.setdefault(user, {}).update(
                {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
            )
        for user, new_items in writes.user_new_items.items():
            data.user_items.setdefault(user, set()).update(new_items)
        for user, recent in writes.user_recent_ids.items():
            data.recent[user] = recent
        data.sessions.update(writes.closed_sessions)
        for item, shards in writes.item_shards.by_item().items():
            data.items.setdefault(item, {}).update({k.encode(): v for k, v in shards.items()})
        for user, fields in writes.scores.items():
            data.scores.setdefault(user, {}).update(fields)
        for kind, members in writes.leaderboard.items():
            data.leaderboard.setdefault(kind, {}).update(members)
        for partition, offset in writes.offsets.items():
            data.offsets[partition] = offset
            store._versions[partition] = store._versions.get(partition, 0) + 1
        for name, amount in writes.stats.items():
            data.stats[name] = data.stats.get(name, 0) + amount
        if writes.publish is not None:
            data.published.append(writes.publish)

    def abort(self) -> None:
        self.done = True
