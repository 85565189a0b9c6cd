"""A local Redis Cluster of N masters (and optionally R replicas of each) for tests and demos
(issue 17).

Each node is a `RedisServer` (same binary, AOF, pid file, log) with cluster mode on, in its
own folder `<stack_dir>/redis-cluster/<port>`, on consecutive ports from
`stack_redis_cluster_port`. A fresh cluster gets the 16,384 slots split into N contiguous
ranges (CLUSTER ADDSLOTSRANGE) and its nodes introduced (CLUSTER MEET); replicas, on the ports
after the masters', follow master i (CLUSTER REPLICATE). A restarted cluster comes back from
each node's nodes.conf with its data. Either way it is ready at `cluster_state:ok` on every
node (and every replica's link to its master up), when any node serves any key.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import redis

from engage.settings import Settings
from engage.stack.errors import StackError
from engage.stack.processes import ManagedProcess
from engage.stack.redis_server import RedisServer

SLOTS = 16_384
NODE_TIMEOUT_MS = 5000


def node_config(node_timeout_ms: int = NODE_TIMEOUT_MS) -> str:
    """The cluster lines of a node's redis.conf; `node_timeout_ms` is how long a master may be
    unreachable before it is failed (and a replica of it promoted)."""
    return (
        "cluster-enabled yes\n"
        "cluster-config-file nodes.conf\n"  # relative to `dir`: the node's own data folder
        f"cluster-node-timeout {node_timeout_ms}\n"
        # A slot range without a live master is unavailable; the other nodes keep answering
        # for theirs rather than refusing everything.
        "cluster-require-full-coverage no\n"
    )


READY_TIMEOUT_S = 30.0


def cluster_root(settings: Settings) -> Path:
    return settings.stack_dir / "redis-cluster"


def cluster_url(settings: Settings) -> str:
    """The URL that points engage at the local cluster (any node; the client finds the rest)."""
    return f"redis+cluster://127.0.0.1:{settings.stack_redis_cluster_port}/0"


def cluster_settings(settings: Settings, nodes: int | None = None) -> Settings:
    """These settings in cluster mode (`engage stack up --redis-cluster N`): the local
    cluster's URL unless ENGAGE_REDIS_URL names a Redis."""
    update: dict[str, object] = {"redis_cluster": True}
    if nodes is not None:
        update["stack_redis_cluster_nodes"] = nodes
    if not settings.explicitly_set("redis_url"):
        update["redis_url"] = cluster_url(settings)
    return settings.model_copy(update=update)


def _node_settings(settings: Settings, port: int) -> Settings:
    """Settings of one node as a plain server: our nodes have no ACL users and no TLS."""
    return settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{port}/0",
            "redis_cluster": False,
            "redis_username": None,
            "redis_password": None,
            "redis_tls_ca_file": None,
            "redis_tls_cert_file": None,
            "redis_tls_key_file": None,
        }
    )


def recorded_nodes(settings: Settings) -> list[ManagedProcess]:
    """Every cluster node this stack folder has a pid file for, whatever N it was started
    with (so `down` stops them all even when the settings changed since)."""
    root = cluster_root(settings)
    if not root.is_dir():
        return []
    return [
        RedisServer(settings, home=folder).process
        for folder in sorted(root.iterdir(), key=lambda f: f.name)
        if folder.name.isdigit() and (folder / "redis.pid").exists()
    ]


def _info(port: int) -> dict[str, str]:
    """CLUSTER INFO of one node as a dict of strings."""
    raw = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).execute_command(
        "CLUSTER", "INFO"
    )
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _replication(port: int) -> dict[str, str]:
    """INFO replication of one node as a dict of strings."""
    info = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).info("replication")
    return {k: str(v) for k, v in info.items()}


