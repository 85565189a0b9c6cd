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
import statistics
import time
from pathlib import Path
from typing import Any

from bench import sources
from bench.common import Context, open_context, rss_mib
from engage.settings import get_settings
from producer import synthetic


def replay_run(ctx: Context) -> dict[str, Any]:
    """Replay the MovieLens events into a fresh topic at --speed max: events/s and CPU.

    The first topic made this way is kept as the harness's MovieLens topic; later ones go."""
    data, count = sources.movielens_data(ctx), sources.movielens_count(ctx)
    settings = ctx.fresh("replay")
    cpu = time.process_time()
    summary = sources.produce(settings, sources.movielens_events(ctx), count, items=data.items)
    cpu = time.process_time() - cpu
    if "topic:movielens" not in ctx.cache:
        ctx.cache["topic:movielens"] = (settings, count)
    else:
        ctx.delete_topics(settings)
    return {
        "events": summary.sent,
        "seconds": summary.seconds,
        "events_per_s": summary.rate,
        "cpu_events_per_s": summary.sent / cpu if cpu else 0.0,
    }


def bench_kafka(runs: int, path: Path | None) -> None:
    settings = get_settings()
    if path is not None:
        settings = settings.model_copy(update={"movielens_dir": path})
    with open_context(settings, prefix="bench.replay") as ctx:
        data = sources.movielens_data(ctx)
        print(
            f"loaded {len(data):,} events ({data.n_ratings:,} ratings, "
            f"{data.n_tags:,} tags) from {data.folder}"
        )
        rates, cpu_rates = [], []
        for run in range(1, runs + 1):
            result = replay_run(ctx)
            rates.append(result["events_per_s"])
            cpu_rates.append(result["cpu_events_per_s"])
            print(
                f"run {run}: {result['events']:,} events in {result['seconds']:.2f} s = "
                f"{result['events_per_s']:,.0f} events/s "
                f"({result['cpu_events_per_s']:,.0f} per producer CPU second)"
            )
    print(
        f"replay rate (--speed max, {runs} runs): median {statistics.median(rates):,.0f} "
        f"events/s (min {min(rates):,.0f}, max {max(rates):,.0f}); "
        f"per producer CPU second: median {statistics.median(cpu_rates):,.0f} events"
    )
    print(f"machine load average while measuring: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


def bench_memory(events: int, users: int, days: int) -> None:
    config = synthetic.SyntheticConfig(users=users, days=days, seed=0)
    marks = {1_000_000, 5_000_000, 10_000_000, events}
    current, peak = rss_mib()
    print(f"before generating: rss {current:.0f} MiB, peak {peak:.0f} MiB")
    started = time.perf_counter()
    count, size = 0, 0
    for event in synthetic.events(config):
        size += len(event.to_json())
        count += 1
        if count in marks:
            current, peak = rss_mib()
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
