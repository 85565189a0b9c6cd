"""Ceilings: what the clients and servers do with no engage work, measured in the same run.

- produce only: kafka-python sends pre-serialised MovieLens events (the replay's producer
  settings and partitioner) and flushes: the most a replay could reach;
- consume only: kafka-python reads a topic (the consumer's fetch settings) and only decodes
  each value with `decode_event`: the most the consumer could reach;
- Redis pipeline: one Python client sends HINCRBY/HSET pairs in pipelines of 2,000 commands;
- `redis-benchmark -q -t hset,incr -P 16` (if installed), for reference.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from typing import Any

from kafka import TopicPartition

from bench import sources
from bench.common import Context
from engage.kafka_clients import consumer, ensure_topic, producer
from engage.redis_client import connection_options
from engage.settings import Settings
from engage.transport.kafka_python import PARTITION_FETCH_BYTES
from features.events import DecodeError, decode_event
from producer.replay import FAST_PRODUCER, _fewer_gc_passes

PIPELINE_COMMANDS = 2_000
HASHES = 1_000


def produce_only(ctx: Context) -> dict[str, Any]:
    """events/s of sending already-serialised events and waiting for every acknowledgement."""
    messages = [(e.user_id.encode(), e.to_json()) for e in sources.movielens_events(ctx)]
    settings = ctx.fresh("produce-only")
    topic = settings.events_topic
    ensure_topic(settings, topic, settings.partitions)
    client = producer(settings, **FAST_PRODUCER)
    failed: list[BaseException] = []
    try:
        with _fewer_gc_passes():
            started = time.perf_counter()
            send = client.send
            for key, value in messages:
                send(topic, value=value, key=key).add_errback(failed.append)
            client.flush()
            seconds = time.perf_counter() - started
    finally:
        client.close()
        ctx.delete_topics(settings)
    if failed:
        raise RuntimeError(f"produce-only: {len(failed)} sends failed: {failed[0]!r}")
    return {"events": len(messages), "seconds": seconds, "events_per_s": len(messages) / seconds}


def consume_only(settings: Settings, expected: int) -> dict[str, Any]:
    """events/s of fetching a whole topic and decoding every value (no group, no state).

    Counted like the consumer's rate: from the first non-empty poll to the last decode."""
    client = consumer(
        settings,
        group_id=None,
        max_poll_records=settings.batch_max_records,
        fetch_max_bytes=64 * 1024 * 1024,  # the consumer's own fetch settings
        max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
    )
    try:
        partitions = [
            TopicPartition(settings.events_topic, p)
            for p in sorted(client.partitions_for_topic(settings.events_topic) or ())
        ]
        client.assign(partitions)
        client.seek_to_beginning(*partitions)
        count = bad = 0
        first = None
        deadline = time.monotonic() + 600
        while count < expected:
            polled = client.poll(
                timeout_ms=settings.poll_timeout_ms, max_records=settings.batch_max_records
            )
            if first is None and polled:
                first = time.perf_counter()
            for records in polled.values():
                for record in records:
                    try:
                        decode_event(record.value)
                    except DecodeError:
                        bad += 1
                    count += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"consume-only: {count} of {expected} records in 600 s")
        seconds = time.perf_counter() - (first or time.perf_counter())
    finally:
        client.close()
    return {
        "events": count,
        "undecodable": bad,
        "seconds": seconds,
        "events_per_s": count / seconds if seconds else 0.0,
    }


def redis_pipeline(ctx: Context, ops: int) -> dict[str, Any]:
    """ops/s of HINCRBY + HSET pairs over 1,000 hashes, pipelined, from one Python client."""
    client = ctx.redis()
    try:
        client.flushdb()
        pipe = client.pipeline(transaction=False)
        started = time.perf_counter()
        for i in range(0, ops, 2):
            key = f"bench:h:{i % HASHES}"
            pipe.hincrby(key, "n", 1)
            pipe.hset(key, "last", i)
            if len(pipe) >= PIPELINE_COMMANDS:
                pipe.execute()
        pipe.execute()
        seconds = time.perf_counter() - started
        client.flushdb()
    finally:
        client.close()
    done = ops + ops % 2
    return {"ops": done, "seconds": seconds, "ops_per_s": done / seconds}


_RESULT = re.compile(r"^([A-Z_]+):\s+([\d.]+) requests per second", re.MULTILINE)


def parse_redis_benchmark(output: str) -> dict[str, float]:
    """requests/s per test from `redis-benchmark -q` output (progress lines end with \\r)."""
    return {name.lower(): float(rps) for name, rps in _RESULT.findall(output.replace("\r", "\n"))}


def redis_benchmark_usable(settings: Settings) -> bool:
    """Installed, and Redis needs no credentials or TLS (no password on a command line)."""
    secured = bool(connection_options(settings)) or "@" in settings.redis_url
    return shutil.which("redis-benchmark") is not None and not secured


def redis_benchmark(ctx: Context, requests: int) -> dict[str, float] | None:
    """`redis-benchmark -q -t hset,incr -P 16` on the private database; None if it is not
    installed or Redis needs credentials or TLS."""
    binary = shutil.which("redis-benchmark")
    if binary is None or not redis_benchmark_usable(ctx.settings):
        return None
    host, port = ctx.settings.redis_host_port
    command = [
        binary,
        "-h",
        host,
        "-p",
        str(port),
        "--dbnum",
        str(ctx.db),
        "-q",
        "-t",
        "hset,incr",
        "-P",
        "16",
        "-n",
        str(requests),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    finally:
        ctx.reset_state()
    result = parse_redis_benchmark(done.stdout)
    if set(result) != {"hset", "incr"}:
        raise RuntimeError(f"cannot parse redis-benchmark output: {done.stdout[-300:]!r}")
    return result


def consume_topic_only(ctx: Context, source: str) -> dict[str, Any]:
    """`consume_only` over the harness's MovieLens or synthetic topic."""
    if source == "movielens":
        settings, count = sources.movielens_topic(ctx)
    else:
        settings, count = sources.synthetic_topic(ctx, ctx.sizes.synthetic_events)
    return consume_only(settings, count)
