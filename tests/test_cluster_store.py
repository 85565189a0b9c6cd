"""The consumer on a Redis Cluster (issue 17 item 2, consumer/cluster_store.py), against real
3-master clusters started here from the redis-server binary: a log consumed there equals the
reference the single-node tests use, also after SIGKILLs at random moments and between two
slot calls of one batch, and with two consumers in one group of which one leaves midway."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from redis.cluster import RedisCluster

from consumer.cluster_journal import SlotCall, pack, slot_calls, unpack
from consumer.cluster_store import KILL_HOOK, ClusterStateStore
from consumer.state_store import BatchWrites
from engage.redis_client import connect
from engage.settings import Settings
from features import keys, recent_ids
from features.item_shards import N_FIELDS, ShardWrites, pack_shards
from features.state_codec import STATE_FIELD, packed_user
from features.stream import StreamState
from tests.eventlog import in_parts, make_log, publish_log
from tests.reference import diff_against_redis, reference_state
from tests.test_consumer_faults import consumer_env, start_consumer
from tests.test_redis_cluster import private_cluster

NODES = 3


@pytest.fixture(scope="module")
def cluster_url(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings
) -> Iterator[str]:
    """A private 3-master cluster on free ports; yields its URL; stopped by its pids."""
    with private_cluster(tmp_path_factory, stack_settings, "cluster-store") as (url, _):
        yield url


@pytest.fixture
def on_cluster(cluster_url: str, settings: Settings) -> Settings:
    """This test's settings (fresh topics, the real Kafka) with Redis = the emptied cluster."""
    clustered = settings.model_copy(update={"redis_url": cluster_url})
    client = connect(clustered)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    return clustered


def test_a_journal_packs_and_unpacks_every_slot_call() -> None:
    writes = BatchWrites(
        user_states={"a:b": {"st": b"\x00\xffpacked", "cs_id": "s1"}},
        user_new_items={"a:b": {"m1", "m2"}},
        user_recent_ids={"a:b": recent_ids.from_dict({7: 1.5}), "c": recent_ids.EMPTY},
        closed_sessions={("a:b", "s0"): {"events": 2.0}},
        item_shards=ShardWrites.of({"m1": {"p0": b"\x01" * 78, "p2": b"\x02" * 78}}),
        scores={"a:b": {"rule_score": 12.5, "label": "low"}},
        leaderboard={"rule": {"a:b": 12.5, "c": 3.0}},
        offsets={0: 41, 2: 7},
    )
    calls = slot_calls(writes, "t.events", 60)
    slots = [c.slot for c in calls]
    assert len(slots) == len(set(slots))  # one call per slot
    assert sum(c.argv.count(b"ZADD") for c in calls) == 2
    again = unpack(pack(calls))
    assert [(c.slot, c.keys, c.argv) for c in again] == [(c.slot, c.keys, c.argv) for c in calls]
    assert unpack(pack([])) == [] and isinstance(again[0], SlotCall)


def _writes(value: float, offset: int) -> BatchWrites:
    """A batch of partition 0 that sets user u, item m's shard p0 and u's rule score."""
    state = StreamState()
    state.tables.user_row("u")
    state.tables.users[0, 0], state.tables.user_set[0, 0] = value, 1
    shard = pack_shards(np.full((1, N_FIELDS), value), np.ones((1, N_FIELDS), dtype=bool),
                        np.array([offset]))[0]  # fmt: skip
    return BatchWrites(
        user_states={"u": packed_user(state.tables, "u")},
        item_shards=ShardWrites.of({"m": {"p0": shard}}),
        leaderboard={"rule": {"u": value}}, offsets={0: offset}, stats={"processed": 1},
    )  # fmt: skip


