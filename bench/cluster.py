"""One node vs a Redis Cluster (issue 17, item 4): the same MovieLens topic consumed by one
consumer process (bench/consumer_worker.py: the real StreamConsumer) on the stack's single
Redis and on a local 3-master Redis Cluster (no replicas) started here from the same
`redis-server` binary on free ports, in the same harness run, run by run, one after the other.

Per side: events/s (first batch to last, as consumer_movielens), the Redis server CPU per
event (user + system from /proc/<pid>/stat; on the Cluster summed over its nodes; on one node
only when this project started it), and bytes per user: MEMORY USAGE of every per-user key
(`u:{user}*`, and on the Cluster the user's guard hash `ug:{user}`) over the users, after the
run. The Cluster's nodes are stopped by pid at the end.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from bench import sources
from bench.common import Context, process_cpu_s
from bench.consumer_worker import run_consumers
from bench.growth import _user_key_kind
from engage.redis_client import connect
from engage.settings import Settings
from engage.stack.redis_cluster import RedisClusterServers, free_base_port
from engage.stack.redis_server import RedisServer

MASTERS = 3
SCAN_COUNT = 1_000


@contextmanager
def local_cluster(settings: Settings) -> Iterator[tuple[str, RedisClusterServers]]:
    """A 3-master cluster in a temporary folder on free ports: its URL and its servers."""
    with tempfile.TemporaryDirectory(prefix="engage-bench-cluster-") as tmp:
        base = free_base_port(MASTERS)
        own = settings.model_copy(update={"stack_dir": Path(tmp), "stack_redis_cluster_port": base})
        servers = RedisClusterServers(own, MASTERS)
        servers.start()
        try:
            yield f"redis+cluster://127.0.0.1:{base}/0", servers
        finally:
            servers.stop()


def _sizes(node: redis.Redis, pattern: str) -> Iterator[tuple[bytes, int]]:
    """(key, MEMORY USAGE) of one node's keys matching `pattern`, a pipeline per SCAN page."""
    keys = node.scan_iter(match=pattern, count=SCAN_COUNT)
    while True:
        batch = [k for _, k in zip(range(SCAN_COUNT), keys, strict=False)]
        if not batch:
            return
        pipe = node.pipeline(transaction=False)
        for key in batch:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(batch, pipe.execute(), strict=True):
            if size is not None:  # None: expired between SCAN and MEMORY USAGE
                yield key, size


def user_bytes(client: redis.Redis | RedisCluster) -> dict[str, Any]:
    """MEMORY USAGE of every per-user key, per kind, over the users (every master's keys)."""
    if isinstance(client, RedisCluster):
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    else:
        nodes = [client]
    by_kind: dict[str, int] = {}
    users = 0
    for node in nodes:
        for pattern in ("u:*", "ug:*"):
            for key, size in _sizes(node, pattern):
                kind = "guard" if key.startswith(b"ug:") else _user_key_kind(key)
                by_kind[kind] = by_kind.get(kind, 0) + size
                users += kind == "hash"
    per_user = {k: round(v / users, 1) for k, v in sorted(by_kind.items())} if users else {}
    return {
        "users": users,
        "bytes_per_user": sum(by_kind.values()) / users if users else 0.0,
        "bytes_per_user_by_key": per_user,
    }


def _side(ctx: Context, url: str | None, pids: list[int | None], name: str) -> dict[str, Any]:
    """One consumer run over the MovieLens topic on `url` (None: the context's own Redis)."""
    topic, count = sources.movielens_topic(ctx)
    items = sources.movielens_data(ctx).items
    side = ctx if url is None else replace(ctx, settings=ctx.settings.model_copy(
        update={"redis_url": url}))  # fmt: skip
    side.reset_state(items)  # the Cluster: FLUSHDB on every master, then the item metadata
    settings = ctx.with_output(topic, name)
    if url is not None:
        settings = settings.model_copy(update={"redis_url": url})
    before = [process_cpu_s(pid) for pid in pids]
    try:
        result = run_consumers(side, settings, count)
    finally:
        ctx.delete(settings.scores_topic, settings.dead_letter_topic)
    after = [process_cpu_s(pid) for pid in pids]
    used = None
    if pids and all(v is not None for v in [*before, *after]):
        used = sum((a or 0.0) - (b or 0.0) for a, b in zip(after, before, strict=True))
    if result["events"] != count:
        raise RuntimeError(f"{name}: consumed {result['events']} events of {count}")
    client = connect(side.settings)
    try:
        memory = user_bytes(client)
    finally:
        client.close()
    if url is not None:
        side.reset_state()
    return {
        "events": result["events"],
        "events_per_s": result["events_per_s"],
        "consumer_cpu_us_per_event": result.get("cpu_us_per_event"),
        "redis_nodes": len(pids),
        "redis_cpu_s": used,
        "redis_cpu_us_per_event": None if used is None else used / result["events"] * 1e6,
        **memory,
    }


def measure(ctx: Context, runs: int) -> Iterator[dict[str, Any]]:
    """Per run: the single node, then the Cluster, over the same topic."""
    single_pid = RedisServer(ctx.settings).process.pid()  # None: not this project's Redis
    with local_cluster(ctx.settings) as (url, servers):
        ctx.log(f"local Redis Cluster of {MASTERS} masters at {url}")
        for _ in range(runs):
            single = _side(ctx, None, [single_pid], "single")
            cluster = _side(ctx, url, list(servers.pids()), "cluster")
            yield {"single": single, "cluster": cluster, "single_redis_ours": bool(single_pid)}
