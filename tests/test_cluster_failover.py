"""The consumer on a Redis Cluster through a resharding and a master's failover (issue 17),
on 3-master clusters with one replica per master, started here from redis-server.

1. While one consumer works through a generated log, `redis-cli --cluster reshard` moves
   2,000 slots (the topic's commit slot among them) from one master to another, key by key
   (MOVED and ASK redirects, TRYAGAIN on multi-key calls), then the master that received them
   is SIGKILLed and its replica promoted. The consumer rides through both.
2. Lost acknowledged writes, made to happen: the replica of the master that holds the commit
   slot is stopped (SIGSTOP) and its link cut (CLIENT KILL TYPE replica), so the master goes
   on alone; then the master is SIGKILLed and the stale replica resumed and promoted. The
   store counts a write as done only once the replicas confirmed it (WAIT), so the consumer
   stalls instead of going on, and nothing it relied on is lost.

Either way the final state equals the reference the single-node tests use."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from consumer.cluster_store import ClusterStateStore
from engage.redis_client import connect
from engage.settings import Settings
from engage.stack.redis_cluster import RedisClusterServers
from features import keys
from tests.conftest import _unavailable
from tests.eventlog import make_log, publish_log
from tests.test_cluster_store import assert_exact, processed, wait_for
from tests.test_consumer_faults import consumer_env, start_consumer
from tests.test_redis_cluster import NODES, private_cluster

pytestmark = pytest.mark.stack
MOVED_SLOTS = 2_000
NODE_TIMEOUT_MS = 1_000  # a master unreachable this long is failed and its replica promoted


@pytest.fixture
def replicated(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings
) -> Iterator[RedisClusterServers]:
    """A private 3-master cluster, one replica each, on free ports; stopped by pid (a node
    the test killed is already gone)."""
    if shutil.which("redis-cli") is None:
        _unavailable("redis-cli is not installed (apt-get install redis-tools)")
    with private_cluster(tmp_path_factory, stack_settings, "cluster-failover", replicas=1,
                         node_timeout_ms=NODE_TIMEOUT_MS) as (_url, servers):  # fmt: skip
        yield servers


@pytest.fixture
def slow_to_fail(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings
) -> Iterator[RedisClusterServers]:
    """As `replicated`, with a 3 s node timeout: a replica stopped for a second is not failed
    (and so still waited for)."""
    with private_cluster(tmp_path_factory, stack_settings, "cluster-lost-writes", replicas=1,
                         node_timeout_ms=3_000) as (_url, servers):  # fmt: skip
        yield servers


def node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def node_id(port: int) -> str:
    raw = node(port).execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def commit_topic(settings: Settings, low: int, high: int) -> str:
    """An events topic name whose commit slot (its counters' key) lies in [low, high]."""
    for n in range(100_000):
        topic = f"{settings.events_topic}.{n}"
        if low <= key_slot(keys.stats_key(topic).encode()) <= high:
            return topic
    raise AssertionError("no topic name hashes into the range")


def reshard(port: int, source: str, target: str, slots: int, log: Path) -> subprocess.Popen:
    """`redis-cli --cluster reshard`: the lowest `slots` slots of `source` move to `target`,
    key by key (MIGRATE), while the cluster keeps serving. Its output (a line per slot) goes
    to `log`, not a pipe nobody reads while it runs."""
    argv = ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{port}", "--cluster-from", source,
            "--cluster-to", target, "--cluster-slots", str(slots), "--cluster-yes",
            "--cluster-pipeline", "5"]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)


def role(port: int) -> str:
    try:
        return str(node(port).info("replication")["role"])
    except (redis.RedisError, OSError):
        return "down"


