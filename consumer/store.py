"""Redis I/O of the consumer: one round trip to read a batch's state, one transaction to write it.

Exactly-once: the last applied offset of each partition is written in the same MULTI/EXEC as
the state the batch changed. The offset keys are WATCHed before the batch's state is read, so
if any other process (a zombie after a rebalance) wrote those partitions meanwhile, EXEC fails
and nothing of this batch lands (`Fenced`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
import redis

from features import keys
from features.aggregates import State
from features.item_shards import LoadedItems
from features.items import ItemMeta
from features.state_codec import load_packed_user
from features.stream import StreamState

NO_OFFSET = -1
#: What a Redis outage looks like to redis-py callers (refused, reset, timed out, loading).
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


def waitable(exc: BaseException) -> bool:
    """An outage to wait out; refused credentials (a ConnectionError too) need a person."""
    return not isinstance(exc, redis.AuthenticationError)


class Fenced(Exception):
    """Another writer changed a partition's stored offset: this batch must not land."""


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


@dataclass
class Loaded:
    """What a batch read besides the fold's tables: each user's packed state (to write back
    only what changed) and the items' shards (the batch's increments are added to them)."""

    users: dict[str, bytes] = field(default_factory=dict)
    items: LoadedItems = field(default_factory=LoadedItems.empty)


@dataclass
class BatchWrites:
    """Everything one batch writes, applied in one transaction."""

    user_states: dict[str, dict[str, bytes | str]] = field(default_factory=dict)  # packed
    user_new_items: dict[str, set[str]] = field(default_factory=dict)
    user_recent_ids: dict[str, dict[str, float]] = field(default_factory=dict)  # replaces
    sessions: dict[tuple[str, str], State] = field(default_factory=dict)
    closed_sessions: dict[tuple[str, str], State] = field(default_factory=dict)
    item_shards: dict[str, dict[str, bytes]] = field(default_factory=dict)  # item -> its shards
    scores: dict[str, dict[str, str | float]] = field(default_factory=dict)
    leaderboard: dict[str, dict[str, float]] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    publish: bytes | None = None


class RedisStateStore:
    def __init__(self, client: redis.Redis, topic: str, session_ttl_s: int) -> None:
        self.client = client
        self.topic = topic
        self.session_ttl_s = session_ttl_s
        self.meta_cache: dict[str, ItemMeta] = {}

    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return stored_offsets(self.client, self.topic, partitions)

    def begin(self, partitions: Iterable[int]) -> redis.client.Pipeline:
        """WATCH the partitions' offsets; the returned pipeline commits with `commit`."""
        pipe = self.client.pipeline(transaction=True)
        try:
            pipe.watch(*[keys.offset_key(self.topic, p) for p in partitions])
        except REDIS_DOWN:
            with contextlib.suppress(*REDIS_DOWN):
                pipe.reset()  # give the connection back to the pool
            raise
        return pipe

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        """Fill `state` with the users, item memberships and items a batch touches, in one
        round trip."""
        users = list(user_items)
        missing_meta = [i for i in items if i not in self.meta_cache]
        item_list = list(items)
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            pipe.hgetall(keys.user_key(user))
        asked = [(u, sorted(user_items[u])) for u in users if user_items[u]]
        for user, its in asked:
            pipe.smismember(keys.user_items_key(user), its)
        for user in users:
            pipe.get(keys.user_recent_ids_key(user))
        for item in item_list:
            pipe.hgetall(keys.item_key(item))
        for item in missing_meta:
            pipe.hgetall(keys.item_meta_key(item))
        results = iter(pipe.execute())
        tables = state.tables
        loaded = {user: load_packed_user(tables, user, next(results)) for user in users}
        for user in users:
            tables.user_items[user] = set()
        for user, its in asked:
            tables.user_items[user] = {i for i, hit in zip(its, next(results), strict=True) if hit}
        for user in users:
            state.recent[user] = decode_recent_ids(next(results))
        item_hashes = [next(results) for _ in item_list]
        for item in missing_meta:
            raw = next(results)
            self.meta_cache[item] = ItemMeta.from_hash(raw) if raw else ItemMeta()
        tables.meta = self.meta_cache  # item rows read their metadata from it, once per item
        shards = LoadedItems(item_list, item_hashes)
        tables.set_item_states(item_list, shards.totals, shards.total_present)
        return Loaded(loaded, shards)

    def commit(self, pipe: redis.client.Pipeline, writes: BatchWrites) -> None:
        """Write the batch and its offsets atomically; raises Fenced if a WATCHed offset moved."""
        pipe.multi()
        for user, fields in writes.user_states.items():
            pipe.hset(keys.user_key(user), mapping=fields)
        for user, new_items in writes.user_new_items.items():
            if new_items:
                pipe.sadd(keys.user_items_key(user), *new_items)
        for user, recent in writes.user_recent_ids.items():
            key = keys.user_recent_ids_key(user)
            if recent:
                pipe.set(key, encode_recent_ids(recent))
            else:
                pipe.delete(key)
        for (user, session), fields in writes.closed_sessions.items():
            key = keys.session_key(user, session)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.session_ttl_s)
        for (user, session), fields in writes.sessions.items():
            pipe.hset(keys.session_key(user, session), mapping=fields)
        for item, shards in writes.item_shards.items():
            pipe.hset(keys.item_key(item), mapping=shards)
        for user, fields in writes.scores.items():
            pipe.hset(keys.user_score_key(user), mapping=fields)
        for kind, members in writes.leaderboard.items():
            if members:
                pipe.zadd(keys.leaderboard_key(kind), members)
        for partition, offset in writes.offsets.items():
            pipe.set(keys.offset_key(self.topic, partition), offset)
        for name, amount in writes.stats.items():
            pipe.hincrby(keys.stats_key(self.topic), name, amount)
        if writes.publish is not None:
            pipe.publish(keys.scores_channel(self.topic), writes.publish)
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
