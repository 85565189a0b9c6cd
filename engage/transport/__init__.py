"""The consumer's Kafka client, chosen by `settings.kafka_client` (`ENGAGE_KAFKA_CLIENT`):
"kafka-python", the default, always installed (engage/transport/kafka_python.py), or
"confluent", librdkafka through confluent-kafka, `pip install 'engage[fast]'`
(engage/transport/confluent.py, imported only when chosen). The interface: base.py.
"""

from __future__ import annotations

from engage.settings import Settings
from engage.transport.base import (
    Consumer,
    DeliveryFailed,
    Headers,
    PlainRecord,
    Producer,
    Record,
)

__all__ = [
    "Consumer",
    "DeliveryFailed",
    "Headers",
    "PlainRecord",
    "Producer",
    "Record",
    "TransportUnavailable",
    "consumer",
    "permanent",
    "producer",
    "refusal",
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


def refusal(exc: BaseException) -> str | None:
    """Why Kafka refused a record for good, in words, for a failure `Producer.flush()`
    returned: a message too large, not authorised, an invalid topic... Sending it again
    cannot succeed, so the consumer stops. None: a failure that may pass (a timeout, a broker
    not available, a leader change), to retry as before."""
    cause = exc.cause if isinstance(exc, DeliveryFailed) else exc
    module = type(cause).__module__ or ""
    if module.startswith("kafka."):
        from engage.transport.kafka_python import refusal as kafka_python_refusal

        return kafka_python_refusal(cause)
    if module.startswith(("confluent_kafka", "cimpl")):
        return _confluent().refusal(cause)
    return None


def permanent(exc: BaseException) -> bool:
    """Whether `exc` (a failure from `Producer.flush()`) is a permanent refusal: `refusal`."""
    return refusal(exc) is not None
