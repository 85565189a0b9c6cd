"""One suite over every state store (consumer/state_store.py): the in-memory store and Redis.

What the consumer relies on, asked only through the seam: offsets start empty; batches taken
through a store (load, score, commit) leave exactly the state one in-memory fold of the whole
log leaves; a write to a partition's progress fences a batch that is open on it, and nothing
of the fenced batch lands; an aborted batch leaves nothing. The memory store needs no
servers; the Redis store runs on the test session's database (skipped outside CI only), the
Cluster store on a 3-master Redis Cluster started for the module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
import redis
from redis.cluster import RedisCluster

from consumer.batch import BatchScorer, Incoming
from consumer.cluster_store import ClusterStateStore
from consumer.local_state import LocalState
from consumer.redis_commands import CommandList
from consumer.state_store import (
    NO_OFFSET,
    BatchWrites,
    Fenced,
    MemoryStateStore,
    StateStore,
    advance_columns,
)
from consumer.store import RedisBatch, RedisStateStore, _add_user_states
from engage.partitioning import positive_murmur2
from engage.redis_client import connect
from engage.settings import Settings
from features import keys, recent_ids
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.events import Event
from features.items import ItemMeta
from features.state_codec import STATE_FIELD, PackedUsers, packed_user
from features.stream import StreamState
from scoring.rules import load_scorers
from tests.eventlog import make_log
from tests.test_cluster_store import cluster_url, on_cluster  # noqa: F401  (the cluster subject)

PARTITIONS = 3
BATCH = 40


@dataclass
class Subject:
    store: StateStore
    put_meta: Callable[[dict[str, ItemMeta]], None]  # item metadata, as replay writes it


#: Redis with the consumer's local copy (consumer/local_state.py): room for everything, and
#: room for so few users and items that they are forgotten and read again within the log.
LOCAL_COPY = {"redis": None, "redis+local": (1000, 1000), "redis+small-local": (3, 5)}


#: The Redis Cluster store (tests/test_cluster_store.py starts the cluster), the same way.
CLUSTER = {"cluster": None, "cluster+local": (1000, 1000), "cluster+small-local": (3, 5)}


@pytest.fixture(
    params=["memory", *LOCAL_COPY, *(pytest.param(c, marks=pytest.mark.stack) for c in CLUSTER)]
)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        memory = MemoryStateStore()
        yield Subject(memory, memory.meta.update)
        return
    settings: Settings = request.getfixturevalue("settings")  # a claimed, emptied database
    if request.param in CLUSTER:  # a 3-master Redis Cluster
        settings = request.getfixturevalue("on_cluster")
    client = connect(settings)

    def put_meta(meta: dict[str, ItemMeta]) -> None:
        for item, m in meta.items():
            client.hset(keys.item_meta_key(item), mapping=m.to_hash())

    room = {**LOCAL_COPY, **CLUSTER}[request.param]
    store: RedisStateStore | ClusterStateStore
    if isinstance(client, RedisCluster):
        store = ClusterStateStore(client, settings.events_topic, 3600, LocalState(*room or (0, 0)))
    else:
        store = RedisStateStore(client, settings.events_topic, 3600, LocalState(*room or (0, 0)))
    store.own(True)  # as a consumer that holds every partition
    yield Subject(store, put_meta)
    client.close()


def arrivals() -> tuple[list[Incoming], dict[str, ItemMeta]]:
    """A small mixed log (funnel and MovieLens-like users, hostile ids) keyed to partitions by
    user, interleaved across partitions in a fixed order, with per-partition offsets."""
    events, genres = make_log(n_users=12, events_per_user=25, seed=5)
    lanes: dict[int, list[Event]] = {p: [] for p in range(PARTITIONS)}
    for e in events:
        lanes[positive_murmur2(e["user_id"].encode()) % PARTITIONS].append(Event(**e))
    out: list[Incoming] = []
    step = 0
    while any(lanes.values()):
        for p in range(PARTITIONS):
            take = lanes[p][: 3 + (step + p) % 5]
            del lanes[p][: len(take)]
            offset = sum(1 for i in out if i.partition == p)
            out += [Incoming(e, p, offset + k, 0) for k, e in enumerate(take)]
        step += 1
    meta = {item: ItemMeta(tuple(gs)) for item, gs in genres.items()}
    return out, meta


def touched(batch: list[Incoming]) -> tuple[dict[str, set[str]], set[str]]:
    user_items: dict[str, set[str]] = {}
    for i in batch:
        user_items.setdefault(i.event.user_id, set()).update(
            [i.event.item_id] if i.event.item_id else []
        )
    return user_items, {i.event.item_id for i in batch if i.event.item_id}


def read_back(store: StateStore, users: set[str], items: set[str]) -> StreamState:
    """Everything of `users` and `items` the store holds, loaded as a batch would."""
    state = StreamState()
    batch = store.begin([])
    batch.load(state, {u: set() for u in users}, items)
    batch.abort()
    return state


def assert_holds_one_fold(store: StateStore, incoming: list[Incoming], meta: dict) -> None:
    """Every user and item the log touched is stored as one fold of the whole log left it."""
    reference = StreamState()
    reference.tables.meta = meta
    reference.apply([i.event for i in incoming])
    users = {i.event.user_id for i in incoming}
    items = {i.event.item_id for i in incoming if i.event.item_id}
    stored = read_back(store, users, items)
    for user in users:
        assert stored.tables.export_user(user) == reference.tables.export_user(user), user
        assert stored.recent[user] == reference.recent[user], user
    for item in items:
        assert stored.tables.export_item(item) == reference.tables.export_item(item), item


def store_with_local_copy(
    settings: Settings,
) -> tuple[Any, RedisStateStore, list[Incoming], dict[str, ItemMeta]]:
    """A single-node store that keeps a local copy (it holds every partition), the arrivals
    log, and its item metadata already in Redis."""
    client = connect(settings)
    store = RedisStateStore(client, settings.events_topic, 3600, LocalState(1000, 1000))
    store.own(True)
    incoming, meta = arrivals()
    for item, m in meta.items():
        client.hset(keys.item_meta_key(item), mapping=m.to_hash())
    return client, store, incoming, meta


def test_an_empty_store_has_no_offsets_and_new_users(subject: Subject) -> None:
    store = subject.store
    assert store.offsets([0, 1, 2]) == {0: NO_OFFSET, 1: NO_OFFSET, 2: NO_OFFSET}
    state = StreamState()
    batch = store.begin([0])
    assert batch.offsets() == {0: NO_OFFSET}
    loaded = batch.load(state, {"nobody": {"m1"}}, {"m1"})
    batch.abort()
    assert loaded.users == {"nobody": b""}
    assert state.tables.export_user("nobody") == {} and state.tables.export_item("m1") == {}


def test_batches_through_the_store_equal_one_fold_of_the_whole_log(subject: Subject) -> None:
    incoming, meta = arrivals()
    subject.put_meta(meta)
    scorer = BatchScorer(load_scorers(None), log_features=False)
    for first in range(0, len(incoming), BATCH):
        chunk = incoming[first : first + BATCH]
        partitions = {i.partition for i in chunk}
        batch = subject.store.begin(partitions)
        state = subject.store.state(FeatureParams(), AdmissionPolicy())  # maybe the local copy
        user_items, items = touched(chunk)
        scored = scorer.run(state, chunk, batch.load(state, user_items, items))
        assert not scored.refused
        batch.commit(scored.writes)

    assert_holds_one_fold(subject.store, incoming, meta)
    last = {p: max(i.offset for i in incoming if i.partition == p) for p in range(PARTITIONS)}
    assert subject.store.offsets(range(PARTITIONS)) == last


def test_the_local_copy_holds_what_a_read_of_redis_returns(settings: Settings) -> None:
    """After batches of a log folded over the local copy's tables, the tables hold exactly
    what a read of Redis fills empty tables with: the copy only ever saves reads."""
    client, store, incoming, _meta = store_with_local_copy(settings)
    scorer = BatchScorer(load_scorers(None), log_features=False)
    for first in range(0, len(incoming), BATCH):
        chunk = incoming[first : first + BATCH]
        batch = store.begin({i.partition for i in chunk})
        state = store.state(FeatureParams(), AdmissionPolicy())
        user_items, items = touched(chunk)
        batch.commit(scorer.run(state, chunk, batch.load(state, user_items, items)).writes)
    held = store.local.state
    assert held is not None and store.state(FeatureParams(), AdmissionPolicy()) is held
    users = {i.event.user_id for i in incoming}
    items = {i.event.item_id for i in incoming if i.event.item_id}
    assert set(held.tables.user_ids) == users and set(held.tables.item_ids) == items
    for user in users:
        stored = client.hget(keys.user_key(user), STATE_FIELD)
        assert store.local.committed[user] == stored == packed_user(held.tables, user)[STATE_FIELD]
        assert held.tables.user_items[user] == {
            m.decode() for m in client.smembers(keys.user_items_key(user))
        }
    read = read_back(store, users, items)  # (an aborted batch: the copy is dropped first)
    assert store.local.state is None and not store.local.committed
    for user in users:
        assert held.tables.export_user(user) == read.tables.export_user(user), user
        assert held.recent[user] == read.recent[user], user
    for item in items:
        assert held.tables.export_item(item) == read.tables.export_item(item), item
    client.close()


def test_the_local_copy_is_kept_only_while_trusted_and_stays_bounded() -> None:
    local = LocalState(max_users=2, max_items=10)
    params, admission = FeatureParams(), AdmissionPolicy()
    assert local.begin(params, admission) is not local.begin(params, admission)  # not trusted
    local.trust(True)
    state = local.begin(params, admission)
    assert local.begin(params, admission) is state and local.holds(state)
    for user in ("a", "b"):
        state.tables.user_row(user)
    assert local.begin(params, admission) is state
    state.tables.user_rows([f"c{k}" for k in range(1500)])  # past the bound: dropped, filled
    fresh = local.begin(params, admission)  # again from Redis, in tables sized as these grew
    assert fresh is not state and not fresh.tables.user_ids
    assert len(fresh.tables.users) == len(state.tables.users) == 2048
    assert not fresh.tables.users.any() and not fresh.tables.user_set.any()
    local.trust(False)  # another consumer joined: every batch reads Redis again
    assert local.state is None and not local.holds(local.begin(params, admission))


def _one_user_writes(user: str, offset: int) -> BatchWrites:
    state = StreamState()
    state.tables.user_row(user)
    state.tables.users[0, 0] = 1.0
    state.tables.user_set[0, 0] = 1
    return BatchWrites(user_states={user: packed_user(state.tables, user)}, offsets={0: offset})


def test_a_write_to_a_partition_fences_the_batch_open_on_it(subject: Subject) -> None:
    store = subject.store
    zombie = store.begin([0])
    assert zombie.offsets() == {0: NO_OFFSET}
    owner = store.begin([0])
    owner.commit(_one_user_writes("owner", 5))
    with pytest.raises(Fenced):
        zombie.commit(_one_user_writes("zombie", 3))
    assert store.offsets([0]) == {0: 5}
    state = read_back(store, {"owner", "zombie"}, set())
    assert state.tables.export_user("zombie") == {}  # nothing of the fenced batch landed
    assert state.tables.export_user("owner") != {}


def test_an_aborted_batch_leaves_nothing_and_the_next_one_lands(subject: Subject) -> None:
    store = subject.store
    batch = store.begin([0])
    batch.load(StreamState(), {"u": set()}, set())
    batch.abort()
    assert store.offsets([0]) == {0: NO_OFFSET}
    store.begin([0]).commit(_one_user_writes("u", 0))
    assert store.offsets([0]) == {0: 0}
    loaded = store.begin([]).load(StreamState(), {"u": set()}, set())
    assert loaded.users["u"] == _one_user_writes("u", 0).user_states["u"][STATE_FIELD]


def test_batches_folded_while_the_previous_commits_equal_one_fold(settings: Settings) -> None:
    """The runner's overlapped order (consumer/runner.py `commit_overlap`): batch N is taught
    to the local copy and committed only after batch N+1 was loaded and folded over it. What
    N writes must not change meanwhile (the duplicate guard's ids once did: N+1 admitted its
    own ids into the dicts N was about to write), and the end state is the one fold's."""
    client, store, incoming, meta = store_with_local_copy(settings)
    scorer = BatchScorer(load_scorers(None), log_features=False)
    pending: tuple[RedisBatch, BatchWrites, BatchWrites] | None = None
    for first in range(0, len(incoming), BATCH):
        chunk = incoming[first : first + BATCH]
        batch = store.begin({i.partition for i in chunk})
        assert pending is None or store.may_overlap()
        state = store.state(FeatureParams(), AdmissionPolicy())
        user_items, items = touched(chunk)
        writes = scorer.run(state, chunk, batch.load(state, user_items, items)).writes
        partitions = np.array([i.partition for i in chunk], np.int64)
        advance_columns(writes.offsets, partitions, np.array([i.offset for i in chunk], np.int64))
        if pending is not None:
            previous, previous_writes, as_built = pending
            assert previous_writes == as_built, "the next batch changed what this one writes"
            previous.commit(previous_writes, learn=False)
        batch.offsets()  # the fence starts here, after the previous batch landed
        batch.learn(writes)
        pending = (batch, writes, copy.deepcopy(writes))
    assert pending is not None
    pending[0].commit(pending[1], learn=False)
    assert_holds_one_fold(store, incoming, meta)
    client.close()


