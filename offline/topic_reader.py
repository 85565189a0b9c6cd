"""One reader of a topic's records, for the offline commands (export, parity, explain).

Every partition from its first offset (or the first at or after `since_ms`) to the end
offsets seen when it starts (or the first at or after `until_ms`): a topic still being
written to gives a fixed slice. Kafka not answering fails within 3 s; a partition that stops
yielding records before its end fails after `idle_timeout_s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from kafka import TopicPartition

from engage import kafka_clients
from engage.settings import Settings


def _offsets_for_time(client: Any, tps: list[TopicPartition], ms: int, default: dict) -> dict:
    found = client.offsets_for_times(dict.fromkeys(tps, ms))
    return {tp: (found[tp].offset if found.get(tp) is not None else default[tp]) for tp in tps}


def topic_records(
    settings: Settings,
    topic: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    idle_timeout_s: float = 30.0,
) -> tuple[Iterator[Any], dict[int, dict[str, int]]]:
    """The records of `topic` from the beginning (or `since_ms`) to its end offsets *now* (or
    `until_ms`), per partition in offset order. Fails fast (3 s) when Kafka does not answer."""
    client = kafka_clients.consumer(
        settings, group_id=None, consumer_timeout_ms=1000, bootstrap_timeout_ms=3000
    )
    partitions = client.partitions_for_topic(topic)
    if not partitions:
        client.close()
        raise LookupError(f"topic {topic!r} does not exist or has no partitions")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    client.assign(tps)
    starts, ends = client.beginning_offsets(tps), client.end_offsets(tps)
    if since_ms is not None:
        starts = _offsets_for_time(client, tps, since_ms, ends)
    if until_ms is not None:
        ends = _offsets_for_time(client, tps, until_ms, ends)
    ranges = {tp.partition: {"start": starts[tp], "end": ends[tp]} for tp in tps}

    def records() -> Iterator[Any]:
        try:
            pending = set()
            for tp in tps:
                if ends[tp] > starts[tp]:
                    client.seek(tp, starts[tp])
                    pending.add(tp)
                else:
                    client.pause(tp)
            last = time.monotonic()
            while pending:
                polled = client.poll(timeout_ms=500, max_records=5000)
                if polled:
                    last = time.monotonic()
                elif time.monotonic() - last > idle_timeout_s:
                    raise TimeoutError(f"{topic}: no records for {idle_timeout_s}s: {pending}")
                for tp, batch in polled.items():
                    if tp in pending:
                        yield from (r for r in batch if r.offset < ends[tp])
                for tp in list(pending):  # positions also move past control records
                    if client.position(tp) >= ends[tp]:
                        pending.discard(tp)
                        client.pause(tp)
        finally:
            client.close()

    return records(), ranges
