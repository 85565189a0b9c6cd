"""The consumer's Kafka client, chosen by `settings.kafka_client` (`ENGAGE_KAFKA_CLIENT`):
"kafka-python", the default, always installed (engage/transport/kafka_python.py), or
"confluent", librdkafka through confluent-kafka, `pip install 'engage[fast]'`
(engage/transport/confluent.py, imported only when chosen). The interface: base.py.
"""

from __future__ import annotations

from engage.settings import Settings
from engage.transport.base import Consumer, Headers, PlainRecord, Producer, Record

__all__ = [
    "Consumer",
    "Headers",
    "PlainRecord",
    "Producer",
    "Record",
    "TransportUnavailable",
    "consumer",
    "producer",
]


class TransportUnavailable(RuntimeError):
    """The chosen client is not installed."""


def _confluent():  # the module, imported on demand
    try:
        from engage.transport import confluent
    except ImportError as exc:
        raise TransportUnavailable(
            f"ENGAGE_KAFKA_CLIENT=confluent needs confluent-kafka ({exc.name or exc} is missing): "
            "pip install 'engage[fast]'"
        ) from None
    return confluent


def consumer(settings: Settings, group: str) -> Consumer:
    """A group member (not yet subscribed): no auto-commit, reads from the start by default."""
    if settings.kafka_client == "confluent":
        return _confluent().ConfluentConsumer(settings, group)
    from engage.transport.kafka_python import KafkaPythonConsumer

    return KafkaPythonConsumer(settings, group)


def producer(settings: Settings, linger_ms: int = 20, batch_bytes: int = 256 * 1024) -> Producer:
    """An idempotent, acks=all, lz4 producer; the key picks the partition (murmur2)."""
    if settings.kafka_client == "confluent":
        return _confluent().ConfluentProducer(
            settings, linger_ms=linger_ms, batch_bytes=batch_bytes
        )
    from engage.transport.kafka_python import KafkaPythonProducer

    return KafkaPythonProducer(settings, linger_ms=linger_ms, batch_size=batch_bytes)
