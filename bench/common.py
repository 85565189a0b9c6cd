"""What every benchmark shares: a claimed Redis database, fresh topics, progress, clean-up.

A `Context` owns one private Redis logical database (claimed in db 0 with the same claim keys
the tests use, so a test session never gets it at the same time) and every topic it names;
`close()` deletes those topics and empties the database.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kafka.errors import KafkaError

from engage.kafka_clients import admin_client
from engage.redis_client import connect
from engage.settings import Settings, get_settings
from engage.transport.kafka_python import consumer_options
from features import keys
from features.items import ItemMeta
from producer.replay import write_items

CLAIM = "engage:test-db-claim:{}"  # the same claims tests/conftest.py makes
CLAIM_TTL_S = 6 * 3600


class Progress:
    """Timestamped progress lines on stderr (stdout stays free for results)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def claim_db(settings: Settings) -> int:
    """Claim a Redis database 14..1 for this process (claims expire after CLAIM_TTL_S)."""
    claims = connect(settings.with_redis_db(0))
    try:
        for db in range(14, 0, -1):
            if claims.set(CLAIM.format(db), os.getpid(), nx=True, ex=CLAIM_TTL_S):
                return db
    finally:
        claims.close()
    raise SystemExit("every Redis database 1-14 is claimed")


def release_db(settings: Settings, db: int) -> None:
    claims = connect(settings.with_redis_db(0))
    try:
        if claims.get(CLAIM.format(db)) == str(os.getpid()).encode():
            claims.delete(CLAIM.format(db))
    finally:
        claims.close()


def redis_db(settings: Settings) -> int:
    """The logical database number in `settings.redis_url`."""
    path = settings.redis_url.rsplit("/", 1)[-1]
    return int(path) if path.isdigit() else 0


def engage_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for an `engage` (or bench worker) subprocess using `settings`' servers,
    topics and directories (other ENGAGE_* variables, such as credentials, pass through)."""
    env = dict(os.environ)
    env.update(
        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        ENGAGE_REDIS_URL=settings.redis_url,
        ENGAGE_EVENTS_TOPIC=settings.events_topic,
        ENGAGE_SCORES_TOPIC=settings.scores_topic,
        ENGAGE_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        ENGAGE_PARTITIONS=str(settings.partitions),
        ENGAGE_KAFKA_CLIENT=settings.kafka_client,
        ENGAGE_DATA_DIR=str(settings.data_dir),
        ENGAGE_CACHE_DIR=str(settings.cache_dir),
    )
    env.update(extra)
    return env


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc/<pid>/status."""
    current = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return current, peak


def engage_consumer_options(settings: Settings, group: str) -> dict[str, Any]:
    """The KafkaConsumer options consumer/runner.py gives engage's consumer (poll size, group
    timers, fetch limits), for a bench consumer that must read the topic the same way."""
    return consumer_options(settings, group)