def test_a_retried_commit_and_a_late_older_journal_change_nothing(on_cluster: Settings) -> None:
    """A commit call retried after it landed (redis-py retries on a lost connection) is
    recognised by its batch token; an older journal applied after a newer one (a zombie that
    wakes up after the new owner's batch) is refused by every key's guard."""
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    topic = on_cluster.events_topic
    store = ClusterStateStore(client, topic, 3600)
    old, new = _writes(1.0, 10), _writes(2.0, 20)
    first = store.begin([0])
    first.commit(old)
    first.finished = False  # the same call again
    first.commit(old)
    assert processed(client, topic) == 1 and store.offsets([0]) == {0: 10}
    store.begin([0]).commit(new)
    store.apply(1, slot_calls(old, topic, 3600))  # journal 1, after journal 2 landed
    assert client.hget(keys.user_key("u"), STATE_FIELD) == new.user_states["u"][STATE_FIELD]
    assert client.hget(keys.item_key("m"), "p0") == new.item_shards.by_item()["m"]["p0"]
    assert client.zscore(keys.leaderboard_key("rule"), "u") == 2.0
    assert client.get(keys.offset_key(topic, 0)) == b"20"
    assert processed(client, topic) == 2 and store.offsets([0]) == {0: 20}
    assert pending_journals(client, topic) == 0  # the offsets read deleted what was applied
    client.close()


@contextlib.contextmanager
def migrating(client: RedisCluster, key: str) -> Iterator[None]:
    """`key`'s slot marked as migrating from its master to another one (no key moved yet), as
    `redis-cli --cluster reshard` leaves it between its steps; stable again afterwards."""
    slot = client.keyslot(key)
    source = client.get_node_from_key(key)
    target = next(n for n in client.get_primaries() if n.name != source.name)
    at_source = client.get_redis_connection(source)
    target_id = client.get_redis_connection(target).execute_command("CLUSTER MYID")
    at_source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    try:
        yield
    finally:
        at_source.execute_command("CLUSTER SETSLOT", slot, "STABLE")


def test_the_offsets_read_and_the_commit_run_whole_in_a_migrating_slot(
    on_cluster: Settings,
) -> None:
    """Both scripts delete the journals applied whole; a deletion can empty the journal hash,
    and while the slot migrates Redis refuses a later access to the missing key mid-script
    ("non local key"): a reshard once stopped a consumer that way, and a commit would have
    moved its offsets without writing its journal. They delete last."""
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    topic = on_cluster.events_topic
    store = ClusterStateStore(client, topic, 3600)
    store.begin([0]).commit(_writes(1.0, 10))
    assert store.done == {1} and client.hkeys(store.journal_key) == [b"1"]
    with migrating(client, store.progress_key):
        assert store.offsets([0]) == {0: 10}  # deletes journal 1: the hash is gone
    assert client.exists(store.journal_key) == 0 and store.done == set()
    other = ClusterStateStore(client, topic, 3600)  # another process commits journal 2
    other.begin([0]).commit(_writes(2.0, 20))
    assert client.hkeys(store.journal_key) == [b"2"]
    with migrating(client, store.progress_key):
        batch = store.begin([0])  # finds journal 2 pending, applies it: done, not deleted
        assert store.done == {2}
        batch.commit(_writes(3.0, 30))  # deletes journal 2, writes journal 3
    assert client.hkeys(store.journal_key) == [b"3"] and store.done == {3}
    assert store.offsets([0]) == {0: 30} and processed(client, topic) == 3
    assert (
        client.hget(keys.user_key("u"), STATE_FIELD)
        == _writes(3.0, 30).user_states["u"][STATE_FIELD]
    )
    client.close()


def processed(client: RedisCluster, topic: str) -> int:
    return int(client.hget(keys.stats_key(topic), "processed") or 0)


def pending_journals(client: RedisCluster, topic: str) -> int:
    return int(client.hlen(f"engage:journal:{{{keys.stats_key(topic)}}}"))


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"consumer exited {proc.returncode}: {proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_exact(settings: Settings, client: RedisCluster, events: list[dict], genres) -> None:  # type: ignore[no-untyped-def]
    """Every user, session and item aggregate equals the reference; counters count each event
    once; leaderboards hold every user; no journal is left pending."""
    assert processed(client, settings.events_topic) == len(events)
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, client) == []
    users = {e["user_id"] for e in events}
    assert client.zcard(keys.leaderboard_key("rule")) == len(users)
    assert pending_journals(client, settings.events_topic) == 0


