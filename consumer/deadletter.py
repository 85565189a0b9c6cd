"""Dead letters: the original bytes, unchanged, with why and where in Kafka headers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("reason", self.reason.encode()),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]


def reason_of(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Header list of a dead-letter message back to a dict (for tests and `engage stats`)."""
    return {k: v.decode(errors="replace") for k, v in headers or []}
