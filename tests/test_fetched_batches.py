"""The compiled reader of fetched record batches (engage/transport/fetched_batches.py) gives
exactly what kafka-python's own reader gives: record for record, on well-formed batches
(keys and values null or not, headers, compression), on damaged ones (the same error, from
kafka-python's reader), and through a real broker with transactions (aborted batches and
commit markers skipped the same way)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.record.default_records import DefaultRecord, DefaultRecordBatch
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

from engage import kafka_clients
from engage.settings import Settings
from engage.transport import fetched_batches

Row = tuple[Any, ...]


@pytest.fixture(autouse=True)
def _restore_reader() -> Iterator[None]:
    yield
    fetched_batches.use(True)


def batch_bytes(n: int, compression: int = 0, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 24)
    for i in range(n):
        key = None if i % 7 == 3 else f"user:{rng.randrange(1000)}".encode()
        value = (
            None if i % 11 == 5 else bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        )
        headers = [("h", b"v"), ("empty", None), ("é", b"")] if i % 5 == 0 else []
        builder.append(timestamp=1_700_000_000_000 + rng.randrange(10**6), key=key, value=value,
                       headers=headers)  # fmt: skip
    builder.close()
    return bytes(builder.buffer())


def read(raw: bytes, reader: Callable[[Any], Any]) -> list[Row] | str:
    """Every record's fields through `reader`, or the error's type and message."""
    rows: list[Row] = []
    try:
        records = MemoryRecords(raw)
        while (batch := records.next_batch()) is not None:
            for r in reader(batch):
                fields = (r.offset, r.timestamp, r.timestamp_type, r.key, r.value)
                rows.append(
                    (*fields, list(r.headers), r.size_in_bytes, r.checksum, r.validate_crc())
                )
    except Exception as exc:  # the comparison is the point
        return f"{type(exc).__name__}: {exc}"
    return rows


STOCK = fetched_batches._stock_iter
FAST = fetched_batches._iter


@pytest.mark.parametrize("compression", [0, 1])  # none, gzip
def test_well_formed_batches_read_the_same(compression: int) -> None:
    raw = batch_bytes(500, compression) + batch_bytes(3, compression, seed=1)
    stock = read(raw, STOCK)
    assert isinstance(stock, list) and len(stock) == 503
    assert read(raw, FAST) == stock
    assert any(row[3] is None for row in stock) and any(row[4] is None for row in stock)
    assert any(row[5] for row in stock)


def test_the_scan_reads_the_batch_itself() -> None:
    """Not the stock reader behind a fallback: the compiled path returns the records."""
    batch = MemoryRecords(batch_bytes(50)).next_batch()
    records = fetched_batches.parsed_records(batch)
    assert records is not None and len(records) == 50
    stock = list(STOCK(MemoryRecords(batch_bytes(50)).next_batch()))
    assert all(isinstance(r, DefaultRecord) for r in records)  # what kafka-python's code expects
    assert [repr(r) for r in records] == [repr(r) for r in stock]


def test_damaged_batches_fail_or_read_the_same() -> None:
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
        stock = read(bytes(damaged), STOCK)
        assert read(bytes(damaged), FAST) == stock
        outcomes.add(isinstance(stock, str))
    assert outcomes == {True, False}  # both kinds were exercised


def test_use_switches_the_reader_and_refuses_unknown_releases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fetched_batches.use(False) is False and DefaultRecordBatch.__iter__ is STOCK
    assert fetched_batches.use(True) is True and DefaultRecordBatch.__iter__ is FAST
    monkeypatch.setattr(fetched_batches, "KAFKA_PYTHON_VERSION", "9.9.9")
    assert fetched_batches.use(True) is False and DefaultRecordBatch.__iter__ is STOCK


@pytest.mark.stack
def test_transactions_read_the_same_through_the_broker(settings: Settings) -> None:
    """Committed and aborted transactions on a real topic: a read_committed consumer sees the
    same records with either reader (aborted batches and commit markers skipped alike)."""
    topic = f"fetched-{uuid.uuid4().hex[:8]}"
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

    def consume(fast: bool) -> list[Row]:
        fetched_batches.use(fast)
        consumer = kafka_clients.consumer(
            settings.model_copy(update={"kafka_fast_fetch": fast}), topic,
            group_id=None, isolation_level="read_committed", consumer_timeout_ms=3000,
        )  # fmt: skip
        rows = [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in consumer]
        consumer.close()
        return rows

    fast, stock = consume(True), consume(False)
    assert len(stock) == 100 and {v[:1] for _, _, v, _, _ in stock} == {b"0", b"2"}
    assert fast == stock
