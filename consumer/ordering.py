"""Release polled records across a consumer's partitions in event-time order.

Why: per-item aggregates are shared by all partitions, so their value when an event is scored
depends on how partitions interleave. Drained as a backlog, kafka-python hands over one
partition at a time (years of one partition before any of the next), and the item features
served then differ from the ones training computes (`offline.snapshot.consumer_order`: each
partition in offset order, merged by event time at the heads). With `consume_order =
"event_time"` the consumer applies exactly that merge: a record is released only when it has
the smallest `(event ts, partition)` among the heads of all partitions, and a partition whose
buffer is empty holds the others back until it is known to be at its end (fetch position at
the high watermark). Each partition stays in offset order, so exactly-once offsets are
untouched.

Memory: a partition's buffer is capped. The records beyond the cap are dropped and the
partition is seeked back to the first of them, so they are fetched again once the others catch
up (wasted fetches only when partitions' event times drift far apart). Not `pause()`: in
kafka-python 3.0.12 a partition paused with fetched records buffered can stay parked after
`resume()` (its parked records are restored only while no drained record set sits in line), and
the merge then waits for it forever. (librdkafka, `ENGAGE_KAFKA_CLIENT=confluent`, drops a
paused partition's prefetched records and fetches them again on resume; the seek-back serves
both clients.)

Undecodable records sort first (they change no state, and are dead-lettered as usual).
Live traffic cannot be waited for forever: a caught-up partition does not block, so there the
order is the arrival order, as before.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable

from engage.transport.base import Record
from features.events import DecodeError, Event, decode_event

#: A polled record and its decoded event (or why it could not be decoded).
Decoded = tuple[Record, Event | DecodeError]


def decode_records(records: Iterable[Record]) -> list[Decoded]:
    """Reads `value` (and the caller `partition`, `offset`, ...) of each transport record."""
    out: list[Decoded] = []
    for record in records:
        try:
            out.append((record, decode_event(record.value)))
        except DecodeError as exc:
            out.append((record, exc))
    return out


def _sort_key(item: Decoded) -> tuple[float, int]:
    record, event = item
    ts = event.ts if isinstance(event, Event) else float("-inf")
    return (ts, record.partition)


class EventTimeMerger:
    """Per-partition buffers of decoded records and their greedy merge by event time."""

    def __init__(self, max_buffered: int) -> None:
        self.max_buffered = max_buffered  # records per partition
        self.lanes: dict[int, deque[Decoded]] = {}

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes.values())

    def add(self, records: Iterable[Record]) -> None:
        for item in decode_records(records):
            self.lanes.setdefault(item[0].partition, deque()).append(item)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget buffered records (the partition was seeked: assigned, resynced or fenced).
        Revoked partitions go at the next `release`, which keeps only assigned ones."""
        for p in partitions:
            self.lanes.pop(p, None)

    def release(
        self, limit: int, assigned: Iterable[int], at_end: Callable[[int], bool]
    ) -> list[Decoded]:
        """Up to `limit` records in merged order; stops where an empty, unfinished partition
        might still hold an earlier event."""
        assigned = set(assigned)
        for p in set(self.lanes) - assigned:
            del self.lanes[p]

        def blocked() -> bool:
            return any(not self.lanes.get(p) and not at_end(p) for p in assigned)

        out: list[Decoded] = []
        if blocked():
            return out
        heads = [(_sort_key(lane[0]), p) for p, lane in self.lanes.items() if lane]
        heapq.heapify(heads)
        while heads and len(out) < limit:
            _, p = heapq.heappop(heads)
            lane = self.lanes[p]
            out.append(lane.popleft())
            if lane:
                heapq.heappush(heads, (_sort_key(lane[0]), p))
            elif not at_end(p):
                break  # its next record may be earlier than every other head
        return out

    def trim(self) -> dict[int, int]:
        """Drop every partition's records beyond the cap; per trimmed partition, the offset to
        seek back to (the first dropped record)."""
        seek_to: dict[int, int] = {}
        for p, lane in self.lanes.items():
            while len(lane) > self.max_buffered:  # from the tail: the last one set is the first
                seek_to[p] = lane.pop()[0].offset
        return seek_to
