"""Fetched batches read a batch at a time (engage/transport/fetched_batches.py) give exactly
what kafka-python's own fetcher gives: record for record and position for position, take after
take, on well-formed batches (keys and values null or not, headers, compression, a fetch from
mid-batch), on damaged ones (the same error, from kafka-python's reader), and through a real
broker with transactions (aborted batches and commit markers skipped the same way)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord, Fetcher
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.structs import TopicPartition

from engage import kafka_clients
from engage.settings import Settings
from engage.transport import fetched_batches
from engage.transport.record_columns import RecordColumns
from tests.conftest import session_tag

PartitionRecords = Fetcher.PartitionRecords
STOCK, STOCK_TAKE = PartitionRecords._unpack_records, PartitionRecords.take
TP = TopicPartition("events", 2)


@pytest.fixture(autouse=True)
def _restore_reader() -> Iterator[None]:
    yield
    fetched_batches.use(True)


def batch_bytes(
    n: int, compression: int = 0, seed: int = 0, offset: int = 0, headers: bool = True
) -> bytes:
    rng = random.Random(seed)
    builder = MemoryRecordsBuilder(
        magic=2, compression_type=compression, batch_size=1 << 24, offset=offset
    )
    for i in range(n):
        key = None if i % 7 == 3 else f"user:{rng.randrange(1000)}".encode()
        value = (
            None if i % 11 == 5 else bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        )
        some = [("h", b"v"), ("empty", None), ("é", b"")] if headers and i % 5 == 0 else []
        builder.append(timestamp=1_700_000_000_000 + rng.randrange(10**6), key=key, value=value,
                       headers=some)  # fmt: skip
    builder.close()
    return bytes(builder.buffer())


def take_all(
    raw: bytes, fast: bool, sizes: list[int], fetch_offset: int = 0, check_crcs: bool = True
) -> list[Any]:
    """What a partition's records give, take after take: the records and the position after
    each, then the counters (or the error's type and message where one was raised)."""
    fetched_batches.use(fast)
    part = PartitionRecords(fetch_offset, TP, MemoryRecords(raw), check_crcs=check_crcs)
    steps: list[Any] = []
    for size in itertools.cycle(sizes):
        if not part:  # drained: the fetcher asks no more of it
            break
        try:
            taken = part.take(size)
        except Exception as exc:  # the comparison is the point
            steps.append(f"{type(exc).__name__}: {exc}")
            break
        steps.append((taken, part.next_fetch_offset))
        if not taken:
            break
    steps.append((part.records_read, part.bytes_read, part.leader_epoch))
    return steps


@pytest.mark.parametrize("compression", [0, 1])  # none, gzip
@pytest.mark.parametrize("fetch_offset", [0, 137])  # from the start, or mid-batch
def test_well_formed_batches_read_the_same(compression: int, fetch_offset: int) -> None:
    raw = (
        batch_bytes(500, compression)
        + batch_bytes(3, compression, seed=1, offset=500)
        + batch_bytes(20, compression, seed=2, offset=503, headers=False)
    )
    for sizes in ([1000], [1, 7, 250], [500, 3]):
        stock = take_all(raw, False, sizes, fetch_offset)
        assert take_all(raw, True, sizes, fetch_offset) == stock
    records = [r for step in stock[:-1] for r in step[0]]
    assert len(records) == 523 - fetch_offset and records[0].offset == fetch_offset
    assert any(r.key is None for r in records) and any(r.value is None for r in records)
    assert any(r.headers for r in records) and any(not r.headers for r in records)


def take_columns(
    raw: bytes, sizes: list[int], fetch_offset: int = 0, check_crcs: bool = True
) -> list[Any]:
    """`take_all` through `ColumnarPartitionRecords`: each take's chunks made into records
    (the fields a `ConsumerRecord` compares by, below), the position after each take."""
    fetched_batches.use(True)
    part = fetched_batches.ColumnarPartitionRecords(
        fetch_offset, TP, MemoryRecords(raw), check_crcs=check_crcs
    )
    steps: list[Any] = []
    for size in itertools.cycle(sizes):
        if not part:
            break
        try:
            taken = part.take(size)
        except Exception as exc:
            steps.append(f"{type(exc).__name__}: {exc}")
            break
        records = [fields(r) for chunk in taken for r in chunk]
        assert len(taken) == len(records) <= size  # (the fetcher counts len(taken))
        steps.append((records, part.next_fetch_offset))
        if not taken:
            break
    steps.append((part.records_read, part.bytes_read, part.leader_epoch))
    return steps


def fields(record: Any) -> tuple[Any, ...]:
    return (record.topic, record.partition, record.offset, record.timestamp, record.key,
            record.value, list(record.headers or ()))  # fmt: skip


def as_fields(steps: list[Any]) -> list[Any]:
    """`take_all`'s steps with each record as `fields`."""
    return [
        ([fields(r) for r in step[0]], step[1]) if isinstance(step, tuple) and len(step) == 2
        else step
        for step in steps
    ]  # fmt: skip


@pytest.mark.parametrize("compression", [0, 1])  # none, gzip
@pytest.mark.parametrize("fetch_offset", [0, 137])  # from the start, or mid-batch
def test_columnar_takes_give_the_records_and_positions_of_the_stock_reader(
    compression: int, fetch_offset: int
) -> None:
    """The consumer's columnar fetch: every record's fields, the records a take counts and
    the position after it are kafka-python's own, takes ending inside a batch included."""
    raw = (
        batch_bytes(500, compression)
        + batch_bytes(3, compression, seed=1, offset=500)
        + batch_bytes(20, compression, seed=2, offset=503, headers=False)
    )
    for sizes in ([1000], [1, 7, 250], [500, 3], [2]):
        stock = as_fields(take_all(raw, False, sizes, fetch_offset))
        assert take_columns(raw, sizes, fetch_offset) == stock


def test_record_columns_join_pick_and_place_their_values() -> None:
    """Chunks joined keep each record; a pick keeps its rows; each value is where the event
    reader reads it (a null one empty)."""
    first = fetched_batches.consumer_columns(TP, MemoryRecords(batch_bytes(30)).next_batch())
    second = fetched_batches.consumer_columns(
        TP, MemoryRecords(batch_bytes(12, seed=3, offset=30, headers=False)).next_batch()
    )
    assert first is not None and second is not None
    joined = RecordColumns.concat([first[0], RecordColumns.empty(), second[0]])
    records = [*first[0], *second[0]]
    assert [fields(r) for r in joined] == [fields(r) for r in records]
    assert [r.offset for r in records] == list(range(42))
    picked = joined.take([40, 3, 29])
    assert [fields(r) for r in picked] == [fields(records[k]) for k in (40, 3, 29)]
    assert [fields(r) for r in joined.take(joined.offsets % 2 == 1)] == [
        fields(r) for r in records[1::2]
    ]
    values = [r.value or b"" for r in records]
    starts, ends = joined.value_at.tolist(), joined.value_ends().tolist()
    assert [joined.data[a:b] for a, b in zip(starts, ends, strict=True)] == values
    assert list(joined.values(empty_null=True)) == values
    assert list(joined.keys()) == [r.key for r in records] and None in list(joined.keys())
    held = RecordColumns.of_records(take_all(batch_bytes(6), False, [100])[0][0])
    assert [fields(r) for r in held.take([5, 0])] == [fields(r) for r in [held[5], held[0]]]
    assert any(r.headers for r in held)


def test_the_scan_makes_the_batch_s_records_itself() -> None:
    """Not the per-record reader behind a fallback: one call returns the batch's records."""
    made = fetched_batches.consumer_records(TP, 3, MemoryRecords(batch_bytes(50)).next_batch())
    assert made is not None
    records, size = made
    assert len(records) == 50 and all(type(r) is ConsumerRecord for r in records)
    assert {r.leader_epoch for r in records} == {3} and size > 50
    stock = take_all(batch_bytes(50), False, [100])
    assert [r._replace(leader_epoch=3) for r in stock[0][0]] == records


def test_damaged_batches_fail_or_read_the_same() -> None:
    """Either reader, and the columnar takes: the stock reader's records or its error."""
    raw = batch_bytes(40)
    rng = random.Random(7)
    outcomes = set()
    for _ in range(400):
        damaged = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(61, len(damaged))  # past the header: the records themselves
            damaged[at] = rng.randrange(256)
        if rng.random() < 0.2:
            del damaged[rng.randrange(61, len(damaged)) :]
        stock = take_all(bytes(damaged), False, [15], check_crcs=False)
        assert take_all(bytes(damaged), True, [15], check_crcs=False) == stock
        assert take_columns(bytes(damaged), [15], check_crcs=False) == as_fields(stock)
        outcomes.add(any(isinstance(step, str) for step in stock))
    assert outcomes == {True, False}  # both kinds were exercised
    damaged = bytearray(raw)
    damaged[100] ^= 1  # with CRCs checked: the batch's CRC fails, either way
    assert take_all(bytes(damaged), True, [15]) == take_all(bytes(damaged), False, [15])
    assert "CorruptRecordError" in take_all(bytes(damaged), True, [15])[0]


def test_use_switches_the_reader_and_refuses_unknown_releases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fetched_batches.use(False) is False
    assert PartitionRecords._unpack_records is STOCK and PartitionRecords.take is STOCK_TAKE
    assert fetched_batches.use(True) is True
    assert PartitionRecords._unpack_records is not STOCK and PartitionRecords.take is not STOCK_TAKE
    monkeypatch.setattr(fetched_batches, "KAFKA_PYTHON_VERSION", "9.9.9")
    assert fetched_batches.use(True) is False and PartitionRecords._unpack_records is STOCK


@pytest.mark.stack
def test_transactions_read_the_same_through_the_broker(settings: Settings) -> None:
    """Committed and aborted transactions on a real topic: a read_committed consumer sees the
    same records with either reader (aborted batches and commit markers skipped alike)."""
    topic = f"fetched-{session_tag()}"
    kafka_clients.ensure_topic(settings, topic, partitions=1)
    producer = kafka_clients.producer(settings, transactional_id=f"tx-{topic}")
    producer.init_transactions()
    for round_, commit in enumerate([True, False, True]):
        producer.begin_transaction()
        for i in range(50):
            headers = [("round", str(round_).encode())] if i % 10 == 0 else []
            producer.send(topic, value=f"{round_}:{i}".encode(), key=b"k", headers=headers)
        (producer.commit_transaction if commit else producer.abort_transaction)()
    producer.close()

    def consume(fast: bool) -> list[ConsumerRecord]:
        fetched_batches.use(fast)
        consumer = kafka_clients.consumer(
            settings.model_copy(update={"kafka_fast_fetch": fast}), topic,
            group_id=None, isolation_level="read_committed", consumer_timeout_ms=3000,
        )  # fmt: skip
        rows = list(consumer)
        consumer.close()
        return rows

    fast, stock = consume(True), consume(False)
    assert len(stock) == 100 and {r.value[:1] for r in stock} == {b"0", b"2"}
    assert fast == stock


def test_a_batch_read_from_columns_keeps_the_polls_partition_and_offset_arrays() -> None:
    """`read_incoming` of polled columns: the batch's partitions and offsets as the poll's
    arrays (the score-message writer reads them as they are), row for row the lists, also
    once undecodable records were taken out; a batch made from objects makes them."""
    from consumer.incoming import IncomingBatch, read_incoming
    from features.events import Event, EventType

    def value(i: int) -> bytes | None:
        if i % 9 == 4:
            return b"{not json"
        return Event(event_id=f"e{i}", user_id=f"u{i % 5}", ts=1_700_000_000_000 + i,
                     event_type=EventType.PAGE_VIEW, item_id=f"p{i % 3}",
                     source="web").to_json()  # fmt: skip

    records = [
        ConsumerRecord(topic="events", partition=2 + i % 2, leader_epoch=0, offset=40 + i,
                       timestamp=1_700_000_000_000, timestamp_type=0, key=b"k", value=value(i),
                       headers=[], checksum=None, serialized_key_size=1,
                       serialized_value_size=10, serialized_header_size=-1)
        for i in range(30)
    ]  # fmt: skip
    incoming, undecodable = read_incoming(RecordColumns.of_records(records))
    assert len(undecodable) == 3 and len(incoming) == 27
    assert incoming.arrays is not None
    partitions, offsets = incoming.partition_offset_arrays()
    assert partitions.tolist() == incoming.partitions and offsets.tolist() == incoming.offsets
    assert incoming.offsets == [40 + i for i in range(30) if i % 9 != 4]
    made = IncomingBatch.of([incoming.row(k) for k in range(len(incoming))])
    assert made.arrays is None
    assert [a.tolist() for a in made.partition_offset_arrays()] == [partitions.tolist(),
                                                                    offsets.tolist()]  # fmt: skip
    assert incoming.take([3, 1]).arrays is None
