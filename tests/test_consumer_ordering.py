"""The event-time merge of a consumer's partitions (consumer/ordering.py) on plain records.

The merge must release exactly what offline.snapshot.consumer_order produces (each partition
in offset order, heads merged by (event time, partition)), never pass a partition that may
still hold an earlier event, and keep its buffers bounded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from consumer.ordering import EventTimeMerger
from features.events import Event
from offline.snapshot import LoggedEvent, consumer_order


@dataclass(frozen=True)
class Record:
    """The fields of a kafka-python ConsumerRecord the merge reads."""

    partition: int
    offset: int
    value: bytes


def event(user: int, ts: int) -> Event:
    return Event(event_id=f"e{user}:{ts}", user_id=f"u{user}", ts=ts, event_type="page_view",
                 source="synthetic")  # fmt: skip


def partitions_of(n_partitions: int, per_partition: int, seed: int) -> dict[int, list[Record]]:
    """Each partition's records in offset order, event times increasing with jitter."""
    rng = random.Random(seed)
    out: dict[int, list[Record]] = {}
    for p in range(n_partitions):
        ts = 1_700_000_000_000 + rng.randrange(1000)
        lane = []
        for offset in range(per_partition):
            ts += rng.choice([0, 1, 5, 50])
            lane.append(Record(p, offset, event(p * 1000 + offset % 7, ts).to_json()))
        out[p] = lane
    return out


def drain(merger: EventTimeMerger, parts: dict[int, list[Record]], chunk: int, seed: int) -> list:
    """Feed the records in random-sized chunks of random partitions, as polls do."""
    rng = random.Random(seed)
    cursor = dict.fromkeys(parts, 0)
    released = []
    while True:
        live = [p for p in parts if cursor[p] < len(parts[p])]
        if live:
            p = rng.choice(live)
            take = rng.randrange(1, chunk)
            merger.add(parts[p][cursor[p] : cursor[p] + take])
            cursor[p] = min(len(parts[p]), cursor[p] + take)
        for p, offset in merger.trim().items():
            cursor[p] = offset  # the consumer seeks back there
        out = merger.release(500, parts, lambda q: cursor[q] == len(parts[q]))
        released += out
        if not live and not out and not len(merger):
            return released


def test_release_order_is_the_training_order():
    parts = partitions_of(6, 400, seed=1)
    released = drain(EventTimeMerger(max_buffered=10_000), parts, chunk=90, seed=2)
    logged = [LoggedEvent(Event.model_validate_json(r.value), r.partition, r.offset)
              for lane in parts.values() for r in lane]  # fmt: skip
    expected = [e.event_id for e in consumer_order(logged)]
    assert [e.event_id for _, e in released] == expected
    assert len(expected) == 2400


def test_an_unfinished_empty_partition_holds_the_others_back():
    parts = partitions_of(2, 3, seed=3)
    merger = EventTimeMerger(max_buffered=100)
    merger.add(parts[0])
    assert merger.release(10, parts, at_end=lambda p: False) == []
    assert [r.partition for r, _ in merger.release(10, parts, at_end=lambda p: p == 1)] == [0] * 3


def test_buffers_stay_capped_and_trimmed_records_come_back():
    parts = partitions_of(3, 300, seed=4)
    merger = EventTimeMerger(max_buffered=40)
    released = drain(merger, parts, chunk=120, seed=5)
    assert max((len(lane) for lane in merger.lanes.values()), default=0) <= 40
    assert sorted((r.partition, r.offset) for r, _ in released) == sorted(
        (r.partition, r.offset) for lane in parts.values() for r in lane
    )


def test_undecodable_records_are_released_first_with_their_reason():
    merger = EventTimeMerger(max_buffered=10)
    good = Record(0, 0, event(1, 1_700_000_000_000).to_json())
    merger.add([good, Record(0, 1, b"not json"), Record(1, 0, b"{}")])
    out = merger.release(10, [0, 1], at_end=lambda p: True)
    assert [(r.partition, r.offset) for r, _ in out] == [(1, 0), (0, 0), (0, 1)]
    assert isinstance(out[2][1], Exception) and out[2][1].reason
