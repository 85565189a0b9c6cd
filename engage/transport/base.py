"""The Kafka seam of the consumer: what `consumer/runner.py` needs from a client, no more.

Partitions are plain numbers of the one topic a consumer subscribes to. Offsets are never
committed to Kafka (they live in Redis, next to the state they describe): a consumer only
polls, seeks, pauses and reports where it is; a producer sends and, at `flush()`, says which
sends failed. Two implementations: `kafka_python.py` (the default, always installed) and
`confluent.py` (librdkafka, `pip install 'engage[fast]'`, `ENGAGE_KAFKA_CLIENT=confluent`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Called with the partition numbers assigned to / revoked from this member. Runs inside
#: `Consumer.poll()`. In `on_assign` the consumer may `seek`, `seek_to_beginning` and `pause`
#: the partitions it is given; it must not block for long (heartbeats may wait on it).
PartitionsCallback = Callable[[list[int]], None]

Headers = Sequence[tuple[str, bytes]]


class Record(Protocol):
    """A consumed record (kafka-python's ConsumerRecord has exactly these attributes)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds since the epoch (producer's CreateTime)
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers | None: ...


@dataclass(slots=True)  # not frozen: a frozen dataclass takes 3x as long to build
class PlainRecord:
    """A `Record` for clients whose messages do not already have these attributes."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None


class Consumer(Protocol):
    """A group member over one topic, positioned by the application (no Kafka commits)."""

    def subscribe(
        self, topic: str, on_assign: PartitionsCallback, on_revoke: PartitionsCallback
    ) -> None: ...

    def poll(self, timeout_ms: int, max_records: int | None = None) -> Sequence[Record]:
        """Records available now (waits up to `timeout_ms` for the first), in partition
        order per partition; rebalance callbacks run inside."""
        ...

    def assignment(self) -> set[int]: ...

    def partition_count(self) -> int | None:
        """How many partitions the subscribed topic has (None: not known)."""
        ...

    def seek(self, partition: int, offset: int) -> None: ...
    def seek_to_beginning(self, partition: int) -> None: ...
    def pause(self, *partitions: int) -> None: ...
    def resume(self, *partitions: int) -> None: ...
    def paused(self) -> set[int]: ...

    def position(self, partition: int, timeout_ms: int = 1000) -> int | None:
        """The offset of the next record poll() will return for `partition` (None: unknown)."""
        ...

    def highwater(self, partition: int) -> int | None:
        """The high watermark the last fetch of `partition` saw, no request (None: unknown)."""
        ...

    def close(self) -> None: ...


#: Kafka error codes of a refusal that sending again cannot fix, and what each means. The
#: broker's codes are the same numbers in kafka-python (`errno`) and librdkafka (`code()`).
PERMANENT_CODES: dict[int, str] = {
    10: "message too large for the topic (max.message.bytes) or the request",
    17: "invalid topic",
    18: "record batch too large",
    21: "invalid required acks",
    29: "not authorised to write to the topic",
    31: "not authorised by the cluster",
    43: "message format unsupported by the topic",
    44: "refused by the broker's policy",
    53: "transactional id not authorised",
    87: "invalid record",
}


class DeliveryFailed(Exception):
    """A record the broker did not take: the topic it was for and the client's own error."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        super().__init__(f"{topic}: {cause}")
        self.topic = topic
        self.cause = cause


class Producer(Protocol):
    """Sends records; `flush()` is the delivery confirmation."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record. Delivery problems never raise here: they come back from flush()."""
        ...

    def send_batch(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Queue keyed records without headers ((key, value), in order): as one `send` each,
        maybe cheaper. Delivery problems come back from flush()."""
        ...

    def prepare(self, topic: str, timeout_s: float) -> None:
        """Fetch `topic`'s metadata now, waiting `timeout_s` at most and raising nothing: the
        first send to a topic otherwise waits for it (~25 ms here, in the first batch)."""
        ...

    def flush(self) -> list[Exception]:
        """Wait until every record sent since the last flush is acknowledged (acks=all) or has
        failed (after `kafka_delivery_timeout_ms` at most); return the failures, each a
        `DeliveryFailed` when its topic is known (`engage.transport.permanent` sorts them)."""
        ...

    def close(self) -> None: ...
