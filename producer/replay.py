"""Replay events into the events topic: keyed by user, paced, with a delivery summary.

Delivery is confirmed without blocking per message: every send future gets an errback
that counts the failure, and one flush at the end waits for all acknowledgements. Item
metadata goes to Redis before the first event, so the consumer can already use it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
#: Paced (`--rate`, `--speed N`): a live source, whose events should not wait for company:
#: 5 ms of linger, as the Java client's default since Kafka 4.0, instead of the 20 ms the
#: other producers batch for (each event's latency to its score includes this wait).
PACED_PRODUCER = {"linger_ms": 5}
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


@dataclass(frozen=True)
class ReplayOptions:
    """What one replay sends and how fast: the choices of `engage replay`, in one value."""

    #: Item metadata written to Redis before the first event (so the consumer can use it).
    items: Mapping[str, ItemMeta] | None = None
    #: Event-time window: events with since_ms <= ts < until_ms are selected.
    since_ms: int | None = None
    until_ms: int | None = None
    #: Of the selected events, the first `skip` are passed over (resuming: the summary's
    #: `resume_skip`) and at most `limit` sent.
    skip: int = 0
    limit: int | None = None
    #: Pacing: `rate` events per second of wall time, else `speed` times event time.
    speed: Speed = MAX
    rate: float | None = None
    #: How many events `events` holds: sizes the progress bar only.
    total: int | None = None
    #: Rows the source could not read, carried into the summary.
    bad_rows: int = 0
    progress: bool = True

    @property
    def paced(self) -> bool:
        """Waits between sends; else the producer is tuned for throughput instead."""
        return self.rate is not None or not self.speed.is_max

    def pacer(self, clock: Clock) -> Pacer | RatePacer:
        """What waits between sends: a fixed rate, else the event-time gaps scaled."""
        return RatePacer(self.rate, clock) if self.rate is not None else Pacer(self.speed, clock)

    def bar_total(self) -> int | None:
        """The events the progress bar expects: `total` less the skipped, at most `limit`."""
        if self.total is None:
            return None
        total = max(self.total - self.skip, 0)
        return min(total, self.limit) if self.limit is not None else total


@dataclass
class _Sent:
    """Where the send loop stopped."""

    sent: int  # send calls made (failed deliveries included)
    skipped: int  # events outside the since/until window
    position: int  # events of the window met: where a resumed replay starts (`--skip`)
    interrupted: bool  # `stop` was set


def _prepare(settings: Settings, options: ReplayOptions) -> ReplaySummary:
    """The topic (created if missing) and the item metadata, before any event: a consumer
    that starts on the first event must find the metadata already there."""
    topic = settings.events_topic
    summary = ReplaySummary(topic=topic, bad_rows=options.bad_rows)
    summary.topic_created = ensure_topic(settings, topic, settings.partitions)
    if options.items:
        store = connect(settings)
        try:
            summary.items_written = write_items(store, options.items)
        finally:
            store.close()
    return summary


def _send_all(
    events: Iterable[Event],
    client: KafkaProducer,
    topic: str,
    options: ReplayOptions,
    pacer: Pacer | RatePacer,
    stop: threading.Event | None,
    failures: _Failures,
    advance: Callable[[int], None],
) -> _Sent:
    """The send loop: select, skip, cap, pace, send, count. Every send gets an errback and
    nothing waits for an acknowledgement here (`_flush` does, once, at the end). Options are
    read into locals first: this loop is the replay's hot path (bench/replay_rate.py)."""
    since_ms, until_ms = options.since_ms, options.until_ms
    skip, paced = options.skip, options.paced
    cap = options.limit if options.limit is not None else -1
    sent = skipped = position = 0  # position: events of the since/until selection met
    send, stopping = client.send, stop.is_set if stop is not None else lambda: False
    for event in events:
        ts = event.ts
        if (since_ms is not None and ts < since_ms) or (until_ms is not None and ts >= until_ms):
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
            return _Sent(sent, skipped, position, interrupted=True)
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
    return _Sent(sent, skipped, position, interrupted=False)


def _summarise(
    summary: ReplaySummary, done: _Sent, failures: _Failures, seconds: float
) -> ReplaySummary:
    """The counts once every send has finished: `sent` are the acknowledged ones."""
    summary.seconds = round(seconds, 3)
    summary.interrupted = done.interrupted
    summary.failed = failures.count
    summary.sent = done.sent - failures.count
    summary.skipped = done.skipped
    summary.resume_skip = done.position
    summary.errors = failures.errors
    summary.rate = round(summary.sent / summary.seconds, 1) if summary.seconds else 0.0
    return summary


def replay(
    events: Iterable[Event],
    settings: Settings,
    options: ReplayOptions | None = None,
    *,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
    console: Console | None = None,
) -> ReplaySummary:
    """Send `events` (in the order given) to `settings.events_topic`; see module docstring.

    `options` choose what is sent and how fast (`ReplayOptions`). Setting `stop` ends the
    replay after the event being sent (sleeps included): the summary says where to resume.
    `clock` paces (tests pass a fake one).
    """
    options = options or ReplayOptions()
    topic = settings.events_topic
    summary = _prepare(settings, options)
    client = producer(settings, **(PACED_PRODUCER if options.paced else FAST_PRODUCER))
    failures = _Failures()
    pacer = options.pacer(clock or SystemClock(stop))
    started = time.perf_counter()
    try:
        with (
            progress_bar(
                console or Console(stderr=True), topic, options.bar_total(), options.progress
            ) as advance,
            _fewer_gc_passes(),
        ):
            done = _send_all(events, client, topic, options, pacer, stop, failures, advance)
            _flush(client)
            if not options.paced:
                advance(done.sent % PROGRESS_EVERY)
    finally:
        client.close()
    return _summarise(summary, done, failures, time.perf_counter() - started)