def test_each_users_state_and_recent_ids_are_one_hset_taken_by_columns_or_by_user() -> None:
    """The usual batch (every user the same fields and recent ids) is framed as columns; any
    other by user: either way one HSET a user of its fields, then its recent ids if any."""

    def hsets(states: dict[str, dict[str, Any]], recent: dict[str, bytes]) -> set[tuple]:
        cmds = CommandList()
        _add_user_states(cmds, states, recent)
        return set(cmds.commands())

    def expected(states: dict[str, dict[str, Any]], recent: dict[str, bytes]) -> set[tuple]:
        out = set()
        for user, fields in states.items():
            row = {**fields, recent_ids.FIELD: recent[user]} if recent.get(user) else fields
            out.add(("HSET", keys.user_key(user), *(x for kv in row.items() for x in kv)))
        return out

    uniform = {"a": {"st": b"\x01a", "cs_id": "s:1"}, "b:}": {"st": b"\x01b", "cs_id": "s2"}}
    recent = {"a": b"\x02ra", "b:}": b"\x02rb", "refused": b"\x02rc"}
    assert hsets(uniform, recent) == expected(uniform, recent)
    mixed = {"a": {"st": b"\x01a"}, "b:}": {"st": b"\x01b", "cs_id": "s2"}, "c": {"st": b""}}
    sessionless = {"a": {"st": b"\x01a"}, "c": {"st": b"\x01c"}}
    for seen in (recent, {"a": b"\x02ra"}, {"a": b"", "c": b"\x02rc"}, {}):
        assert hsets(mixed, seen) == expected(mixed, seen)
        assert hsets(uniform, seen) == expected(uniform, seen)
    # A batch's own form (PackedUsers: columns, no dict a user) writes the same commands.
    for states in (uniform, mixed, sessionless, {}):
        as_columns = PackedUsers(list(states), [f["st"] for f in states.values()],
                                 [f.get("cs_id") for f in states.values()])  # fmt: skip
        for seen in (recent, {**recent, "c": b"\x02rc"}, {"a": b"\x02ra"}, {}):
            assert hsets(as_columns, seen) == expected(states, seen)  # type: ignore[arg-type]


