"""Redis Cluster (issue 17, item 3): the client, replay's item metadata, the read side (score,
top, the API, stats) and the stack's local cluster, against real 3-master clusters of
redis-server processes; a plain URL naming a Cluster node is refused with one clear line (the
consumer on a Cluster: tests/test_cluster_store.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError
from redis.cluster import RedisCluster

from consumer.runner import StreamConsumer
from engage.api import create_app
from engage.redis_client import CLUSTER_NODE, connect
from engage.settings import Settings
from engage.stack.redis_cluster import NODE_TIMEOUT_MS, RedisClusterServers, free_base_port
from features import keys
from features.items import ItemMeta
from producer.movielens import load_folder
from tests.conftest import _unavailable
from tests.eventlog import engage_env, make_log, publish_log
from tests.test_api import _register_model
from tests.test_stack_lifecycle import processes_under, run_engage

pytestmark = pytest.mark.stack
NODES = 3


@contextlib.contextmanager
def private_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    stack_settings: Settings,
    name: str,
    replicas: int = 0,
    node_timeout_ms: int = NODE_TIMEOUT_MS,
) -> Iterator[tuple[str, RedisClusterServers]]:
    """A 3-master cluster (with `replicas` replicas of each master) on free ports and its own
    folder: its URL and its servers; stopped by pid at the end (if the caller did not stop
    them)."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed (apt-get install redis-server)")
    base = free_base_port(NODES * (1 + replicas))
    own = stack_settings.model_copy(
        update={"stack_dir": tmp_path_factory.mktemp(name), "stack_redis_cluster_port": base}
    )
    servers = RedisClusterServers(own, NODES, replicas, node_timeout_ms)
    servers.start()
    try:
        yield f"redis+cluster://127.0.0.1:{base}/0", servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings) -> Iterator[str]:
    """A private 3-master cluster on its own ports and folder; yields its URL. Stopped by pid."""
    with private_cluster(tmp_path_factory, stack_settings, "cluster-stack") as (url, servers):
        pids = servers.pids()
        assert all(pids) and len(set(pids)) == NODES
        yield url
        assert servers.stop() == NODES
    assert processes_under(servers.settings.stack_dir) == []


@pytest.fixture
def on_cluster(cluster: str, settings: Settings) -> Settings:
    """This test's settings (fresh topics, the real Kafka) with Redis = the empty cluster."""
    clustered = settings.model_copy(update={"redis_url": cluster})
    client = connect(clustered)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    return clustered


