"""ml-latest-small on a Redis Cluster (issue 17): the real MovieLens data replayed with
`engage replay movielens` into a fresh topic (item metadata into the Cluster), consumed by
`engage consume` on a private 3-master cluster started here from redis-server; every user,
session and item aggregate equals tests/reference.py, the oracle the single-node tests use,
with the items' genres and release years."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from engage.redis_client import connect
from engage.settings import Settings
from features import keys
from producer import movielens
from tests.conftest import IN_CI
from tests.eventlog import engage_env
from tests.reference import diff_against_redis, reference_state
from tests.test_cluster_store import pending_journals, processed
from tests.test_fold import SHARED_MOVIELENS
from tests.test_redis_cluster import NODES, private_cluster

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def cluster_url(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings
) -> Iterator[str]:
    with private_cluster(tmp_path_factory, stack_settings, "cluster-movielens") as (url, _):
        yield url


def test_ml_latest_small_on_the_cluster_equals_the_reference(
    cluster_url: str, settings: Settings, tmp_path: Path
) -> None:
    if not SHARED_MOVIELENS.is_dir():
        if IN_CI:
            pytest.fail(f"CI needs the shared MovieLens copy at {SHARED_MOVIELENS}", pytrace=False)
        pytest.skip(f"no shared MovieLens copy at {SHARED_MOVIELENS} (outside CI, so skipping)")
    on_cluster = settings.model_copy(update={"redis_url": cluster_url, "data_dir": tmp_path})
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    env = engage_env(on_cluster, ENGAGE_CACHE_DIR=str(tmp_path / "cache"))

    started = time.monotonic()
    replay = subprocess.run([sys.executable, "-m", "engage", "replay", "movielens", "--path",
                             str(SHARED_MOVIELENS), "--json", "--no-progress"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-3000:]
    sent = json.loads(replay.stdout)
    assert sent["sent"] == 104_519 and sent["failed"] == 0
    replayed = time.monotonic()
    consume = subprocess.run([sys.executable, "-m", "engage", "consume", "--group",
                              f"ml-{on_cluster.events_topic}", "--idle-exit", "3", "--json"],
                             env={**env, "ENGAGE_BATCH_MAX_RECORDS": "2000"}, capture_output=True,
                             text=True, timeout=600, check=False)  # fmt: skip
    assert consume.returncode == 0, consume.stderr[-3000:]
    consumed = time.monotonic()

    data = movielens.load(SHARED_MOVIELENS, tmp_path / "cache")
    events = [e.model_dump(mode="json", exclude_none=True) for e in data.events()]
    genres = {item: list(m.genres) for item, m in data.items.items()}
    years = {item: m.year for item, m in data.items.items() if m.year}
    p = on_cluster.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms, years=years)
    assert len(ref["users"]) == 610 and len(ref["sessions"]) > 610
    assert diff_against_redis(ref, client) == []
    assert processed(client, on_cluster.events_topic) == len(events) == 104_519
    assert pending_journals(client, on_cluster.events_topic) == 0
    assert client.zcard(keys.leaderboard_key("rule")) == 610
    users = sorted(ref["users"])
    assert len({client.get_node_from_key(keys.user_key(u)).name for u in users}) == NODES
    print(f"replay {replayed - started:.1f}s, consume {consumed - replayed:.1f}s, "
          f"check {time.monotonic() - consumed:.1f}s")  # fmt: skip
    client.close()
