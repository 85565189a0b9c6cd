"""`engage stack up | down | status`: reuse servers that answer, start what is missing, stop ours.

Decision per service, in order:
1. the user named its address (ENGAGE_KAFKA_BOOTSTRAP_SERVERS / ENGAGE_REDIS_URL): use it,
   never start anything (a clear error if it does not answer);
2. our own process (pid file under the stack folder) or any server answers there: reuse it;
3. otherwise start ours.

Redis is one node, or a local Redis Cluster of N masters when the settings say cluster
(`engage stack up --redis-cluster N`, ENGAGE_REDIS_CLUSTER=true): engage/stack/redis_cluster.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from engage.redact import redact_url
from engage.settings import Settings
from engage.stack.errors import StackError
from engage.stack.kafka_server import KafkaServer
from engage.stack.probes import kafka_answers, redis_answers
from engage.stack.redis_cluster import RedisClusterServers, cluster_settings, recorded_nodes
from engage.stack.redis_server import RedisServer

Origin = Literal["started", "ours", "external", "down"]


@dataclass
class ServiceState:
    name: str
    address: str
    origin: Origin
    pid: int | None = None
    ready_s: float | None = None
    pids: list[int] = field(default_factory=list)  # every process of ours (cluster: N nodes)

    def __post_init__(self) -> None:
        if not self.pids and self.pid is not None:
            self.pids = [self.pid]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _kafka_state(settings: Settings, start: bool) -> ServiceState:
    server = KafkaServer(settings)
    address = settings.kafka_bootstrap_servers
    pid = server.process.pid()
    named = settings.explicitly_set("kafka_bootstrap_servers")
    if kafka_answers(settings, timeout_s=3.0):
        return ServiceState("kafka", address, "ours" if pid else "external", pid)
    if named:
        if start:
            raise StackError(
                f"ENGAGE_KAFKA_BOOTSTRAP_SERVERS={address} names a broker that does "
                "not answer; start it or unset the variable to use the local stack."
            )
        return ServiceState("kafka", address, "down")
    if pid is not None and start:  # ours but not answering: restart it cleanly
        server.process.stop(timeout_s=15)
    if not start:
        return ServiceState("kafka", address, "down", pid)
    ready = server.start()
    return ServiceState("kafka", address, "started", server.process.pid(), round(ready, 2))


def _redis_cluster_state(settings: Settings, start: bool) -> ServiceState:
    """As `_redis_state`, for the N nodes of the local cluster (ours when any pid is)."""
    servers = RedisClusterServers(settings, settings.stack_redis_cluster_nodes)
    address = redact_url(settings.redis_url)
    ours = [pid for pid in servers.pids() if pid is not None]
    first = ours[0] if ours else None
    if redis_answers(settings, timeout_s=2.0):
        return ServiceState("redis-cluster", address, "ours" if ours else "external", first,
                            pids=ours)  # fmt: skip
    if settings.explicitly_set("redis_url"):
        if start:
            raise StackError(
                f"ENGAGE_REDIS_URL={address} names a Redis Cluster that does not answer; "
                "start it or unset the variable to use the local stack."
            )
        return ServiceState("redis-cluster", address, "down")
    if not start:
        return ServiceState("redis-cluster", address, "down", first, pids=ours)
    ready = servers.start()
    pids = [pid for pid in servers.pids() if pid is not None]
    return ServiceState("redis-cluster", address, "started", pids[0], round(ready, 2), pids)


def _redis_state(settings: Settings, start: bool) -> ServiceState:
    if settings.redis_is_cluster:
        return _redis_cluster_state(settings, start)
    server = RedisServer(settings)
    address = redact_url(settings.redis_url)  # shown in status and errors: no password
    pid = server.process.pid()
    named = settings.explicitly_set("redis_url")
    if redis_answers(settings):
        return ServiceState("redis", address, "ours" if pid else "external", pid)
    if named:
        if start:
            raise StackError(
                f"ENGAGE_REDIS_URL={address} names a Redis that does not answer; "
                "start it or unset the variable to use the local stack."
            )
        return ServiceState("redis", address, "down")
    if pid is not None and start:
        server.process.stop(timeout_s=10)
    if not start:
        return ServiceState("redis", address, "down", pid)
    ready = server.start()
    return ServiceState("redis", address, "started", server.process.pid(), round(ready, 2))


def up(settings: Settings, redis_cluster: int | None = None) -> list[ServiceState]:
    """Make Kafka and Redis answer; start only what is missing. Nothing is left half-started.
    `redis_cluster`: Redis is a local cluster of that many masters instead of one node."""
    if redis_cluster is not None:
        settings = cluster_settings(settings, redis_cluster)
    redis_state = _redis_state(settings, start=True)
    try:
        kafka_state = _kafka_state(settings, start=True)
    except StackError:
        if redis_state.origin == "started" and redis_state.name == "redis-cluster":
            RedisClusterServers(settings, settings.stack_redis_cluster_nodes).stop()
        elif redis_state.origin == "started":
            RedisServer(settings).process.stop()
        raise
    return [kafka_state, redis_state]


def status(settings: Settings) -> list[ServiceState]:
    states = [_kafka_state(settings, start=False), _redis_state(settings, start=False)]
    if not settings.redis_is_cluster and recorded_nodes(settings):  # ours, so show it too
        nodes = len(recorded_nodes(settings))
        states.append(_redis_cluster_state(cluster_settings(settings, nodes), start=False))
    return states


def down(settings: Settings) -> list[str]:
    """Stop the servers this project started (by their pid files). Returns what was stopped."""
    stopped = []
    if KafkaServer(settings).process.stop(timeout_s=30):
        stopped.append("kafka")
    if RedisServer(settings).process.stop(timeout_s=10):
        stopped.append("redis")
    nodes = sum(node.stop(timeout_s=10) for node in recorded_nodes(settings))
    if nodes:
        stopped.append(f"redis-cluster ({nodes} nodes)")
    return stopped