def test_advance_columns_raises_each_partition_to_its_largest_offset() -> None:
    """Offsets out of order within a partition, a partition with none in the batch, and one
    already past the batch (it never moves back)."""
    offsets = {0: 3, 2: 50, 7: 9}
    partitions = np.array([0, 1, 0, 2, 1, 0], np.int64)
    done = np.array([10, 4, 8, 20, 6, 9], np.int64)
    advance_columns(offsets, partitions, done)
    assert offsets == {0: 10, 1: 6, 2: 50, 7: 9}
    advance_columns(offsets, np.array([], np.int64), np.array([], np.int64))
    assert offsets == {0: 10, 1: 6, 2: 50, 7: 9}


@pytest.mark.parametrize(
    "subject", ["redis", pytest.param("cluster", marks=pytest.mark.stack)], indirect=True
)
def test_recent_ids_an_older_engage_kept_in_a_key_of_their_own_are_moved_and_still_guard(
    subject: Subject,
) -> None:
    """After an upgrade: a user's hash without the `seen` field, the ids in the key an older
    engage kept them in (`u:{user}:seen`, a JSON list of [id, time]). The next batch reads them
    there (a copy of a remembered event is refused), writes them into the hash with the new
    event's, and deletes the old key."""
    incoming, meta = arrivals()
    subject.put_meta(meta)
    store = subject.store
    client = store.client  # type: ignore[attr-defined]
    scorer = BatchScorer(load_scorers(None), log_features=False)

    def run(chunk: list[Incoming]) -> list[tuple[Incoming, str]]:
        batch = store.begin({i.partition for i in chunk})
        state = store.state(FeatureParams(), AdmissionPolicy())
        scored = scorer.run(state, chunk, batch.load(state, *touched(chunk)))
        batch.commit(scored.writes)
        return scored.refused

    for first in range(0, len(incoming), BATCH):
        assert not run(incoming[first : first + BATCH])
    last = incoming[-1]
    user = last.event.user_id
    applied = [i.event for i in incoming if i.event.user_id == user]
    assert client.hget(keys.user_key(user), recent_ids.FIELD) is not None
    client.hdel(keys.user_key(user), recent_ids.FIELD)
    old_key = keys.legacy_recent_ids_key(user)
    client.set(old_key, orjson.dumps([[e.event_id, float(e.ts)] for e in applied[-32:]]))
    offset = max(i.offset for i in incoming if i.partition == last.partition)
    new_event = last.event.model_copy(
        update={"event_id": "after-the-upgrade", "ts": last.event.ts + 1}
    )
    new = Incoming(new_event, last.partition, offset + 1, 0)
    copy_of_applied = Incoming(applied[-1], last.partition, offset + 2, 0)
    refused = run([new, copy_of_applied])
    assert [(i.event.event_id, why.split(":")[0]) for i, why in refused] == [
        (applied[-1].event_id, "duplicate")
    ]
    assert not client.exists(old_key)
    remembered = recent_ids.as_dict(client.hget(keys.user_key(user), recent_ids.FIELD))
    assert recent_ids.id_digest(applied[-1].event_id) in remembered
    assert recent_ids.id_digest(new.event.event_id) in remembered


