"""A permanent refusal of the consumer's output (a message too large, not authorised, an
invalid topic) stops `engage consume` with one line naming the topic and the cause, exit 1,
nothing of the batch committed; a failure that may pass (a timeout, a leader change) is not
permanent and the runner retries it (tests/test_transport_contract.py runs both in the runner,
with each client)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import redis
from kafka import errors as kafka_errors
from kafka.admin import NewTopic

from engage import kafka_clients, transport
from engage.settings import Settings
from features import keys
from tests.conftest import IN_CI
from tests.eventlog import engage_env, make_log, publish_log

HAS_CONFLUENT = importlib.util.find_spec("confluent_kafka") is not None


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.MessageSizeTooLargeError(),
        kafka_errors.RecordListTooLargeError(),
        kafka_errors.TopicAuthorizationFailedError(),
        kafka_errors.ClusterAuthorizationFailedError(),
        kafka_errors.InvalidTopicError(),
    ],
)
def test_kafka_python_refusals_are_permanent(error: Exception) -> None:
    assert transport.permanent(error)
    wrapped = transport.DeliveryFailed("t.scores", error)
    assert transport.permanent(wrapped) and transport.refusal(wrapped) == transport.refusal(error)
    assert str(wrapped).startswith("t.scores: ")


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.KafkaTimeoutError(),
        kafka_errors.NotLeaderForPartitionError(),
        kafka_errors.LeaderNotAvailableError(),
        kafka_errors.NotEnoughReplicasError(),
        kafka_errors.UnknownTopicOrPartitionError(),
        kafka_errors.UnknownError("Future not done"),
        TimeoutError("still unacknowledged after flush"),
        RuntimeError("batch ABORTED"),
    ],
)
def test_what_may_pass_is_retried(error: Exception) -> None:
    assert not transport.permanent(error)
    assert not transport.permanent(transport.DeliveryFailed("t.scores", error))


@pytest.mark.skipif(
    not HAS_CONFLUENT and not IN_CI, reason="confluent-kafka is not installed (outside CI)"
)
def test_librdkafka_refusals_are_classified_by_code() -> None:
    from confluent_kafka import KafkaError, KafkaException

    def of(code: int) -> Exception:
        return transport.DeliveryFailed("t.scores", KafkaException(KafkaError(code)))

    for code in (
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
    ):
        assert transport.permanent(of(code)), code
    for code in (
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._ALL_BROKERS_DOWN,
    ):
        assert not transport.permanent(of(code)), code
    assert "too large" in (transport.refusal(of(KafkaError.MSG_SIZE_TOO_LARGE)) or "")


@pytest.mark.stack
def test_consume_stops_on_a_permanent_refusal_with_one_line(
    settings: Settings, kafka_client: str
) -> None:
    """Every score message is larger than the scores topic's max.message.bytes: `engage
    consume` exits 1 at once (no --idle-exit to end it otherwise), naming the topic and the
    cause on one line, without a traceback; no state, no offsets."""
    client = kafka_client
    own = settings.model_copy(update={"kafka_client": client, "partitions": 2})
    kafka_clients.ensure_topic(own, own.events_topic)
    admin = kafka_clients.admin_client(own)
    try:
        admin.create_topics(
            [NewTopic(own.scores_topic, 1, 1, topic_configs={"max.message.bytes": 64})]
        )
    finally:
        admin.close()
    events, genres = make_log(n_users=3, events_per_user=5)
    publish_log(own, events, genres)
    result = subprocess.run(
        [sys.executable, "-m", "engage", "consume", "--log-format", "json"],
        env=engage_env(own), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Kafka refused output to topic " + own.scores_topic), last
    assert "too large" in last and "nothing of the batch was committed" in last, last
    client_ = redis.Redis.from_url(own.redis_url)
    try:
        assert client_.hgetall(keys.stats_key(own.events_topic)) == {}
        assert not client_.keys(keys.offset_key(own.events_topic, 0).removesuffix("0") + "*")
    finally:
        client_.close()