class RedisClusterServers:
    """N local cluster masters and `replicas` replicas of each: start, form the cluster,
    report their pids, stop them. Masters are on the first N ports, then master i's replicas
    on ports N + i * replicas + j."""

    def __init__(
        self,
        settings: Settings,
        nodes: int,
        replicas: int = 0,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        if nodes < 1:
            raise StackError("--redis-cluster needs at least 1 node")
        if replicas < 0:
            raise StackError("replicas cannot be negative")
        self.settings = settings
        self.masters = nodes
        self.replicas = replicas
        self.ports = [settings.stack_redis_cluster_port + i for i in range(nodes * (1 + replicas))]
        self.servers = [
            RedisServer(
                _node_settings(settings, port),
                extra_config=node_config(node_timeout_ms),
                home=cluster_root(settings) / str(port),
            )
            for port in self.ports
        ]

    def master_of(self, port: int) -> int:
        """The port of the master a replica port was formed to follow (itself for a master)."""
        index = self.ports.index(port)
        if index < self.masters:
            return port
        return self.ports[(index - self.masters) // self.replicas]

    def pids(self) -> list[int | None]:
        return [server.process.pid() for server in self.servers]

    def ready(self) -> bool:
        """True when every node answers and says cluster_state:ok with all N nodes known."""
        try:
            infos = [_info(port) for port in self.ports]
        except (redis.RedisError, OSError):
            return False
        if not all(
            i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(len(self.ports))
            for i in infos
        ):
            return False
        try:
            return all(
                _replication(port).get("master_link_status") == "up"
                for port in self.ports[self.masters :]
            )
        except (redis.RedisError, OSError):
            return False

    def start(self) -> float:
        """Start the nodes not running yet, form the cluster if it is new, wait for ok.
        On failure every node started here is stopped again."""
        started_at = time.monotonic()
        started: list[RedisServer] = []
        try:
            for server in self.servers:
                if server.process.pid() is None:
                    server.start()
                    started.append(server)
            if all(_info(port).get("cluster_slots_assigned") == "0" for port in self.ports):
                self._form()
                self._follow()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not self.ready():
                if time.monotonic() > deadline:
                    raise StackError(
                        f"the Redis Cluster on ports {self.ports[0]}-{self.ports[-1]} did not "
                        f"reach cluster_state:ok within {READY_TIMEOUT_S:.0f}s; was it created "
                        f"with another node count? `engage stack down`, then remove "
                        f"{cluster_root(self.settings)}. Node log tail:\n"
                        f"{self.servers[0].process.log_tail()}"
                    )
                time.sleep(0.1)
        except (StackError, redis.RedisError, OSError):
            for server in started:
                server.process.stop(timeout_s=10)
            raise
        return time.monotonic() - started_at

    def _form(self) -> None:
        """Slots in N contiguous ranges over the masters, then every node introduced to the
        first."""
        n = self.masters
        first = redis.Redis(host="127.0.0.1", port=self.ports[0], socket_timeout=5)
        for i, port in enumerate(self.ports):
            node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            if i < n:
                low, high = i * SLOTS // n, (i + 1) * SLOTS // n - 1
                node.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            if i:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)

    def _follow(self) -> None:
        """Each replica follows its master, once it knows that master (gossip takes a moment)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        for port in self.ports[self.masters :]:
            master = redis.Redis(host="127.0.0.1", port=self.master_of(port), socket_timeout=5)
            master_id = master.execute_command("CLUSTER", "MYID")
            master_id = master_id.decode() if isinstance(master_id, bytes) else str(master_id)
            replica = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
            while True:
                try:
                    replica.execute_command("CLUSTER", "REPLICATE", master_id)
                    break
                except redis.ResponseError:  # "Unknown node": not met yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

    def stop(self) -> int:
        """Stop the nodes of ours; returns how many were stopped."""
        return sum(server.process.stop(timeout_s=10) for server in self.servers)


def free_base_port(n: int) -> int:
    """The first of n consecutive free ports whose cluster-bus ports (+10000) are free too:
    where a private local cluster (tests, the benchmark) can start."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 45_000)
        try:
            for port in [*range(base, base + n), *range(base + 10_000, base + 10_000 + n)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free run of consecutive ports for a local Redis Cluster")