@pytest.mark.stack
def test_leaderboards_land_with_each_scores_own_value(settings: Settings) -> None:
    """A batch's leaderboards are one ZADD each: framed with a text per distinct float score
    (many repeats, 0.0 and -0.0 among them), per score (few repeats), or by hiredis (a score
    that is not a float); every member lands with its own score."""
    client = connect(settings)
    store = RedisStateStore(client, settings.events_topic, 3600)
    repeated = [0.0, -0.0, 12.5, 100.0, 58.33]
    boards = {
        "rule": {f"u{k}": repeated[k % len(repeated)] for k in range(60)},
        "propensity": {f"u{k}": k / 7 for k in range(60)},
        "mixed": {"a": 1, "b": 2.5, "é": 0.25},
    }
    batch = store.begin([0])
    batch.commit(BatchWrites(leaderboard=boards, offsets={0: 1}))
    for kind, members in boards.items():
        stored = dict(client.zrange(keys.leaderboard_key(kind), 0, -1, withscores=True))
        assert stored == {m.encode(): float(s) for m, s in members.items()}, kind
    client.close()


@pytest.mark.stack
@pytest.mark.parametrize("kind", ["resp2", "resp3", "decoded", "no hiredis"])
def test_the_fence_watches_and_reads_in_one_write_on_the_connection_that_commits(
    settings: Settings, kind: str
) -> None:
    """`RedisBatch.offsets` sends WATCH and the offsets' read in one write (one round trip)
    on the connection its EXEC then uses: a write to the offsets after it fences the batch,
    on every kind of client; the connection goes back to the pool after the commit, after an
    abort, and after a connection lost under the WATCH (which fails the commit: no WATCH, no
    guarantee)."""
    from redis._parsers import _RESP2Parser

    options: dict[str, Any] = {
        "resp2": {"protocol": 2}, "resp3": {"protocol": 3}, "decoded": {"decode_responses": True},
        "no hiredis": {"parser_class": _RESP2Parser, "protocol": 2},
    }[kind]  # fmt: skip
    client = connect(settings, **options)
    topic = f"fence-{kind}"
    client.delete(*(keys.offset_key(topic, p) for p in (0, 1)))
    client.set(keys.offset_key(topic, 1), 7)
    store = RedisStateStore(client, topic, 3600)
    pool = client.connection_pool
    sent: list[int] = []
    batch = store.begin([0, 1])
    real_send = pool.connection_class.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        real_send(self, command, check_health)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pool.connection_class, "send_packed_command", counting)
        assert batch.offsets() == {0: NO_OFFSET, 1: 7}
    assert len(sent) == 1, "WATCH and the read go in one write"
    assert batch.pipe.watching and batch.pipe.connection is not None
    client.set(keys.offset_key(topic, 0), 3)  # someone else moves a watched offset
    with pytest.raises(Fenced):
        batch.commit(_one_user_writes("zombie", 4))
    assert client.get(keys.offset_key(topic, 0)) in (b"3", "3")
    assert batch.pipe.connection is None  # back in the pool
    second = store.begin([0, 1])
    assert second.offsets() == {0: 3, 1: 7}
    second.abort()
    assert second.pipe.connection is None and not second.pipe.watching
    third = store.begin([0])
    assert third.offsets() == {0: 3}
    own = third.pipe.connection
    assert own is not None
    own.send_command("CLIENT", "ID")
    own_id = own.read_response()
    client.client_kill_filter(_id=own_id)  # the WATCH is lost with its connection
    with pytest.raises(redis.ConnectionError):  # (OutcomeUnknown: the EXEC's fate unknown)
        third.commit(_one_user_writes("late", 4))
    assert client.get(keys.offset_key(topic, 0)) in (b"3", "3")  # nothing unguarded landed
    assert third.pipe.connection is None
    fourth = store.begin([0])
    assert fourth.offsets() == {0: 3}  # the pool's connections still serve
    fourth.commit(_one_user_writes("owner", 4))
    assert client.get(keys.offset_key(topic, 0)) in (b"4", "4")
    client.delete(*(keys.offset_key(topic, p) for p in (0, 1)))
    client.close()
