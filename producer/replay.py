"""Replay events into the events topic: keyed by user, paced, with a delivery summary.

Delivery is confirmed without blocking per message: every send future gets an errback
that counts the failure, and one flush at the end waits for all acknowledgements. Item
metadata goes to Redis before the first event, so the consumer can already use it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console

from engage.kafka_clients import ensure_topic, producer
from engage.redis_client import Client, connect
from engage.settings import Settings
from features.events import Event
from features.items import ItemMeta
from features.keys import item_meta_key
from producer.pacing import MAX, Clock, Pacer, RatePacer, Speed, SystemClock
from producer.progress import progress_bar

#: Producer overrides for throughput: bigger, later batches (measured with bench/replay_rate).
FAST_PRODUCER = {"linger_ms": 50, "batch_size": 512 * 1024}
PROGRESS_EVERY = 4096
KEEP_ERRORS = 5
ITEM_CHUNK = 2000


@dataclass
class ReplaySummary:
    topic: str
    sent: int = 0
    failed: int = 0
    bad_rows: int = 0
    skipped: int = 0
    items_written: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    topic_created: bool = False
    #: Stopped early (Ctrl-C): `engage replay ... --skip resume_skip` sends exactly the rest.
    interrupted: bool = False
    resume_skip: int = 0
    errors: list[str] = field(default_factory=list)
    bad_row_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failures:
    """Errback target: runs on the producer's I/O thread, which is its only writer."""

    def __init__(self) -> None:
        self.count = 0
        self.errors: list[str] = []

    def __call__(self, exc: BaseException) -> None:
        self.count += 1
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append(f"{type(exc).__name__}: {exc}")


@contextmanager
def _fewer_gc_passes(threshold: int = 200_000) -> Iterator[None]:
    """Run young-generation GC rarely while sending.

    Each send allocates a few short-lived objects (futures, locks); with the default
    threshold the collector then runs every few hundred sends and costs ~15% of the loop.
    Nothing in the loop needs prompt cycle collection (kafka-python breaks its
    future<->batch cycles on completion), so a high threshold is safe and keeps memory flat.
    """
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _flush(client: KafkaProducer, attempts: int = 50) -> None:
    """Wait for every send to finish (acked or failed: the errbacks tell which).

    kafka-python's flush can raise while a batch the broker refused as too large is being
    split and re-sent; the records are still in flight then, so wait and flush again.
    """
    for attempt in range(attempts):
        try:
            client.flush()
            return
        except KafkaError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05)


def write_items(client: Client, items: Mapping[str, ItemMeta]) -> int:
    """Write item metadata hashes, pipelined in chunks (no transaction: each hash stands alone)."""
    written = 0
    pipe = client.pipeline(transaction=False)
    for item_id, meta in items.items():
        pipe.hset(item_meta_key(item_id), mapping=meta.to_hash())
        written += 1
        if written % ITEM_CHUNK == 0:
            pipe.execute()
    pipe.execute()
    return written


def replay(
    events: Iterable[Event],
    settings: Settings,
    *,
    items: Mapping[str, ItemMeta] | None = None,
    limit: int | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    speed: Speed = MAX,
    rate: float | None = None,
    skip: int = 0,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
    total: int | None = None,
    bad_rows: int = 0,
    progress: bool = True,
    console: Console | None = None,
) -> ReplaySummary:
    """Send `events` (in the order given) to `settings.events_topic`; see module docstring.

    `since_ms`/`until_ms` keep events with since <= ts < until; of those, the first `skip`
    are passed over and at most `limit` sent. Pacing: `rate` events per second of wall time,
    else `speed`. Setting `stop` ends the replay after the event being sent (sleeps included):
    the summary says where to resume. `total` only sizes the progress bar.
    """
    topic = settings.events_topic
    summary = ReplaySummary(topic=topic, bad_rows=bad_rows)
    summary.topic_created = ensure_topic(settings, topic, settings.partitions)
    if items:
        store = connect(settings)
        try:
            summary.items_written = write_items(store, items)
        finally:
            store.close()
    paced = rate is not None or not speed.is_max
    client = producer(settings, **({} if paced else FAST_PRODUCER))
    failures = _Failures()
    clock = clock or SystemClock(stop)
    pacer = RatePacer(rate, clock) if rate is not None else Pacer(speed, clock)
    cap = limit if limit is not None else -1
    if total is not None:
        total = max(total - skip, 0)
        total = min(total, limit) if limit is not None else total
    started = time.perf_counter()
    sent = skipped = position = 0  # position: events of the since/until selection met
    try:
        with (
            progress_bar(console or Console(stderr=True), topic, total, progress) as advance,
            _fewer_gc_passes(),
        ):
            send, stopping = client.send, stop.is_set if stop is not None else lambda: False
            for event in events:
                ts = event.ts
                if (since_ms is not None and ts < since_ms) or (
                    until_ms is not None and ts >= until_ms
                ):
                    skipped += 1
                    continue
                if position < skip:
                    position += 1
                    continue
                if sent == cap:
                    break
                if paced:
                    pacer.wait(ts)
                if stopping():
                    summary.interrupted = True
                    break
                try:
                    future = send(topic, value=event.to_json(), key=event.user_id.encode())
                    future.add_errback(failures)
                except KafkaError as exc:
                    failures(exc)
                sent += 1
                position += 1
                if paced:  # slow enough to show every event: the bar never lags behind
                    advance(1)
                elif sent % PROGRESS_EVERY == 0:
                    advance(PROGRESS_EVERY)
            _flush(client)
            if not paced:
                advance(sent % PROGRESS_EVERY)
    finally:
        client.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.failed = failures.count
    summary.sent = sent - failures.count
    summary.skipped = skipped
    summary.resume_skip = position
    summary.errors = failures.errors
    summary.rate = round(summary.sent / summary.seconds, 1) if summary.seconds else 0.0
    return summary