def test_consumer_rides_through_resharding_and_a_master_failover(
    replicated: RedisClusterServers, settings: Settings, tmp_path: Path
) -> None:
    servers = replicated
    m0, m1, m2 = servers.ports[:NODES]
    # The URL names a master that is neither resharded nor killed; the commit slot is among
    # the slots that move from m1 to m2 (m1's lowest), so the commit itself is redirected,
    # then lives on the master that is killed.
    low = 16_384 // NODES
    topic = commit_topic(settings, low, low + MOVED_SLOTS - 1)
    on_cluster = settings.model_copy(
        update={"redis_url": f"redis+cluster://127.0.0.1:{m0}/0", "events_topic": topic,
                "data_dir": tmp_path}
    )  # fmt: skip
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    commit_key = keys.stats_key(topic)
    assert client.get_node_from_key(commit_key).port == m1
    replicas = ClusterStateStore(client, topic, 60).replicas  # an empty cluster: still counted
    assert [replicas.of(node) for node in client.get_primaries()] == [1] * NODES

    events, genres = make_log(n_users=150, events_per_user=80, seed=41)  # 12,000 events
    # Published in slices of the one log as consuming goes on (per-user order is kept, which
    # is what the reference needs), so the consumer is mid-log whatever its speed.
    chunks = [events[i : i + 200] for i in range(0, len(events), 200)]
    publish_log(on_cluster, chunks.pop(0), genres)

    def feed(n: int = 1) -> None:
        for _ in range(min(n, len(chunks))):
            publish_log(on_cluster, chunks.pop(0), {})

    feed(2)
    env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="40")
    proc = start_consumer(env, f"failover-{topic}", idle_exit=10)
    try:
        wait_for(lambda: processed(client, topic) > 300, 90, "the consumer's progress", proc)
        log = tmp_path / "reshard.log"
        moving = reshard(m0, node_id(m1), node_id(m2), MOVED_SLOTS, log)
        at_start = processed(client, topic)
        started = time.monotonic()
        while moving.poll() is None:
            if len(chunks) > 10:
                feed()
            time.sleep(0.3)
            assert time.monotonic() < started + 180, "the reshard did not finish in 3 minutes"
        assert moving.returncode == 0, log.read_text()[-3000:]
        assert log.read_text().count("Moving slot") >= MOVED_SLOTS
        at_end = processed(client, topic)
        print(f"reshard: {time.monotonic() - started:.1f}s, {at_end - at_start} events meanwhile")
        assert at_end > at_start, "nothing was consumed while the slots moved"
        assert client.get_node_from_key(commit_key).port == m2 or _refreshed(client, commit_key, m2)

        feed(2)
        wait_for(lambda: processed(client, topic) > at_end, 90, "progress after the reshard",
                 proc)  # fmt: skip
        (replica,) = [p for p in servers.ports[NODES:] if servers.master_of(p) == m2]
        killed = servers.servers[servers.ports.index(m2)].process.pid()
        assert killed is not None
        subprocess.run(["kill", "-KILL", str(killed)], check=True)  # by pid: ours
        assert len(chunks) >= 5
        feed(len(chunks))  # the rest, to be consumed through and after the failover
        deadline = time.monotonic() + 60
        while role(replica) != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.1)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    # Its own count may miss a batch whose commit landed and whose apply the failover cut:
    # recovery applied that one. The stored counter counts every event once (assert_exact).
    assert 0 < json.loads(out.strip().splitlines()[-1])["processed"] <= len(events)
    verify = connect(on_cluster)
    assert isinstance(verify, RedisCluster)
    assert verify.get_node_from_key(commit_key).port == replica
    assert_exact(on_cluster, verify, events, genres)
    client.close()
    verify.close()


def test_writes_a_failed_master_acknowledged_alone_are_not_relied_on(
    slow_to_fail: RedisClusterServers, settings: Settings, tmp_path: Path
) -> None:
    servers = slow_to_fail
    m0, m1, _m2 = servers.ports[:NODES]
    low = 16_384 // NODES
    topic = commit_topic(settings, low, 2 * low - 1)  # the commit slot on m1
    on_cluster = settings.model_copy(
        update={"redis_url": f"redis+cluster://127.0.0.1:{m0}/0", "events_topic": topic,
                "data_dir": tmp_path}
    )  # fmt: skip
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    assert client.get_node_from_key(keys.stats_key(topic)).port == m1
    events, genres = make_log(n_users=150, events_per_user=60, seed=43)  # 9,000 events
    first, second = events[:7_000], events[7_000:]
    publish_log(on_cluster, first, genres)
    env = consumer_env(on_cluster, ENGAGE_BATCH_MAX_RECORDS="40")
    proc = start_consumer(env, f"lost-{topic}", idle_exit=6)
    (replica,) = [p for p in servers.ports[NODES:] if servers.master_of(p) == m1]
    replica_pid = servers.servers[servers.ports.index(replica)].process.pid()
    master_pid = servers.servers[servers.ports.index(m1)].process.pid()
    assert replica_pid is not None and master_pid is not None
    try:
        wait_for(lambda: processed(client, topic) > 1_000, 90, "the consumer's progress", proc)
        subprocess.run(["kill", "-STOP", str(replica_pid)], check=True)
        try:
            node(m1).execute_command("CLIENT", "KILL", "TYPE", "replica")  # m1 goes on alone
            alone = processed(client, topic)
            time.sleep(1.0)  # the consumer's writes reach m1 only; its WAITs time out
            stalled = processed(client, topic)
            subprocess.run(["kill", "-KILL", str(master_pid)], check=True)  # by pid: ours
        finally:
            subprocess.run(["kill", "-CONT", str(replica_pid)], check=True)
        assert stalled < len(first)
        publish_log(on_cluster, second, {})
        deadline = time.monotonic() + 60
        while role(replica) != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.1)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    # Alone, m1 took at most a commit or two before their WAIT failed (or m1 died during it);
    # without waiting for replicas the consumer applied ~2,000 events in that second, all
    # lost with m1, and the final state was not the reference.
    assert stalled - alone <= 3 * 40, (alone, stalled)
    verify = connect(on_cluster)
    assert isinstance(verify, RedisCluster)
    assert verify.get_node_from_key(keys.stats_key(topic)).port == replica
    assert_exact(on_cluster, verify, events, genres)
    client.close()
    verify.close()


def _refreshed(client: RedisCluster, key: str, port: int) -> bool:
    client.nodes_manager.initialize()
    return client.get_node_from_key(key).port == port
