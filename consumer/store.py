"""Redis I/O of the consumer: one round trip to read a batch's state, one transaction to write it.

Exactly-once: the last applied offset of each partition is written in the same MULTI/EXEC as
the state the batch changed. The offset keys are WATCHed before the batch's state is read, so
if any other process (a zombie after a rebalance) wrote those partitions meanwhile, EXEC fails
and nothing of this batch lands (`Fenced`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import orjson
import redis

from consumer.local_state import LocalState, LocalUser
from consumer.redis_commands import CommandList, pairs
from consumer.state_store import NO_OFFSET, BatchWrites, Fenced, Loaded, fill_tables
from features import keys
from features.items import ItemMeta
from features.stream import StreamState

#: What a Redis outage looks like to redis-py callers (refused, reset, timed out, loading).
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


def waitable(exc: BaseException) -> bool:
    """An outage to wait out; refused credentials (a ConnectionError too) need a person."""
    return not isinstance(exc, redis.AuthenticationError)


class OutcomeUnknown(redis.ConnectionError):
    """Redis failed during EXEC: the batch may or may not have been applied."""

    @classmethod
    def of(cls, exc: BaseException) -> OutcomeUnknown:
        return cls(f"EXEC outcome unknown after {type(exc).__name__}: {exc}")


def encode_recent_ids(recent: dict[str, float]) -> bytes:
    """The duplicate guard's ids as one JSON string value: one SET per user and batch, where a
    sorted set cost a DEL and a ZADD of up to 2 x recent_ids members."""
    return orjson.dumps(list(recent.items()))


def decode_recent_ids(raw: bytes | None) -> dict[str, float]:
    return {event_id: float(ts) for event_id, ts in orjson.loads(raw)} if raw else {}


def stored_offsets(client: redis.Redis, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    parts = list(partitions)
    values = client.mget([keys.offset_key(topic, p) for p in parts]) if parts else []
    return {p: int(v) if v is not None else NO_OFFSET for p, v in zip(parts, values, strict=True)}


class RedisStateStore:
    def __init__(
        self, client: redis.Redis, topic: str, session_ttl_s: int, local: LocalState | None = None
    ) -> None:
        self.client = client
        self.topic = topic
        self.session_ttl_s = session_ttl_s
        self.meta_cache: dict[str, ItemMeta] = {}
        self.local = local if local is not None else LocalState(0, 0)

    def own(self, whole_topic: bool) -> None:
        """Whether this consumer holds every partition (only then is a local copy kept)."""
        self.local.trust(whole_topic)

    def forget(self) -> None:
        """Drop the local copy: the consumer re-seeks to what Redis holds."""
        self.local.forget()

    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return stored_offsets(self.client, self.topic, partitions)

    def begin(self, partitions: Iterable[int]) -> RedisBatch:
        """WATCH the partitions' offsets: the batch's EXEC fails if anyone writes them."""
        partitions = list(partitions)
        pipe = self.client.pipeline(transaction=True)
        try:
            if partitions:  # (WATCH needs a key; a batch of no partition only reads)
                pipe.watch(*[keys.offset_key(self.topic, p) for p in partitions])
        except REDIS_DOWN:
            with contextlib.suppress(*REDIS_DOWN):
                pipe.reset()  # give the connection back to the pool
            raise
        return RedisBatch(self, pipe, partitions)


class RedisBatch:
    """One batch on a WATCHing pipeline: reads go to the watched connection (so they see the
    state the fence protects), the writes are one MULTI/EXEC."""

    def __init__(self, store: RedisStateStore, pipe: redis.client.Pipeline, partitions: list[int]):
        self.store = store
        self.pipe = pipe
        self.partitions = partitions
        self.read_users: dict[str, LocalUser] = {}  # what load read, kept if the commit lands
        self.read_items: dict[str, dict[bytes, bytes]] = {}
        self.users: list[str] = []
        self.items: list[str] = []

    def offsets(self) -> dict[int, int]:
        return self.store.offsets(self.partitions)

    def abort(self) -> None:
        self.store.forget()  # the local copy may hold what Redis now lacks, or lack what it has
        with contextlib.suppress(*REDIS_DOWN):  # UNWATCH on a dead connection
            self.pipe.reset()

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        """Fill `state` with what the batch touches: from the local copy where it holds it,
        the rest in one command (consumer/redis_commands.py), not on the watched connection
        (reads need no fence; the client pools connections)."""
        store, local = self.store, self.store.local
        self.users, self.items = list(user_items), list(items)
        read_users, read_items = local.missing_users(self.users), local.missing_items(self.items)
        missing_meta = [i for i in items if i not in store.meta_cache]
        cmds = CommandList()
        for user in read_users:
            cmds.add("HGETALL", keys.user_key(user))
        if local.trusted:  # the whole set, to keep it
            for user in read_users:
                cmds.add("SMEMBERS", keys.user_items_key(user))
            asked, chunks = [], []
        else:
            asked = [(u, sorted(user_items[u])) for u in read_users if user_items[u]]
            chunks = [cmds.add_members("SMISMEMBER", keys.user_items_key(u), its)
                      for u, its in asked]  # fmt: skip
        for user in read_users:
            cmds.add("GET", keys.user_recent_ids_key(user))
        for item in read_items:
            cmds.add("HGETALL", keys.item_key(item))
        for item in missing_meta:
            cmds.add("HGETALL", keys.item_meta_key(item))
        replies = iter(cmds.run(store.client))
        fields = [pairs(next(replies)) for _ in read_users]
        if local.trusted:
            members = [{m.decode() for m in next(replies)} for _ in read_users]
        else:
            found: dict[str, set[str]] = {}
            for (user, its), n in zip(asked, chunks, strict=True):
                hits = [hit for _ in range(n) for hit in next(replies)]
                found[user] = {i for i, hit in zip(its, hits, strict=True) if hit}
            members = [found.get(u, set()) for u in read_users]
        self.read_users = {
            u: LocalUser(f, m, next(replies))
            for u, f, m in zip(read_users, fields, members, strict=True)
        }
        self.read_items = {item: pairs(next(replies)) for item in read_items}
        for item in missing_meta:
            raw = pairs(next(replies))
            store.meta_cache[item] = ItemMeta.from_hash(raw) if raw else ItemMeta()
        users = [self.read_users.get(u) or local.users[u] for u in self.users]
        memberships = {u: user_items[u] & lu.items for u, lu in zip(self.users, users, strict=True)}
        return fill_tables(
            state,
            self.users,
            [lu.fields for lu in users],
            memberships,
            [decode_recent_ids(lu.recent) for lu in users],
            self.items,
            [self._item(i) for i in self.items],
            store.meta_cache,
        )

    def _item(self, item: str) -> dict[bytes, bytes]:
        shards = self.read_items.get(item)
        return shards if shards is not None else self.store.local.items[item]

    def commit(self, writes: BatchWrites) -> None:
        """Write the batch and its offsets atomically; raises Fenced if a WATCHed offset moved."""
        pipe, topic, ttl = self.pipe, self.store.topic, self.store.session_ttl_s
        cmds = CommandList()  # the per-user, per-session and per-item writes: one command
        for user, fields in writes.user_states.items():
            cmds.add_mapping("HSET", keys.user_key(user), fields)
        for user, new_items in writes.user_new_items.items():
            if new_items:
                cmds.add_members("SADD", keys.user_items_key(user), sorted(new_items))
        for user, recent in writes.user_recent_ids.items():
            key = keys.user_recent_ids_key(user)
            if recent:
                cmds.add("SET", key, encode_recent_ids(recent))
            else:
                cmds.add("DEL", key)
        for (user, session), fields in writes.closed_sessions.items():
            key = keys.session_key(user, session)
            cmds.add_mapping("HSET", key, fields)
            cmds.add("EXPIRE", key, ttl)
        for (user, session), fields in writes.sessions.items():
            cmds.add_mapping("HSET", keys.session_key(user, session), fields)
        for item, shards in writes.item_shards.items():
            cmds.add_mapping("HSET", keys.item_key(item), shards)
        for user, fields in writes.scores.items():
            cmds.add_mapping("HSET", keys.user_score_key(user), fields)
        pipe.multi()
        cmds.queue(pipe)
        for kind, members in writes.leaderboard.items():
            if members:
                pipe.zadd(keys.leaderboard_key(kind), members)
        for partition, offset in writes.offsets.items():
            pipe.set(keys.offset_key(topic, partition), offset)
        for name, amount in writes.stats.items():
            pipe.hincrby(keys.stats_key(topic), name, amount)
        if writes.publish is not None:
            pipe.publish(keys.scores_channel(topic), writes.publish)
        try:
            pipe.execute()
        except redis.WatchError as exc:
            if isinstance(exc.__context__, REDIS_DOWN):
                # redis-py reports a connection lost while WATCHing as a WatchError. That is an
                # outage with an unknown outcome, not a fence.
                raise OutcomeUnknown.of(exc.__context__) from exc
            raise Fenced(str(exc)) from exc
        except REDIS_DOWN as exc:  # e.g. a timeout: Redis may still run the EXEC after it
            raise OutcomeUnknown.of(exc) from exc
        finally:
            with contextlib.suppress(*REDIS_DOWN):  # UNWATCH on a dead connection
                pipe.reset()
        if self.store.local.trusted:
            self._learn(writes)

    def _learn(self, writes: BatchWrites) -> None:
        """Keep what the batch read and wrote in the local copy, as Redis now holds it."""
        local = self.store.local
        for user in self.users:
            lu = self.read_users.get(user) or local.users.get(user)
            if lu is None:  # forgotten meanwhile (the copy is bounded): read it next time
                continue
            for name, value in writes.user_states.get(user, {}).items():
                lu.fields[name.encode()] = value if isinstance(value, bytes) else value.encode()
            lu.items |= writes.user_new_items.get(user, set())
            if user in writes.user_recent_ids:
                recent = writes.user_recent_ids[user]
                lu.recent = encode_recent_ids(recent) if recent else None
            local.put_user(user, lu)
        for item in self.items:
            shards = self.read_items.get(item, local.items.get(item))
            if shards is None:
                continue
            for name, blob in writes.item_shards.get(item, {}).items():
                shards[name.encode()] = blob
            local.put_item(item, shards)
