"""Redis I/O of the consumer: one round trip to read a batch's state, one transaction to write it.

Exactly-once: the last applied offset of each partition is written in the same MULTI/EXEC as
the state the batch changed. The offset keys are WATCHed before the batch's state is read, so
if any other process (a zombie after a rebalance) wrote those partitions meanwhile, EXEC fails
and nothing of this batch lands (`Fenced`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, islice
from operator import itemgetter
from typing import Any

import hiredis
import redis

from consumer import resp_replies
from consumer.item_meta import ItemMetaCache
from consumer.local_state import KeepsLocalCopy, LocalState
from consumer.redis_commands import (
    CommandList,
    PackedCommands,
    as_they_are,
    exec_transaction,
    pairs,
    run_on,
)
from consumer.resp_frames import Same, float_texts, frame_sets
from consumer.resp_replies import RawReplies
from consumer.session_values import session_values
from consumer.state_store import NO_OFFSET, BatchWrites, Fenced, Loaded, fill_tables, recent_of
from features import keys, recent_ids
from features.fold import FoldState
from features.item_shards import shard_field
from features.items import META_FIELDS
from features.state_codec import (
    SESSION_ID_FIELD,
    STATE_FIELD,
    PackedUsers,
    encode_user,
    unpack_spans,
)
from features.stream import StreamState
from scoring.score_record import HASH_FIELDS, ScoreHashes

#: A user hash's fields, as `RedisBatch._load_spans` takes them from a read.
_USER_HASH_FIELDS = (STATE_FIELD, SESSION_ID_FIELD, recent_ids.FIELD)
#: A Cluster that cannot serve a slot right now (failover, resharding): an outage to wait out.
CLUSTER_TROUBLE: tuple[type[Exception], ...] = (
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)
#: What a Redis outage looks like to redis-py callers (refused, reset, timed out, loading, and
#: on a Cluster a slot nobody serves).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    *CLUSTER_TROUBLE,
)


def waitable(exc: BaseException) -> bool:
    """An outage to wait out; refused credentials (a ConnectionError too) need a person."""
    return not isinstance(exc, redis.AuthenticationError)


class OutcomeUnknown(redis.ConnectionError):
    """Redis failed during EXEC: the batch may or may not have been applied."""

    @classmethod
    def of(cls, exc: BaseException) -> OutcomeUnknown:
        return cls(f"EXEC outcome unknown after {type(exc).__name__}: {exc}")


def warm_up() -> None:
    """Load the compiled read of a batch's users (numba's on-disk cache, or a compile on
    first use) now, not in the first batch that reads one."""
    raw = resp_replies.sample({STATE_FIELD: encode_user({})[STATE_FIELD], "x": b""})
    spans, _ = raw.hash_fields(0, 1, _USER_HASH_FIELDS)
    unpack_spans(FoldState(capacity=1), [0], raw.buffer, spans[:, 0])


def stored_offsets(client: redis.Redis, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    parts = list(partitions)
    values = client.mget([keys.offset_key(topic, p) for p in parts]) if parts else []
    return {p: int(v) if v is not None else NO_OFFSET for p, v in zip(parts, values, strict=True)}


def _ranked(key: str, members: Mapping[str, Any]) -> PackedCommands | tuple[Any, ...]:
    """ZADD of a leaderboard's members (~850 a batch of 1M synthetic events): framed with
    each distinct score's text made once (`float_texts`) when every score is a float (hiredis
    made a repr a score, ~0.35 ms a batch); as the command's tuple otherwise."""
    scores = list(members.values())
    if set(map(type, scores)) != {float}:
        return ("ZADD", key, *[part for member, score in members.items()
                               for part in (score, member)])  # fmt: skip
    scored = list(chain.from_iterable(zip(float_texts(scores), members, strict=True)))
    return PackedCommands([frame_sets("ZADD", [key], [scored])], 1)


