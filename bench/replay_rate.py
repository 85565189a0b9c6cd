"""Replay benchmarks (not a test).

    python -m bench.replay_rate kafka  [--runs 3] [--path DIR]   events/s into the local broker
    python -m bench.replay_rate memory [--events 10000000]       synthetic generation, peak RSS

`kafka` replays the whole shared ml-latest-small into a fresh topic per run at --speed max
and prints the median events/s with min and max. `memory` draws synthetic events (and
serialises each, as a replay would) without Kafka, printing peak RSS at 1M, 5M and 10M
events: it must stay flat, because generation is lazy.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import uuid
from pathlib import Path

from engage.kafka_clients import admin_client
from engage.settings import get_settings
from producer import movielens, synthetic
from producer.replay import replay

BENCH_REDIS_DB = 15


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size in MiB."""
    current = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            current = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return current, max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_kafka(runs: int, path: Path | None) -> None:
    base = get_settings()
    started = time.perf_counter()
    data = movielens.load(path or movielens.default_path(base), base.cache_dir)
    print(
        f"loaded {len(data):,} events ({data.n_ratings:,} ratings, {data.n_tags:,} tags) "
        f"from {data.folder} in {time.perf_counter() - started:.2f} s"
    )
    rates, cpu_rates, topics = [], [], []
    try:
        for run in range(1, runs + 1):
            topic = f"bench.replay.{uuid.uuid4().hex[:8]}"
            topics.append(topic)
            settings = base.with_redis_db(BENCH_REDIS_DB).model_copy(update={"events_topic": topic})
            cpu = time.process_time()
            summary = replay(data.events(), settings, items=data.items, progress=False)
            cpu = time.process_time() - cpu
            if summary.failed or summary.sent != len(data):
                raise SystemExit(f"run {run}: sent {summary.sent}, failed {summary.failed}")
            rates.append(summary.rate)
            cpu_rates.append(summary.sent / cpu)
            print(
                f"run {run}: {summary.sent:,} events in {summary.seconds:.2f} s = "
                f"{summary.rate:,.0f} events/s (process CPU {cpu:.2f} s, "
                f"{cpu / summary.sent * 1e6:.1f} us/event)"
            )
    finally:
        admin = admin_client(base)
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()
    print(
        f"replay rate (--speed max, {runs} runs): median {statistics.median(rates):,.0f} "
        f"events/s (min {min(rates):,.0f}, max {max(rates):,.0f}); "
        f"per producer CPU second: median {statistics.median(cpu_rates):,.0f} events"
    )
    print(f"machine load average while measuring: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


def bench_memory(events: int, users: int, days: int) -> None:
    config = synthetic.SyntheticConfig(users=users, days=days, seed=0)
    marks = {1_000_000, 5_000_000, 10_000_000, events}
    current, peak = _rss_mib()
    print(f"before generating: rss {current:.0f} MiB, peak {peak:.0f} MiB")
    started = time.perf_counter()
    count, size = 0, 0
    for event in synthetic.events(config):
        size += len(event.to_json())
        count += 1
        if count in marks:
            current, peak = _rss_mib()
            elapsed = time.perf_counter() - started
            print(
                f"{count:>11,} events: rss {current:.0f} MiB, peak {peak:.0f} MiB, "
                f"{elapsed:.0f} s ({count / elapsed:,.0f} events/s)"
            )
            if count >= events:
                break
    if count < events:
        print(f"the config ran out after {count:,} events: raise --users or --days")
    print(f"{size / 1e9:.2f} GB of JSON produced; only sessions already started are held")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    kafka = sub.add_parser("kafka", help="events/s of a full MovieLens replay")
    kafka.add_argument("--runs", type=int, default=3)
    kafka.add_argument("--path", type=Path, default=None)
    memory = sub.add_parser("memory", help="peak RSS while generating synthetic events")
    memory.add_argument("--events", type=int, default=10_000_000)
    memory.add_argument("--users", type=int, default=200_000)
    memory.add_argument("--days", type=int, default=60)
    args = parser.parse_args()
    if args.mode == "kafka":
        bench_kafka(args.runs, args.path)
    else:
        bench_memory(args.events, args.users, args.days)


if __name__ == "__main__":
    main()
