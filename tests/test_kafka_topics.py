"""`engage.kafka_clients.ensure_topic`: creates a missing topic once, leaves an existing one."""

from __future__ import annotations

import uuid

from engage import kafka_clients
from engage.settings import Settings


def test_ensure_topic_creates_a_missing_topic_once(settings: Settings) -> None:
    name = f"ensure.{uuid.uuid4().hex[:8]}"
    admin = kafka_clients.admin_client(settings)
    try:
        assert kafka_clients.ensure_topic(settings, name, partitions=2) is True
        assert kafka_clients.ensure_topic(settings, name, partitions=2) is False
        [topic] = admin.describe_topics([name])
        assert topic["error_code"] == kafka_clients.NO_ERROR and len(topic["partitions"]) == 2
    finally:
        admin.delete_topics([name])
        admin.close()
