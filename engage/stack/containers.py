"""Kafka and Redis in Docker via testcontainers, for machines with a Docker engine.

Used by the test fixtures when a Docker engine answers and no endpoints are named; the same
Kafka version as the local stack (KRaft) and Redis 7.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from engage.settings import Settings


def docker_engine_answers() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=2).ping())
    except Exception:
        return False


@contextmanager
def containers(settings: Settings) -> Iterator[dict[str, str]]:
    """Start Kafka (KRaft) and Redis containers; yield the ENGAGE_* variables that point at them."""
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    kafka = KafkaContainer(f"apache/kafka:{settings.kafka_version}").with_kraft()
    # As the project's own stack: compact distinct-item sets (see engage/stack/redis_server.py).
    redis = RedisContainer("redis:7").with_command(
        "redis-server --appendonly yes --set-max-intset-entries 8192"
    )
    with kafka, redis:
        host = redis.get_container_host_ip()
        port = redis.get_exposed_port(6379)
        yield {
            "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": kafka.get_bootstrap_server(),
            "ENGAGE_REDIS_URL": f"redis://{host}:{port}/0",
        }