def _add_packed_users(cmds: CommandList, states: PackedUsers, recent: dict[str, bytes]) -> bool:
    """The usual batch's users as one column each of packed states, session ids and recent
    ids, framed together with no step a user in Python (~850 users a batch of 1M synthetic):
    when every user has recent ids and all or none a session. False if it is not that."""
    users = states.users
    if not users or not all(map(recent.get, users)):
        return False
    without = states.sessions.count(None)
    if 0 < without < len(users):
        return False
    sessions = [Same(SESSION_ID_FIELD), states.sessions] if not without else []
    cmds.add_columns("HSET", keys.user_keys(users), Same(STATE_FIELD), states.blobs, *sessions,
                     Same(recent_ids.FIELD), list(map(recent.__getitem__, users)))  # fmt: skip
    return True


def _add_user_states(
    cmds: CommandList, states: Mapping[str, dict[str, bytes | str]], recent: dict[str, bytes]
) -> None:
    """Each user's state fields and recent ids (if any) as one HSET, the users of the same
    fields framed together. The usual batch, every user the same fields and recent ids, is
    taken as columns, with no step a user in Python (~850 users a batch of 1M synthetic)."""
    if isinstance(states, PackedUsers) and _add_packed_users(cmds, states, recent):
        return
    shapes = set(map(tuple, states.values()))
    if len(shapes) == 1 and len(recent) >= len(states) and all(map(recent.get, states)):
        (names,) = shapes
        if recent_ids.FIELD not in names:
            columns: list[Any] = []
            for name in names:
                columns += (Same(name), list(map(itemgetter(name), states.values())))
            columns += (Same(recent_ids.FIELD), list(map(recent.__getitem__, states)))
            cmds.add_columns("HSET", keys.user_keys(list(states)), *columns)
            return
    grouped: dict[tuple[str, ...], tuple[list[str], list[tuple[Any, ...]]]] = {}
    for (user, fields), key in zip(states.items(), keys.user_keys(list(states)), strict=True):
        seen = recent.get(user)  # the state and the recent ids: one HSET
        row = {**fields, recent_ids.FIELD: seen} if seen else fields
        same_fields = grouped.setdefault(tuple(row), ([], []))  # (framed together)
        same_fields[0].append(key)
        same_fields[1].append(tuple(row.values()))
    for names, (user_keys, rows) in grouped.items():
        cmds.add_rows("HSET", user_keys, names, rows)


class RedisStateStore(KeepsLocalCopy):
    def __init__(
        self, client: redis.Redis, topic: str, session_ttl_s: int, local: LocalState | None = None,
        meta_refresh_s: float = 300.0,
    ) -> None:  # fmt: skip
        self.client = client
        self.topic = topic
        self.session_ttl_s = session_ttl_s
        self.meta = ItemMetaCache(meta_refresh_s)
        self.local = local if local is not None else LocalState(0, 0)

    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return stored_offsets(self.client, self.topic, partitions)

    def offsets_with(
        self, partitions: Iterable[int], values: list[str]
    ) -> tuple[dict[int, int], list[bytes | None]]:
        """The stored offsets of `partitions` and the string values of the keys `values`, in
        one MGET: a state written in the transaction of a partition's offset is read as of
        that same offset (the live quality and calibration states, scoring.live_monitor)."""
        parts = list(partitions)
        names = [keys.offset_key(self.topic, p) for p in parts]
        read = self.client.mget(names + values) if names or values else []
        offsets = {p: int(v) if v is not None else NO_OFFSET
                   for p, v in zip(parts, read[: len(parts)], strict=True)}  # fmt: skip
        return offsets, list(read[len(parts) :])

    def begin(self, partitions: Iterable[int]) -> RedisBatch:
        """A batch over `partitions`; its offsets are WATCHed when it first reads them."""
        return RedisBatch(self, self.client.pipeline(transaction=True), list(partitions))

    def may_overlap(self) -> bool:
        """Whether the next batch may be folded while the last one's EXEC is still under way:
        only over the local copy's tables (it reads from Redis only what they lack, which no
        batch in flight writes) and when they are not about to be dropped and read back."""
        return self.local.holds_tables()


