"""Dead letters: the original bytes, why and where in Kafka headers; always small enough to send.

A dead letter that the output producer refuses (kafka-python: `MessageSizeTooLargeError` over
its 1 MB `max_request_size`; librdkafka: over `message.max.bytes`) would fail its batch's
flush, so the batch would never commit and its partition would stall on it. A topic may
accept far larger messages than that, so every dead letter is bounded here: its key, value and
headers together stay within `max_bytes` (`Settings.dead_letter_max_bytes`). What fits is sent
unchanged; a larger value is sent as its prefix, a key longer than any user id as its prefix,
each with the original's length and SHA-256 in headers, and the reason starts with
`oversized`.

Dead letters are at-least-once: a crash after a batch's dead letters are acknowledged and before
its Redis commit sends them again when the batch is replayed. Copies carry the same
(source_topic, source_partition, source_offset) headers; `first_copies` keeps one of each.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from engage.settings import Settings

#: A valid key is a user id (at most 256 characters, so at most 1,024 UTF-8 bytes): never cut.
KEY_MAX_BYTES = 1024
#: Reasons quote field names, and a context key of any length can be one: bounded too.
REASON_MAX_BYTES = 1024
REASON_CUT = " [truncated]"
#: What `StreamConsumer` gets unless it passes `max_bytes` (the setting's default).
DEFAULT_MAX_BYTES: int = Settings.model_fields["dead_letter_max_bytes"].default

Headers = Sequence[tuple[str, bytes]]
#: (source_topic, source_partition, source_offset): one dead letter, whichever copy.
Source = tuple[str, int, int]
M = TypeVar("M")


def _sha256(raw: bytes) -> bytes:
    return hashlib.sha256(raw).hexdigest().encode()


def _headers_size(headers: Headers) -> int:
    return sum(len(k.encode()) + len(v) for k, v in headers)


def _bounded_reason(reason: str) -> str:
    raw = reason.encode()
    if len(raw) <= REASON_MAX_BYTES:
        return reason
    keep = REASON_MAX_BYTES - len(REASON_CUT.encode())
    return raw[:keep].decode(errors="ignore") + REASON_CUT  # never half a UTF-8 character


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as it is sent: `key` and `value` are the original bytes when the whole
    letter fits `max_bytes`, else prefixes (see `headers`)."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    max_bytes: int = field(default=DEFAULT_MAX_BYTES, kw_only=True, compare=False, repr=False)
    cut: tuple[tuple[str, bytes], ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        reason = _bounded_reason(self.reason)
        key, value = self.key, self.value
        cut: list[tuple[str, bytes]] = []
        if key is not None and len(key) > KEY_MAX_BYTES:
            cut += [("original_key_length", str(len(key)).encode()),
                    ("original_key_sha256", _sha256(key))]  # fmt: skip
            key = key[:KEY_MAX_BYTES]
        if value is not None and len(value) > self._room(reason, key, cut):
            cut += [("original_length", str(len(value)).encode()),
                    ("original_sha256", _sha256(value))]  # fmt: skip
            if not reason.startswith("oversized"):
                reason = _bounded_reason(f"oversized: {reason}")
            value = value[: max(0, self._room(reason, key, cut))]
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "cut", tuple(cut))

    def _room(self, reason: str, key: bytes | None, cut: Headers) -> int:
        """Bytes left for the value under `max_bytes`."""
        headers = self._source_headers(reason) + list(cut)
        return self.max_bytes - len(key or b"") - _headers_size(headers)

    def _source_headers(self, reason: str) -> list[tuple[str, bytes]]:
        return [
            ("reason", reason.encode()),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]

    def headers(self) -> list[tuple[str, bytes]]:
        """reason, source_topic, source_partition, source_offset; for a cut value also
        original_length and original_sha256 (hex), for a cut key original_key_length and
        original_key_sha256."""
        return self._source_headers(self.reason) + list(self.cut)

    def size(self) -> int:
        """Key + value + header bytes (what `max_bytes` bounds; the record's framing aside)."""
        return len(self.key or b"") + len(self.value or b"") + _headers_size(self.headers())


def reason_of(headers: Headers | None) -> dict[str, str]:
    """Header list of a dead-letter message back to a dict (for tests and `engage stats`)."""
    return {k: v.decode(errors="replace") for k, v in headers or []}


def source_of(headers: Headers | None) -> Source:
    """Where a dead letter came from, from its headers: the same for every copy of it."""
    meta = reason_of(headers)
    return meta["source_topic"], int(meta["source_partition"]), int(meta["source_offset"])


def first_copies(
    messages: Iterable[M],
    headers: Callable[[M], Headers | None] = operator.attrgetter("headers"),
) -> Iterator[M]:
    """The dead-letter topic's messages with each dead letter once (the first copy read).

    Copies of one dead letter are identical (same key, value and headers: a replayed batch
    decides the same way), so which one is kept does not matter. `headers` reads a message's
    headers: the attribute for kafka-python's records, `lambda m: m.headers()` for
    confluent-kafka's. Memory: one (topic, partition, offset) per distinct dead letter read.
    """
    seen: set[Source] = set()
    for message in messages:
        source = source_of(headers(message))
        if source not in seen:
            seen.add(source)
            yield message