def process_cpu_s(pid: int | None, task: bool = False) -> float | None:
    """User + system CPU seconds of a live process (or, with `task`, one of this process's
    threads by its native id), from /proc (None if unknown)."""
    if pid is None:
        return None
    try:
        where = f"/proc/self/task/{pid}" if task else f"/proc/{pid}"
        fields = Path(f"{where}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def stack_server_pids(settings: Settings) -> dict[str, int | None]:
    """The broker's and Redis's pids when this project's stack started them (else None)."""
    from engage.stack.kafka_server import KafkaServer
    from engage.stack.redis_server import RedisServer

    return {"kafka": KafkaServer(settings).process.pid(),
            "redis": RedisServer(settings).process.pid()}  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does; QUICK is the CI smoke."""

    movielens_events: int | None = None  # None: all of ml-latest-small
    synthetic_events: int = 1_000_000
    latency_rates: tuple[int, ...] = (1_000, 5_000, 20_000)
    #: (rate, processes) measured again with several consumer processes in one group.
    latency_scaled: tuple[tuple[int, int], ...] = ((5_000, 2),)
    latency_seconds: float = 20.0
    growth_events: tuple[int, ...] = (100_000, 1_000_000, 5_000_000)
    api_users: int = 300
    api_rate: float = 200.0
    api_seconds: float = 20.0
    redis_ops: int = 1_000_000
    redis_benchmark_requests: int = 1_000_000
    train_ratings: int | None = None  # None: all ratings
    train_bootstrap: int | None = None  # None: `engage train`'s default


FULL = Sizes()
QUICK = Sizes(
    movielens_events=3_000,
    synthetic_events=3_000,
    latency_seconds=0.4,
    growth_events=(1_000, 3_000, 6_000),
    api_users=40,
    api_rate=100.0,
    api_seconds=1.0,
    redis_ops=20_000,
    redis_benchmark_requests=20_000,
    train_ratings=1_000,
    train_bootstrap=2,
)


@dataclass
class Context:
    """Settings on a private Redis database, topic names under one prefix, and a cache."""

    settings: Settings
    prefix: str
    log: Progress = field(default_factory=Progress)
    sizes: Sizes = FULL
    topics: list[str] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    defer_deletes: bool = False  # the quick smoke: one deletion at the end (small topics)
    #: The harness groups this invocation measures (the consumer runs the floor's runs too).
    groups: tuple[str, ...] = ()
    _n: int = 0

    @property
    def db(self) -> int:
        return redis_db(self.settings)

    def redis(self) -> redis.Redis:
        return connect(self.settings)

    def fresh(self, name: str) -> Settings:
        """Settings with new events/scores/dead-letter topic names (recorded for clean-up)."""
        self._n += 1
        run = f"{self.prefix}.{name}.{self._n}"
        topics = {
            "events_topic": f"{run}.events",
            "scores_topic": f"{run}.scores",
            "dead_letter_topic": f"{run}.dlq",
        }
        self.topics.extend(topics.values())
        return self.settings.model_copy(update=topics)

    def with_output(self, settings: Settings, name: str) -> Settings:
        """The same events topic with fresh scores and dead-letter topics (one consumer run)."""
        self._n += 1
        run = f"{self.prefix}.{name}.{self._n}"
        topics = {"scores_topic": f"{run}.scores", "dead_letter_topic": f"{run}.dlq"}
        self.topics.extend(topics.values())
        return settings.model_copy(update=topics)

    def reset_state(self, items: Mapping[str, ItemMeta] | None = None) -> None:
        """Empty the private database, then write item metadata again (a replay writes it).
        FLUSHDB of a 5M-event database takes longer than a command's usual timeout: the growth
        run's clean-up timed out with it, and its results were never written."""
        client = connect(self.settings, socket_timeout=600)
        try:
            client.flushdb()
            if items:
                write_items(client, items)
        finally:
            client.close()

    def processed(self, topic: str) -> int:
        """Events the consumers applied to this topic (processed + dead-lettered), from Redis."""
        client = self.redis()
        try:
            values = client.hmget(keys.stats_key(topic), "processed", "dead_lettered")
        finally:
            client.close()
        return sum(int(v) for v in values if v is not None)

    def delete_topics(self, *settings: Settings) -> None:
        """Delete the topics of these settings now (large scores topics fill the disk)."""
        self.delete(
            *(n for s in settings for n in (s.events_topic, s.scores_topic, s.dead_letter_topic))
        )

    def delete(self, *names: str) -> None:
        """Delete these topics if they exist (with `defer_deletes`, at `close()`)."""
        if self.defer_deletes:
            return  # they are all in self.topics
        self._delete(names)

    def _delete(self, names: Iterable[str]) -> None:
        try:
            admin = admin_client(self.settings)
        except KafkaError as exc:
            self.log(f"cannot delete topics: {exc}")
            return
        try:
            existing = set(admin.list_topics())
            doomed = sorted({n for n in names if n in existing})
            if doomed:
                admin.delete_topics(doomed)
        except KafkaError as exc:
            self.log(f"cannot delete topics: {exc}")
        finally:
            admin.close()

    def close(self) -> None:
        """Delete every topic named here and empty the database."""
        self._delete(self.topics)
        self.topics.clear()
        self.reset_state()


@contextmanager
def open_context(
    settings: Settings | None = None,
    *,
    claim: bool = True,
    prefix: str | None = None,
    log: Progress | None = None,
    sizes: Sizes = FULL,
) -> Iterator[Context]:
    """A Context on `settings` (default: the environment's), on a claimed Redis database, or
    with `claim=False` on the database `settings` already names (a test's own)."""
    base = settings or get_settings()
    claimed = None
    if claim:
        claimed = claim_db(base)
        base = base.with_redis_db(claimed)
    ctx = Context(base, prefix or f"bench.{uuid.uuid4().hex[:8]}", log or Progress(), sizes)
    ctx.reset_state()
    try:
        yield ctx
    finally:
        try:
            ctx.close()
        finally:
            if claimed is not None:
                release_db(base, claimed)
