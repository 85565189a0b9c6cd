"""Consumer benchmark: end-to-end events/s and event-to-score latency on the local stack.

    .venv/bin/python -m bench.consumer_rate [--runs 3] [--rate 2000] [--seconds 20]

1. Throughput: the full ml-latest-small is replayed into a topic once; then, per run, one
   consumer process (bench/consumer_worker.py: the real StreamConsumer with rules, the
   registered model if any, and the scores topic) reads it from the beginning on an emptied
   Redis database. The rate counts from its first batch to its last (start-up, group join and
   idling excluded).
2. Latency: a consumer process runs while events are replayed at a steady `--rate` for
   `--seconds` (`engage replay --rate`'s pacing and producer); latency = score emitted minus
   the Kafka record timestamp (the producer's send time). The first second (or first 10%,
   whichever is fewer) is dropped as warm-up.
Uses fresh topics and a claimed Redis database. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import sources
from bench.common import Context, open_context
from bench.consumer_worker import run_consumers
from producer.replay import ReplayOptions, replay


def throughput_run(
    ctx: Context,
    source: str,
    events: int | None = None,
    processes: int = 1,
    memory: bool = False,
    kind: str = "engage",
    client: str | None = None,
) -> dict[str, Any]:
    """One consumer run over the `movielens` or `synthetic` topic (`events` of them); `kind`
    "floor" runs the job floor (bench/floor.py) instead of engage's consumer, "rules" engage's
    consumer with no model (its data directory is an empty one: no registered model); `client`
    another Kafka client than the settings' (`kafka_client`).

    With `memory`, Redis memory per user and session is measured before the state goes."""
    if source == "movielens":
        topic, count = sources.movielens_topic(ctx)
        items = sources.movielens_data(ctx).items
    else:
        assert events is not None
        topic, count = sources.synthetic_topic(ctx, events)
        items = None
    ctx.reset_state(items)
    settings = ctx.with_output(topic, f"{kind}{processes}")
    if client is not None:
        settings = settings.model_copy(update={"kafka_client": client})
    no_model = Path(tempfile.mkdtemp(prefix="engage-bench-rules-")) if kind == "rules" else None
    if no_model is not None:
        settings = settings.model_copy(update={"data_dir": no_model})
    try:
        worker = "engage" if kind == "rules" else kind
        result = run_consumers(ctx, settings, count, processes=processes, kind=worker)
        if memory:
            from bench.growth import redis_memory

            result["redis"] = redis_memory(ctx)
    finally:
        ctx.delete(settings.scores_topic, settings.dead_letter_topic)
        if no_model is not None:
            shutil.rmtree(no_model, ignore_errors=True)
    if result["events"] != count:
        raise RuntimeError(f"consumed {result['events']} events of {count}")
    return result


def remembered_run(
    ctx: Context,
    source: str,
    run: int,
    events: int | None = None,
    processes: int = 1,
    memory: bool = False,
    kind: str = "engage",
    client: str | None = None,
) -> dict[str, Any]:
    """`throughput_run`, measured once per (consumer, source, size, processes, client, run)
    and remembered, so the consumer, floor, scaling and growth benchmarks share runs."""
    key = f"runs:{kind}:{source}:{events}:{processes}" + (f":{client}" if client else "")
    done = ctx.cache.setdefault(key, [])
    if run < len(done) and (not memory or "redis" in done[run]):
        return done[run]
    result = throughput_run(ctx, source, events, processes, memory, kind, client)
    if run < len(done):
        done[run] = result
    else:
        done.append(result)
    return result


def latency_run(ctx: Context, rate: float, seconds: float, processes: int = 1) -> dict[str, Any]:
    """Event-to-score latency while MovieLens events arrive at a steady `rate` (or as fast as
    the producer can, if lower) to `processes` consumers in one group; also the offered and
    the consumed rate."""
    data = sources.movielens_data(ctx)
    limit = min(int(rate * seconds), sources.movielens_count(ctx))
    settings = ctx.fresh(f"latency{int(rate)}x{processes}")
    ctx.reset_state(data.items)
    offered: dict[str, float] = {}

    def produce() -> int:
        # Paced as `engage replay --rate` sends (its producer lingers 5 ms): a live source.
        # (Unpaced, the replay tunes its producer for throughput: 50 ms of linger that the
        # latency figures before 2026-12-02 night included.)
        summary = replay(
            sources.movielens_events(ctx), settings,
            ReplayOptions(rate=rate, limit=limit, progress=False),
        )  # fmt: skip
        offered["rate"] = summary.rate
        return summary.sent

    try:
        drop = min(int(rate), limit // 10)
        result = run_consumers(
            ctx, settings, None, processes, latencies=True, drop=drop, during=produce
        )
    finally:
        ctx.delete_topics(settings)
    return {
        "rate": rate,
        "processes": processes,
        "events": result["events"],
        "offered_events_per_s": offered["rate"],
        "consumed_events_per_s": result["events_per_s"],
        **{k: result[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")},
        "model_version": result["model_version"],
        "errors": result["errors"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=1, help="consumers in the latency run")
    args = parser.parse_args()
    with open_context(prefix="bench.consumer") as ctx:
        runs = [throughput_run(ctx, "movielens") for _ in range(args.runs)]
        latency = latency_run(ctx, args.rate, args.seconds, args.processes)
    rates = [r["events_per_s"] for r in runs]
    report: dict[str, Any] = {"latency": latency}
    if rates:  # --runs 0: the latency run only
        report["throughput"] = {
            "median_events_per_s": round(statistics.median(rates), 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
            "model_version": runs[0]["model_version"],
            "peak_rss_mib": [r["peak_rss_mib"] for r in runs],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
