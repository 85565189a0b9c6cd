"""`/healthz`: are Kafka and Redis reachable? Redis is pinged each time (sub-millisecond);
Kafka's answer costs a metadata round trip, so it is cached for a few seconds."""

from __future__ import annotations

import threading
import time

import redis

from engage.redis_client import Client
from engage.settings import Settings
from engage.stack.probes import kafka_answers

KAFKA_CACHE_S = 5.0
KAFKA_TIMEOUT_S = 2.0


class HealthChecker:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings, self.client = settings, client
        self._lock = threading.Lock()
        self._kafka: tuple[float, bool] | None = None  # (checked at, answer)

    def kafka(self) -> bool:
        """Cached; one probe at a time (concurrent callers wait for it, not probe again)."""
        with self._lock:
            now = time.monotonic()
            if self._kafka is None or now - self._kafka[0] > KAFKA_CACHE_S:
                self._kafka = (now, kafka_answers(self.settings, timeout_s=KAFKA_TIMEOUT_S))
            return self._kafka[1]

    def redis(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def check(self) -> dict[str, bool]:
        return {"kafka": self.kafka(), "redis": self.redis()}
