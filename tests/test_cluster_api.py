"""`engage score`, `engage top`, the HTTP API and the dashboard's data endpoints on a Redis
Cluster that `engage consume` itself wrote (issue 17): a private 3-master cluster started
here from redis-server, a registered model, a generated log consumed there; every answer is
checked against what the consumer stored on the Cluster (tests/test_redis_cluster.py checks
the same reads against a single node's copy)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from engage.api import create_app
from engage.api.live import score_stream
from engage.redis_client import connect
from engage.settings import Settings
from features import keys
from tests.conftest import fresh_settings
from tests.eventlog import consume_log, make_log, publish_log
from tests.test_api import WEIRD_USERS, _register_model
from tests.test_redis_cluster import NODES, engage, private_cluster

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def on_cluster(
    tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings, test_redis_db: int
) -> Iterator[Settings]:
    """A model, then the consumer over `make_log` events, all on a private 3-master cluster."""
    with private_cluster(tmp_path_factory, stack_settings, "cluster-api") as (url, _):
        settings = fresh_settings(stack_settings, test_redis_db).model_copy(
            update={"redis_url": url, "data_dir": tmp_path_factory.mktemp("data")}
        )
        _register_model(settings)
        events, genres = make_log(n_users=24, events_per_user=20)
        publish_log(settings, events, genres)
        assert consume_log(settings, f"api-{settings.events_topic}") == len(events)
        yield settings


@pytest.fixture(scope="module")
def cluster(on_cluster: Settings) -> Iterator[RedisCluster]:
    client = connect(on_cluster)
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


@pytest.fixture(scope="module")
def api(on_cluster: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(on_cluster)) as client:
        yield client


USERS = ["user0", *WEIRD_USERS]


def test_the_consumer_wrote_the_scores_on_every_node(cluster: RedisCluster) -> None:
    names = [keys.user_score_key(f"user{i}") for i in range(0, 24, 4)] + [
        keys.user_score_key(u) for u in USERS
    ]
    assert all(cluster.exists(name) for name in names)
    assert len({cluster.get_node_from_key(n).name for n in names}) == NODES


def test_score_endpoints_answer_what_the_cluster_holds(api: TestClient, cluster: RedisCluster):
    for user in USERS:
        answer = api.get(f"/users/{quote(user, safe='')}/score")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        stored = cluster.hgetall(keys.user_score_key(user))
        assert body["user_id"] == user and body["rule_score"] == float(stored[b"rule_score"])
        assert body["label"] == stored[b"label"].decode()
        assert body["model_version"] and 0.0 < body["propensity"] < 1.0
        posted = api.post("/score", json={"user_id": user})
        assert posted.status_code == 200 and posted.json() == body
    assert api.get("/users/nobody/score").status_code == 404
    with_item = api.post("/score", json={"user_id": "user0", "item_id": "m1"})  # two slots
    assert with_item.status_code == 200, with_item.text
    assert 0.0 < with_item.json()["probability"] < 1.0 and with_item.json()["warnings"] == []


def test_leaderboards_are_the_clusters_sorted_sets(api: TestClient, cluster: RedisCluster):
    for by, kind in (("rule", "rule"), ("model", "model")):
        top = api.get("/users/top", params={"n": 8, "by": by})
        assert top.status_code == 200, top.text
        ranked = cluster.zrevrange(keys.leaderboard_key(kind), 0, 7, withscores=True)
        assert [u["user_id"] for u in top.json()] == [m.decode() for m, _ in ranked]
    for label in ("high", "medium", "low"):
        only = api.get("/users/top", params={"n": 5, "label": label})
        assert only.status_code == 200 and all(u["label"] == label for u in only.json())


def test_cli_score_and_top_on_the_cluster(on_cluster: Settings, api: TestClient) -> None:
    for user in USERS:
        result = engage(on_cluster, "score", user, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == api.get(f"/users/{quote(user, safe='')}/score").json()
    top = engage(on_cluster, "top", "10", "--json")
    assert top.returncode == 0, top.stderr
    ranked = [u["user_id"] for u in json.loads(top.stdout)]
    assert ranked == [u["user_id"] for u in api.get("/users/top", params={"n": 10}).json()]
    assert len(ranked) == 10
    missing = engage(on_cluster, "score", "nobody-here")
    assert missing.returncode == 4 and "no score for user 'nobody-here'" in missing.stderr


def test_dashboard_and_its_data_endpoints(api: TestClient) -> None:
    """The page, then what its script fetches: the leaderboard, a user's score and history
    (the scores topic; the user's existence from the Cluster), health and metrics."""
    page = api.get("/")
    assert page.status_code == 200 and 'id="leaderboard"' in page.text
    assert api.get("/healthz").json() == {"kafka": True, "redis": True}
    history = api.get(f"/users/{quote('weird:1', safe='')}/history")
    assert history.status_code == 200, history.text
    points = history.json()
    assert len(points) == 20  # each of the user's events scored once
    current = api.get(f"/users/{quote('weird:1', safe='')}/score").json()
    assert (points[-1]["event_id"], points[-1]["rule_score"]) == (
        current["event_id"],
        current["rule_score"],
    )
    assert api.get("/users/ghost/history").status_code == 404
    assert "engage_api_requests" in api.get("/metrics").text


def test_live_stream_gets_what_is_published_through_the_cluster(
    on_cluster: Settings, cluster: RedisCluster
) -> None:
    """`GET /events` subscribes on the URL's node; the consumer publishes through its Cluster
    client, to whichever node; Redis Cluster forwards a PUBLISH to every node."""

    async def first_update() -> bytes:
        stream = score_stream(on_cluster, "weird:1")
        try:
            assert (await anext(stream)).startswith(b"retry:")  # subscribed
            message = b'[{"user_id": "user0"}, {"user_id": "weird:1", "rule": {}}]'
            channel = keys.scores_channel(on_cluster.events_topic)
            for node in cluster.get_primaries():  # whichever node publishes, it arrives
                cluster.publish(channel, message, target_nodes=node)
            return await asyncio.wait_for(anext(stream), timeout=5)
        finally:
            await stream.aclose()

    update = asyncio.run(first_update())
    assert update.startswith(b"event: scores\ndata: ")
    assert json.loads(update.split(b"data: ", 1)[1]) == [{"user_id": "weird:1", "rule": {}}]
