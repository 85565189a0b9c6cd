"""Consumer benchmark: end-to-end events/s and event-to-score latency on the local stack.

    .venv/bin/python -m bench.consumer_rate [--runs 3] [--rate 2000] [--seconds 20]

1. Throughput: the full ml-latest-small is replayed into a fresh topic first, then one consumer
   (rules and, if registered, the model on; scores topic on) reads it from the beginning.
   The rate counts from its first batch to its last (start-up and the idle exit excluded).
2. Latency: a consumer runs while events are replayed at a steady `--rate` for `--seconds`;
   latency = score emitted minus the Kafka record timestamp (the producer's send time).
Each run uses its own topic and Redis database 14 (emptied first). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import numpy as np
import redis

from consumer.runner import StreamConsumer
from engage.settings import Settings, get_settings
from producer import movielens
from producer.pacing import throttle
from producer.replay import replay

BENCH_DB = 14


def fresh_settings(tag: str) -> Settings:
    base = get_settings().with_redis_db(BENCH_DB)
    redis.Redis.from_url(base.redis_url).flushdb()
    run = f"bench.{tag}.{time.time_ns()}"
    return base.model_copy(
        update={
            "events_topic": f"{run}.events",
            "scores_topic": f"{run}.scores",
            "dead_letter_topic": f"{run}.dlq",
        }
    )


def throughput_run(data: movielens.MovieLens) -> dict[str, Any]:
    settings = fresh_settings("rate")
    sent = replay(data.events(), settings, items=data.items, progress=False)
    consumer = StreamConsumer(settings, group=f"{settings.events_topic}.g")
    summary = consumer.run(idle_exit_s=3.0)
    assert summary.processed == sent.sent, (summary.processed, sent.sent)
    return {
        "events": summary.processed,
        "events_per_s": round(summary.busy_rate, 1),
        "model_version": summary.model_version,
        "replay_events_per_s": sent.rate,
    }


def latency_run(data: movielens.MovieLens, rate: float, seconds: float) -> dict[str, Any]:
    settings = fresh_settings("latency")
    consumer = StreamConsumer(settings, group=f"{settings.events_topic}.g", keep_latencies=True)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(s=consumer.run(idle_exit_s=3.0)))
    thread.start()
    time.sleep(2.0)  # let it join the group before the clock starts
    stop = threading.Event()
    limit = int(rate * seconds)
    replay(throttle(data.events(), rate, stop), settings, items=data.items, limit=limit,
           progress=False)  # fmt: skip
    thread.join()
    lat = np.array(result["s"].latencies_ms[int(rate) :])  # drop the first second (warm-up)
    return {
        "rate": rate,
        "events": len(result["s"].latencies_ms),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    settings = get_settings()
    data = movielens.load(movielens.default_path(settings), settings.cache_dir)
    runs = [throughput_run(data) for _ in range(args.runs)]
    rates = [r["events_per_s"] for r in runs]
    latency = latency_run(data, args.rate, args.seconds)
    print(
        json.dumps(
            {
                "throughput": {
                    "median_events_per_s": statistics.median(rates),
                    "min": min(rates),
                    "max": max(rates),
                    "runs": runs,
                },
                "latency": latency,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