def test_consume_on_the_cluster_equals_the_reference(on_cluster: Settings) -> None:
    events, genres = make_log(n_users=40, events_per_user=40, seed=21)
    publish_log(on_cluster, events, genres)
    env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="100")
    proc = start_consumer(env, f"one-{on_cluster.events_topic}", idle_exit=3)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["processed"] == len(events) and summary["fenced"] == 0
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    assert_exact(on_cluster, client, events, genres)
    users = sorted({e["user_id"] for e in events})
    assert len({client.get_node_from_key(keys.user_key(u)).name for u in users}) == NODES
    stats = subprocess.run([sys.executable, "-m", "engage", "stats", "--json"], env=env,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert stats.returncode == 0, stats.stderr
    reported = json.loads(stats.stdout)
    assert reported["processed"] == len(events) and reported["total_lag"] == 0
    client.close()


def test_sigkill_at_random_moments_and_between_slot_calls(on_cluster: Settings) -> None:
    """Four SIGKILLs at random moments and three by the store's test hook after the first
    or second slot call of a batch's apply (its journal committed, not all applied)."""
    events, genres = make_log(n_users=80, events_per_user=100, seed=23)  # 8,000 events
    *rounds, last = in_parts(events, 8)  # a part per killed run: the log cannot run out early
    client = connect(on_cluster)
    topic, group = on_cluster.events_topic, f"crashy-{on_cluster.events_topic}"
    rng = random.Random(17)
    hooked = random_kills = 0
    for round_, part in enumerate(rounds):
        publish_log(on_cluster, part, genres)
        before = processed(client, topic)
        if round_ % 2 == 1:  # the hook: die inside the apply of the 2nd or 3rd commit
            hook = f"{2 + round_ % 3}:{1 + round_ % 2}"
            env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="40", **{KILL_HOOK: hook})
            proc = start_consumer(env, group, idle_exit=3)
            proc.communicate(timeout=120)
            assert proc.returncode == -signal.SIGKILL, (hook, proc.returncode)
            assert pending_journals(client, topic) >= 1  # committed, not wholly applied
            assert processed(client, topic) > before
            hooked += 1
            continue
        env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="40")
        proc = start_consumer(env, group, idle_exit=3)
        wait_for(lambda b=before: processed(client, topic) > b, 90,  # type: ignore[misc]
                 "the consumer to make progress", proc)  # fmt: skip
        time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # 3 s idle is its only exit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        random_kills += 1
    assert random_kills >= 3 and hooked >= 3
    assert processed(client, topic) < len(events)
    publish_log(on_cluster, last, genres)
    final = start_consumer(consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="40"), group, 3)
    _out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert_exact(on_cluster, client, events, genres)
    client.close()


def test_second_consumer_takes_over_when_one_leaves(on_cluster: Settings) -> None:
    events, genres = make_log(n_users=160, events_per_user=60, seed=24)
    head, tail = in_parts(events, 2)  # the tail waits for the second consumer: midway for sure
    publish_log(on_cluster, head, genres)
    client = connect(on_cluster)
    topic = on_cluster.events_topic
    env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="20")
    group = f"pair-{topic}"
    first = start_consumer(env, group, idle_exit=8)
    wait_for(lambda: processed(client, topic) > 0, 90, "the first consumer's progress", first)
    second = start_consumer(env, group, idle_exit=8)  # joining splits the partitions
    time.sleep(4.0)
    publish_log(on_cluster, tail, genres)
    assert processed(client, topic) < len(events)  # midway
    first.send_signal(signal.SIGTERM)  # clean leave: finish the batch, leave the group
    out1, err1 = first.communicate(timeout=90)
    assert first.returncode == 0, err1
    out2, err2 = second.communicate(timeout=300)
    assert second.returncode == 0, err2
    s1, s2 = json.loads(out1.strip().splitlines()[-1]), json.loads(out2.strip().splitlines()[-1])
    assert s1["processed"] > 0 and s2["processed"] > 0, (s1, s2)
    assert s1["processed"] + s2["processed"] == len(events)
    assert_exact(on_cluster, client, events, genres)
    client.close()