class RedisBatch:
    """One batch on a WATCHing pipeline: reads go to the watched connection (so they see the
    state the fence protects), the writes are one MULTI/EXEC."""

    def __init__(self, store: RedisStateStore, pipe: redis.client.Pipeline, partitions: list[int]):
        self.store = store
        self.pipe = pipe
        self.partitions = partitions
        self.warm = False  # the batch folds over the local copy's tables
        self.watching = False

    def offsets(self) -> dict[int, int]:
        """The partitions' stored offsets, WATCHed first: the batch's EXEC fails if anyone
        writes them after this read. (Every state write moves its partition's offset, so a
        state the batch read before this is still what these offsets cover.)"""
        if not self.partitions or self.watching:  # (WATCH needs a key)
            return self.store.offsets(self.partitions)
        # WATCH and the read in one write on the watching connection: one round trip, not
        # two (after the last commit landed, the consumer thread waits for it: ~0.7 ms a
        # batch on a busy two-core machine, each).
        names = [keys.offset_key(self.store.topic, p) for p in self.partitions]
        pipe = self.pipe
        connection = pipe.connection or pipe.connection_pool.get_connection()
        pipe.connection = connection  # (released by the pipeline's reset)
        try:
            _, values = run_on(connection, [hiredis.pack_command(("WATCH", *names)),
                                            hiredis.pack_command(("MGET", *names))], 2)  # fmt: skip
        except REDIS_DOWN:
            with contextlib.suppress(*REDIS_DOWN):
                pipe.reset()  # give the connection back to the pool
            raise
        pipe.watching = self.watching = True  # (the pipeline's reset UNWATCHes)
        return {p: int(v) if v is not None else NO_OFFSET
                for p, v in zip(self.partitions, values, strict=True)}  # fmt: skip

    def abort(self) -> None:
        self.store.forget()  # the local copy may hold what Redis now lacks, or lack what it has
        with contextlib.suppress(*REDIS_DOWN):  # UNWATCH on a dead connection
            self.pipe.reset()

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        """Fill `state` with what the batch touches and it lacks (all of it, unless `state` is
        the local copy's tables), in one command (consumer/redis_commands.py), not on the
        watched connection (reads need no fence; the client pools connections)."""
        store, local = self.store, self.store.local
        self.warm = warm = local.holds(state)
        users, item_list = list(user_items), list(items)
        read_users = [u for u in users if u not in local.committed] if warm else users
        # Set differences in C (~1,200 distinct items in a 2,000-event batch), each walking
        # `items` (`items - cache.keys()` would walk the whole cache: 0.3 ms a batch).
        read_items = list(items.difference(local.shards.items)) if warm else item_list
        missing_meta = store.meta.to_read(items)
        cmds = CommandList()
        cmds.add_columns("HGETALL", keys.user_keys(read_users))
        if local.trusted:  # the whole set: the tables keep it
            cmds.add_columns("SMEMBERS", keys.user_keys(read_users, ":items"))
            asked, chunks = [], []
        else:
            asked = [(u, sorted(user_items[u])) for u in read_users if user_items[u]]
            chunks = [cmds.add_members("SMISMEMBER", keys.user_items_key(u), its)
                      for u, its in asked]  # fmt: skip
        cmds.add_columns("HGETALL", keys.item_keys(read_items))
        cmds.add_columns("HMGET", keys.item_meta_keys(missing_meta), *map(Same, META_FIELDS))
        n_read = len(read_users)
        sets_at = range(n_read, 2 * n_read) if local.trusted else range(0)
        got = cmds.read(store.client, texts=sets_at)  # (the item sets come as str)
        if isinstance(got, RawReplies):
            if warm and local.trusted and (
                loaded := self._load_spans(state, users, read_users, got, read_items, missing_meta)
            ):  # fmt: skip
                return loaded
            got = got.every(texts=sets_at)
        replies = iter(got)
        user_raws = list(map(pairs, islice(replies, n_read)))
        members: dict[str, set[str]] = {}
        if local.trusted:
            members = dict(zip(read_users, map(set, islice(replies, n_read)), strict=True))
        for (user, its), n in zip(asked, chunks, strict=True):
            hits = [hit for _ in range(n) for hit in next(replies)]
            members[user] = {i for i, hit in zip(its, hits, strict=True) if hit}
        item_raws = [pairs(next(replies)) for _ in read_items]
        store.meta.learn(missing_meta, islice(replies, len(missing_meta)))
        recent, legacy = recent_of(read_users, user_raws, self._legacy_recent_ids)
        if not warm:
            memberships = {u: user_items[u] & members.get(u, set()) for u in users}
            loaded = fill_tables(
                state, users, user_raws, memberships, recent, item_list, item_raws,
                store.meta.known,
            )  # fmt: skip
        else:
            read = [(u, raw, members[u], ids) for u, raw, ids in zip(read_users, user_raws, recent,
                                                                        strict=True)]  # fmt: skip
            loaded = local.add_read(state, store.meta.known, users, read, read_items, item_raws)
        loaded.legacy_seen = legacy
        return loaded

    def _load_spans(
        self, state: StreamState, users: list[str], read_users: list[str], raw: RawReplies,
        read_items: list[str], missing_meta: list[str],
    ) -> Loaded | None:  # fmt: skip
        """`load`'s warm path from the replies as bytes and spans (consumer/resp_replies.py):
        the users' packed states unpacked into the tables from where they lie, no object a
        value but the ones kept. None, with nothing changed, for a user hash of another form
        (fields of an older engage, recent ids elsewhere or in their older form): the
        general path reads those."""
        store, local, tables, n = self.store, self.store.local, state.tables, len(read_users)
        spans, other = raw.hash_fields(0, n, _USER_HASH_FIELDS)
        held = raw.counts(0, n) > 0
        packed, session, seen = spans[:, 0], spans[:, 1], spans[:, 2]
        if other.any() or (held & ((packed[:, 0] < 0) | (seen[:, 0] < 0))).any():
            return None
        sizes = seen[:, 1]
        if len(at := seen[sizes > 0, 0]):  # the recent ids: this codec's, whole pairs
            buffer = raw.buffer
            if (buffer[at] != recent_ids.CODEC[0]).any() or (
                (sizes[sizes > 0] - 1) % recent_ids.PAIR_BYTES
            ).any():  # fmt: skip
                return None
        rows = tables.user_rows(read_users)
        unpack_spans(tables, rows, raw.buffer, packed)
        list(map(tables.cs_id.__setitem__, rows, raw.texts(session)))
        blobs, recent = raw.values(packed), raw.values(seen)
        members = list(map(set, raw.replies(n, 2 * n, "utf-8")))
        k = 2 * n + len(read_items)
        item_raws = list(map(pairs, raw.replies(2 * n, k)))
        store.meta.learn(missing_meta, raw.replies(k, k + len(missing_meta)))
        return local.add_loaded(state, store.meta.known, users, read_users, blobs, members,
                                recent, read_items, item_raws)  # fmt: skip

    def _legacy_recent_ids(self, users: list[str]) -> list[bytes | None]:
        cmds = CommandList()
        for user in users:
            cmds.add("GET", keys.legacy_recent_ids_key(user))
        return cmds.run(self.store.client)

    def commit(
        self, writes: BatchWrites, learn: bool = True,
        before_exec: Callable[[], object] | None = None,
    ) -> None:  # fmt: skip
        """Write the batch and its offsets atomically; raises Fenced if a WATCHed offset moved.
        `learn=False`: the caller already told the local copy (`learn`) and forgets it if
        this fails (the runner commits on a thread while it folds the next batch).
        `before_exec`: called once the transaction is built, before it is sent."""
        pipe, topic, ttl = self.pipe, self.store.topic, self.store.session_ttl_s
        cmds = CommandList()  # the per-user, per-session and per-item writes: one command
        recent, states = writes.user_recent_ids, writes.user_states
        _add_user_states(cmds, states, recent)
        if not recent.keys() <= states.keys():
            for user, seen in recent.items():  # (a user whose every event was refused)
                if seen and user not in states:
                    cmds.add("HSET", keys.user_key(user), recent_ids.FIELD, seen)
        for user in writes.legacy_seen:
            cmds.add("DEL", keys.legacy_recent_ids_key(user))
        new_items = {user: items for user, items in writes.user_new_items.items() if items}
        cmds.add_sets("SADD", keys.user_keys(list(new_items), ":items"),
                      map(sorted, new_items.values()))  # fmt: skip
        closed = writes.closed_sessions
        users, sessions = (list(ids) for ids in zip(*closed, strict=True)) if closed else ([], [])
        values = session_values(closed)
        cmds.add_columns("SET", keys.session_keys(users, sessions), values, Same("EX"), Same(ttl))
        for partition, (items, blobs) in writes.item_shards.partitions.items():
            cmds.add_each("HSET", keys.item_keys(items), shard_field(partition), blobs)
        if writes.scores:  # as columns (score_record.ScoreHashes), every user's HASH_FIELDS
            hashes = ScoreHashes.of_dicts(writes.scores)
            fields: list[Any] = []
            for name, column in zip(HASH_FIELDS, hashes.columns, strict=True):
                fields += (Same(name), column)
            cmds.add_columns("HSET", keys.user_keys(hashes.users, ":score"), *fields)
        commands: list[PackedCommands | tuple[Any, ...]] = [cmds.plain()] if cmds else []
        for kind, members in writes.leaderboard.items():
            if members:
                commands.append(_ranked(keys.leaderboard_key(kind), members))
        for partition, offset in writes.offsets.items():
            commands.append(("SET", keys.offset_key(topic, partition), offset))
        for name, amount in writes.stats.items():
            commands.append(("HINCRBY", keys.stats_key(topic), name, amount))
        for key, value in writes.live.items():
            commands.append(("SET", key, value))
        if writes.publish is not None:
            commands.append(as_they_are("PUBLISH", keys.scores_channel(topic), writes.publish))
        if before_exec is not None:
            before_exec()
        # One write, MULTI ... EXEC, on the WATCHing connection (exec_transaction: the command
        # list packed in one call instead of by redis-py's pipeline).
        connection = pipe.connection or pipe.connection_pool.get_connection()
        try:
            exec_transaction(connection, commands)
            pipe.watching = False  # EXEC ends every WATCH: no UNWATCH round trip
        except redis.WatchError as exc:
            pipe.watching = False
            raise Fenced(str(exc)) from exc
        except REDIS_DOWN as exc:  # e.g. a timeout: Redis may still run the EXEC after it
            raise OutcomeUnknown.of(exc) from exc
        finally:
            if connection is not pipe.connection:
                pipe.connection_pool.release(connection)
            with contextlib.suppress(*REDIS_DOWN):  # UNWATCH on a dead connection
                pipe.reset()
        if learn:
            self.learn(writes)

    def learn(self, writes: BatchWrites) -> None:
        """What the batch writes is what the held tables were folded to: the next batch
        starts from it (call once the batch landed, or before, if a failure forgets it)."""
        if not self.warm:
            return
        local, states = self.store.local, writes.user_states
        if isinstance(states, PackedUsers):  # (no dict a user)
            local.committed.update(zip(states.users, states.blobs, strict=True))
        else:
            for user, fields in states.items():
                blob = fields[STATE_FIELD]
                local.committed[user] = blob if isinstance(blob, bytes) else blob.encode()
        local.shards.absorb()
