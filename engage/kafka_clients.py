"""Kafka clients built from the settings, so every module connects the same way."""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from engage.partitioning import CachedKeyPartitioner
from engage.quiet_selector import QuietSelector
from engage.settings import Settings


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """Client arguments for secured clusters (TLS, SASL); empty for the plaintext local stack.
    Every client (admin, producer, consumer) takes them, so all connect the same way."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    for option, path in (
        ("ssl_cafile", settings.kafka_ssl_cafile),
        ("ssl_certfile", settings.kafka_ssl_certfile),
        ("ssl_keyfile", settings.kafka_ssl_keyfile),
    ):
        if path is not None:
            options[option] = str(path)
    return options


def librdkafka_security(settings: Settings) -> dict[str, Any]:
    """The same security settings as librdkafka configuration (kafka_client = "confluent").

    Every setting has its librdkafka name; the defaults agree too: both clients verify the
    broker's certificate and host name (kafka-python's ssl_check_hostname, librdkafka's
    ssl.endpoint.identification.algorithm=https) and, without a CA file, the system's CAs
    (the confluent-kafka wheels' librdkafka probes the standard paths).
    What librdkafka needs beyond this (a password-protected key, Kerberos, OAUTHBEARER) has
    no engage setting for either client."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": protocol}
    if protocol.startswith("SASL_"):
        options["sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["sasl.username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl.password"] = password.get_secret_value() if password else None
    for option, path in (
        ("ssl.ca.location", settings.kafka_ssl_cafile),
        ("ssl.certificate.location", settings.kafka_ssl_certfile),
        ("ssl.key.location", settings.kafka_ssl_keyfile),
    ):
        if path is not None:
            options[option] = str(path)
    return options


def admin_client(settings: Settings, timeout_s: float = 10.0) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000),
        selector=QuietSelector,
        **security_kwargs(settings),
    )


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """An idempotent, acks=all, batching and compressing producer; keys go to the default
    partitioner's partitions, remembered per key."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "partitioner": CachedKeyPartitioner(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "compression_type": "lz4",
        "max_in_flight_requests_per_connection": 5,
        "retries": 2_147_483_647,
        # Surviving a broker restart: retries are bounded by time, not count; a full buffer
        # blocks send() for as long as a record may wait, so an outage is not a lost record;
        # idempotence makes the resends that cross the restart land once.
        "delivery_timeout_ms": settings.kafka_delivery_timeout_ms,
        "max_block_ms": settings.kafka_delivery_timeout_ms,
        "reconnect_backoff_max_ms": settings.kafka_reconnect_backoff_max_ms,
        "metrics_enabled": False,  # (nothing reads them; see `consumer`)
        "selector": QuietSelector,  # (engage/quiet_selector.py)
    }
    options.update(security_kwargs(settings))
    options.update(overrides)
    return KafkaProducer(**options)


def consumer(settings: Settings, *topics: str, **overrides: Any) -> KafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "reconnect_backoff_max_ms": settings.kafka_reconnect_backoff_max_ms,
        # kafka-python's own metrics (sensors updated in Python on every fetch and produce
        # request): engage reports its own and reads none of these.
        "metrics_enabled": False,
        "selector": QuietSelector,  # (engage/quiet_selector.py)
    }
    options.update(security_kwargs(settings))
    options.update(overrides)
    from engage.transport import fetched_batches  # numba: imported by consumers only

    fetched_batches.use(settings.kafka_fast_fetch)
    return KafkaConsumer(*topics, **options)


#: Kafka's error code of a topic described without a problem.
NO_ERROR = 0


def ensure_topic(settings: Settings, name: str, partitions: int | None = None) -> bool:
    """Create the topic when it is missing. Returns True if this call created it."""
    admin = admin_client(settings)
    try:
        # Only this topic's metadata: listing every topic cost ~0.4 s a call on a broker with
        # 1,500 topics (a test run's), three calls per consumer start.
        # (Any error but "no error" leads to the create, which names the refusal if there is one.)
        if admin.describe_topics([name])[0]["error_code"] == NO_ERROR:
            return False
        try:
            admin.create_topics(
                [
                    NewTopic(
                        name, num_partitions=partitions or settings.partitions, replication_factor=1
                    )
                ]
            )
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()