def engage(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip


def nodes_holding(client: RedisCluster, names: list[str]) -> set[str]:
    return {client.get_node_from_key(name).name for name in names}


def test_the_client_is_a_cluster_client_for_the_setting_and_the_url(on_cluster: Settings):
    node_url = on_cluster.redis_url.replace("redis+cluster://", "redis://")
    by_url = connect(on_cluster)
    by_setting = connect(
        on_cluster.model_copy(update={"redis_url": node_url, "redis_cluster": True})
    )
    plain = connect(on_cluster.model_copy(update={"redis_url": node_url}))
    assert isinstance(by_url, RedisCluster) and isinstance(by_setting, RedisCluster)
    assert type(plain) is redis.Redis
    assert len(by_url.get_primaries()) == NODES == len(by_setting.get_primaries())
    # A user's keys and the items land on different nodes; the cluster client follows them.
    names = [keys.user_key(f"user{i}") for i in range(30)]
    assert len(nodes_holding(by_url, names)) == NODES
    for name in names:
        by_url.hset(name, "x", name)
    assert [by_setting.hget(name, "x").decode() for name in names] == names
    with pytest.raises(redis.exceptions.MovedError):
        for name in names:  # what the plain client did before (issue 17's MovedError)
            plain.hget(name, "x")
    with pytest.raises(ValidationError, match="database 0 only"):  # at start-up, not 1st read
        Settings(redis_url=on_cluster.redis_url.removesuffix("/0") + "/3")
    dead = free_base_port(1)
    with pytest.raises(redis.ConnectionError, match="Redis Cluster"):
        connect(on_cluster.model_copy(update={"redis_url": f"redis+cluster://127.0.0.1:{dead}/0"}))


def write_movielens(folder: Path, movies: int = 40) -> Path:
    """A small MovieLens folder: `movies` titles with genres and years, one rating each."""
    genres = ["Action", "Comedy|Drama", "Sci-Fi|Thriller|Horror", "(no genres listed)"]
    folder.mkdir(parents=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        + "".join(f"{m},Film {m} ({1950 + m}),{genres[m % 4]}\n" for m in range(1, movies + 1))
    )
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        + "".join(f"{m % 7},{m},{1 + m % 5}.0,{964_982_000 + m}\n" for m in range(1, movies + 1))
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n")
    return folder


def test_replay_writes_item_metadata_on_the_cluster(on_cluster: Settings, tmp_path: Path):
    folder = write_movielens(tmp_path / "ml")
    result = engage(on_cluster, "replay", "movielens", "--path", str(folder), "--json",
                    "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items_written"] == 40 and summary["sent"] == 40 and summary["failed"] == 0
    client = connect(on_cluster)
    names = [keys.item_meta_key(str(m)) for m in range(1, 41)]
    assert len(nodes_holding(client, names)) == NODES  # im:{1} was issue 17's MovedError
    expected = load_folder(folder).items
    for item, meta in expected.items():
        stored = client.hgetall(keys.item_meta_key(item))
        assert ItemMeta.from_hash(stored) == meta, item
    second = ItemMeta.from_hash(client.hgetall(keys.item_meta_key("2")))
    assert second.genres == ("Sci-Fi", "Thriller", "Horror") and second.year == 1952


def copy_database(source: redis.Redis, target: RedisCluster) -> int:
    """Every key of a single-node database into the cluster (DUMP/RESTORE, TTLs kept)."""
    copied = 0
    for name in source.scan_iter(count=500):
        ttl = max(source.pttl(name), 0)
        target.restore(name, ttl, source.dump(name), replace=True)
        copied += 1
    return copied


def test_reads_on_the_cluster_equal_the_single_node(
    settings: Settings, on_cluster: Settings, tmp_path: Path
):
    """The consumer scores a small log on one node, with a model; its whole output is copied
    into the cluster; every read answers there as on the node."""
    settings = settings.model_copy(update={"data_dir": tmp_path})
    on_cluster = on_cluster.model_copy(update={"data_dir": tmp_path})
    _register_model(settings)
    events, genres = make_log(n_users=12, events_per_user=15)
    publish_log(settings, events, genres)
    summary = StreamConsumer(settings, group=f"{settings.events_topic}.cluster").run(idle_exit_s=3)
    assert summary.processed == len(events)
    single = connect(settings)
    clustered = connect(on_cluster)
    assert copy_database(single, clustered) == single.dbsize() > 12 * 3
    users = sorted({e["user_id"] for e in events})
    assert len(nodes_holding(clustered, [keys.user_score_key(u) for u in users])) == NODES

    for user in ["weird:1", "{brace}2", "sp ace 3", "user0"]:
        one = engage(settings, "score", user, "--json")
        many = engage(on_cluster, "score", user, "--json")
        assert one.returncode == many.returncode == 0, many.stderr
        assert json.loads(many.stdout) == json.loads(one.stdout)
    item = ["user0", "--item", "m1", "--json"]  # the user's and the item's slots, pipelined
    one, many = engage(settings, "score", *item), engage(on_cluster, "score", *item)
    assert many.returncode == 0, many.stderr
    got, want = json.loads(many.stdout), json.loads(one.stdout)  # scored "now": a second apart
    probability = got.pop("probability")
    assert 0 < probability < 1 and probability == pytest.approx(want.pop("probability"), rel=1e-3)
    for reasons in (got["reasons"], want["reasons"]):
        for reason in reasons:
            reason["contribution"] = round(reason["contribution"], 1)
    assert got == want and got["warnings"] == []  # the item's aggregates and metadata found
    unknown = engage(on_cluster, "score", "nobody-here")
    assert unknown.returncode == 4 and "no score for user 'nobody-here'" in unknown.stderr

    for args in (["top", "10", "--json"], ["top", "5", "--by", "model", "--json"],
                 ["top", "5", "--label", "low", "--json"]):  # fmt: skip
        one, many = engage(settings, *args), engage(on_cluster, *args)
        assert many.returncode == 0, many.stderr
        assert json.loads(many.stdout) == json.loads(one.stdout)
    assert len(json.loads(engage(on_cluster, "top", "10", "--json").stdout)) == 10

    stats = engage(on_cluster, "stats", "--json")  # offsets of 6 partitions: several slots
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout) == json.loads(engage(settings, "stats", "--json").stdout)
    assert json.loads(stats.stdout)["processed"] == len(events)

    with TestClient(create_app(on_cluster)) as api, TestClient(create_app(settings)) as ref:
        for path in ("/users/weird%3A1/score", "/users/top?n=8", "/users/top?n=3&by=model"):
            answer = api.get(path)
            assert answer.status_code == 200, answer.text
            assert answer.json() == ref.get(path).json()
        assert api.get("/users/nobody/score").status_code == 404
        assert api.get("/healthz").json() == {"kafka": True, "redis": True}
        posted = api.post("/score", json={"user_id": "user0"})
        assert posted.status_code == 200 and posted.json()["user_id"] == "user0"


