"""Cheap "is something there, and is it what we think?" checks for Kafka and Redis."""

from __future__ import annotations

import logging
import socket

import redis

from engage.redis_client import connect
from engage.settings import Settings


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_answers(settings: Settings, timeout_s: float = 5.0) -> bool:
    """True when a Kafka broker answers a metadata request on the configured bootstrap servers."""
    # kafka-python logs every refused connection at ERROR; a probe expects refusals. Only for
    # the probe's own time: a process-wide silence once hid a rebalance listener's error.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        return _describes_cluster(settings, timeout_s)
    finally:
        kafka_log.setLevel(level)


def _describes_cluster(settings: Settings, timeout_s: float) -> bool:
    from engage.kafka_clients import admin_client

    try:
        admin = admin_client(settings, timeout_s=timeout_s)
    except Exception:
        return False
    try:
        admin.describe_cluster()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def redis_answers(settings: Settings, timeout_s: float = 1.0) -> bool:
    """True when a Redis server answers PING at the configured URL."""
    try:
        client = connect(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