def test_a_plain_url_naming_a_cluster_node_is_one_clear_line(on_cluster: Settings):
    """Named as a Cluster, the consumer runs there (tests/test_cluster_store.py); a plain URL
    that happens to name a Cluster node is refused before its first MOVED."""
    node_url = on_cluster.redis_url.replace("redis+cluster://", "redis://")
    result = engage(on_cluster, "consume", "--idle-exit", "1", ENGAGE_REDIS_URL=node_url)
    assert result.returncode == 2, result.stderr
    assert CLUSTER_NODE in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and "MOVED" not in result.stderr


def test_stack_up_redis_cluster_records_reuses_and_stops_its_nodes(
    stack_settings: Settings, tmp_path: Path
):
    stack_dir = tmp_path / "stack"
    base = free_base_port(NODES)
    env = {
        "ENGAGE_STACK_DIR": str(stack_dir),
        "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": stack_settings.kafka_bootstrap_servers,  # reused
        "ENGAGE_STACK_REDIS_CLUSTER_PORT": str(base),
    }
    url = f"redis+cluster://127.0.0.1:{base}/0"
    up = run_engage(["stack", "up", "--redis-cluster", str(NODES), "--json"], env)
    assert up.returncode == 0, up.stderr
    states = {s["name"]: s for s in json.loads(up.stdout)}
    assert states["kafka"]["origin"] == "external"
    started = states["redis-cluster"]
    assert started["origin"] == "started" and started["address"] == url
    assert f"export ENGAGE_REDIS_URL={url}" in up.stderr
    assert sorted(started["pids"]) == sorted(processes_under(stack_dir))
    assert len(started["pids"]) == NODES
    for i in range(NODES):
        assert (stack_dir / "redis-cluster" / str(base + i) / "redis.pid").exists()
    client = RedisCluster(host="127.0.0.1", port=base)
    assert client.cluster_info()["cluster_state"] == "ok"
    assert len(client.get_primaries()) == NODES
    client.set("kept", "1")
    client.close()

    status = run_engage(["stack", "status", "--json"], {**env, "ENGAGE_REDIS_CLUSTER": "true"})
    assert status.returncode == 0, status.stderr
    (cluster_state,) = [s for s in json.loads(status.stdout) if s["name"] == "redis-cluster"]
    assert cluster_state["origin"] == "ours" and cluster_state["pids"] == started["pids"]
    again = run_engage(["stack", "up", "--redis-cluster", str(NODES), "--json"], env)
    assert {s["name"]: s for s in json.loads(again.stdout)}["redis-cluster"]["origin"] == "ours"
    assert sorted(processes_under(stack_dir)) == sorted(started["pids"])  # nothing new

    down = run_engage(["stack", "down"], env)
    assert down.returncode == 0 and f"redis-cluster ({NODES} nodes)" in down.stderr
    assert processes_under(stack_dir) == []
    cluster_env = {**env, "ENGAGE_REDIS_CLUSTER": "true"}
    assert run_engage(["stack", "status"], cluster_env).returncode == 3

    # Up again: the same cluster comes back from its nodes.conf files, with its data.
    restarted = run_engage(["stack", "up", "--redis-cluster", str(NODES), "--json"], env)
    assert restarted.returncode == 0, restarted.stderr
    client = RedisCluster(host="127.0.0.1", port=base)
    assert client.get("kept") == b"1"
    client.close()
    assert run_engage(["stack", "down"], env).returncode == 0
    assert processes_under(stack_dir) == []
