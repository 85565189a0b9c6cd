"""Where the consumer thread's time goes, stage by stage, in one end-to-end run.

    .venv/bin/python -m bench.stages [--runs 3]

Why: the consumer's batches run on one thread (Python's GIL keeps the decoding, folding,
scoring and sending there), so its wall time per event is the process's events/s. This runs
the real `StreamConsumer` in this process over the full ml-latest-small (a fresh topic, a
claimed Redis database, the registered model if any) with a clock around each stage: wall
time, and the thread's own CPU time (`time.thread_time`). Wall minus CPU is time the thread
slept there: waiting for Redis (the read queues behind the previous batch's commit on the
single-threaded server), for the model's threads, for Kafka, or for the GIL. The clocks cost
~1 us a batch per stage: nothing next to a batch of a thousand events.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import sources
from bench.common import FULL, QUICK, Context, open_context, process_cpu_s
from consumer import batch, model_job, runner, store
from consumer.batch import BatchScorer, ScoredBatch
from consumer.runner import StreamConsumer
from engage.settings import Settings
from features.stream import StreamState
from scoring import score_record

#: (owner, method, stage): the stages clocked; nested ones are inside `_handle` or `run`.
STAGES: list[tuple[Any, str, str]] = [
    (runner, "read_incoming", "decode"),
    (StreamConsumer, "_handle", "handle"),
    (StreamConsumer, "_collect", "wait for the last commit (in handle, and after)"),
    (StreamConsumer, "_fence", "handle: offsets fence"),
    (store.RedisBatch, "load", "handle: Redis read"),
    (BatchScorer, "run", "handle: compute (BatchScorer.run)"),
    (StreamState, "apply", "compute: admit + fold"),
    (BatchScorer, "_rules", "compute: rules"),
    (BatchScorer, "_writes", "compute: state writes"),
    (model_job.ModelJob, "result", "compute: wait for the model"),
    (BatchScorer, "_model_start", "compute: model start"),
    (BatchScorer, "_model", "compute: model parts"),
    (BatchScorer, "_observe", "compute: live quality, drift, calibration"),
    (batch, "digest_block", "compute: vector digests"),
    (BatchScorer, "_written", "compute: score messages, compiled writer"),
    (score_record, "message_dicts", "compute: score messages as dicts (shown rows)"),
    (score_record, "encode_messages", "compute: encode the dicts"),
    (BatchScorer, "_show_latest", "compute: shown rows (score hash, leaderboard, live view)"),
    (ScoredBatch, "messages", "handle: wait for the score messages (the writer's thread)"),
    (StreamConsumer, "_send", "handle: send"),
    (store.RedisBatch, "learn", "handle: the local copy learns the writes"),
]


class Clocks:
    """Wall and thread-CPU seconds per stage, counted only while `on`."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.on = False

    def wrap(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return fn(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - wall
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - cpu

        return clocked


@contextmanager
def clocked_stages(clocks: Clocks) -> Iterator[None]:
    """The STAGES methods wrapped for the duration (the classes are restored after)."""
    saved = [(owner, name, vars(owner)[name]) for owner, name, _ in STAGES]
    try:
        for owner, name, stage in STAGES:
            original = vars(owner)[name]
            if isinstance(original, property) and original.fget is not None:
                # (ScoredBatch.messages: read where `_handle` passes the messages to `_send`)
                setattr(owner, name, property(clocks.wrap(original.fget, stage)))
            else:
                setattr(owner, name, clocks.wrap(getattr(owner, name), stage))
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds of this process's live threads, by name (numbers read as N: pools summed): the
    consumer thread is not the only one that works (commit, model, producer sender)."""
    totals: dict[str, float] = {}
    for thread in threading.enumerate():
        name = re.sub(r"\d+", "N", thread.name)
        totals[name] = totals.get(name, 0.0) + (process_cpu_s(thread.native_id, task=True) or 0.0)
    return totals


def count_shown_users() -> list[int]:
    """Count the messages `BatchScorer._show_latest` gets (each user's latest event of a
    batch: the per-user work of a batch) in the returned one-item list, while
    `clocked_stages` lasts (it restores the method)."""
    shown = [0]
    show = BatchScorer._show_latest

    def counted(self: BatchScorer, writes: Any, latest: list[Any]) -> None:
        shown[0] += len(latest)
        show(self, writes, latest)

    BatchScorer._show_latest = counted  # type: ignore[method-assign]
    return shown


def one_run(ctx: Context, synthetic: int | None = None) -> dict[str, Any]:
    """One consumer over the MovieLens topic (or `synthetic` funnel events) from the start,
    clocked; us per event."""
    if synthetic:
        topic, count = sources.synthetic_topic(ctx, synthetic)
        ctx.reset_state(None)
    else:
        topic, count = sources.movielens_topic(ctx)
        ctx.reset_state(sources.movielens_data(ctx).items)
    settings = ctx.with_output(topic, "stages")
    clocks = Clocks()
    try:
        with clocked_stages(clocks):
            consumer = StreamConsumer(settings, group=f"{ctx.prefix}.stages.{uuid.uuid4().hex}")
            consumer.kafka.poll = clocks.wrap(consumer.kafka.poll, "poll")  # type: ignore[method-assign]
            started: list[float] = []
            batches = [0]

            def first_batch(*args: Any, **kwargs: Any) -> None:
                batches[0] += 1
                if not clocks.on:  # from the first batch: start-up and the join are not clocked
                    clocks.on = True
                    started.extend((time.perf_counter(), time.thread_time()))
                handle(*args, **kwargs)

            ended: list[float] = [0.0, 0.0]
            threads_cpu: dict[str, float] = {}

            def batch_done(_summary: Any) -> None:  # the span ends with the last batch
                ended[:] = time.perf_counter(), time.thread_time()
                threads_cpu.update(threads_cpu_s())

            handle = consumer._handle
            consumer._handle = first_batch  # type: ignore[method-assign]
            shown = count_shown_users()
            summary = consumer.run(max_events=count, on_batch=batch_done)
            span, thread_cpu = ended[0] - started[0], ended[1] - started[1]
    finally:
        ctx.delete(settings.scores_topic, settings.dead_letter_topic)
    events = summary.processed + summary.dead_lettered
    per_event = 1e6 / events
    stages = {s: {"wall_us": clocks.wall.get(s, 0.0) * per_event,
                  "cpu_us": clocks.cpu.get(s, 0.0) * per_event}
              for s in ["poll", *(stage for _, _, stage in STAGES)]}  # fmt: skip
    return {"events": events, "batches": batches[0],
            "events_per_s": summary.busy_rate, "span_us": span * per_event,
            "thread_cpu_us": thread_cpu * per_event,
            "users_shown_per_event": shown[0] / events,
            "threads_cpu_us": {n: s * per_event for n, s in threads_cpu.items()},
            "model_version": summary.model_version,
            "stages": stages}  # fmt: skip


def table(runs: list[dict[str, Any]]) -> str:
    """Medians over the runs, one line per stage."""
    med = statistics.median
    lines = [f"{len(runs)} run(s), {runs[0]['events']:,} events, model "
             f"{runs[0]['model_version']}: {med(r['events_per_s'] for r in runs):,.0f} events/s; "
             f"the consumer thread's span {med(r['span_us'] for r in runs):.1f} us an event, "
             f"its CPU {med(r['thread_cpu_us'] for r in runs):.1f}; "
             f"{med(r['events'] / r['batches'] for r in runs):,.0f} events a batch, "
             f"{med(r['users_shown_per_event'] for r in runs):.3f} users shown an event "
             "(each user's latest of a batch)",
             f"{'stage':40s} {'wall us':>8s} {'CPU us':>8s}"]  # fmt: skip
    for stage in runs[0]["stages"]:
        wall = med(r["stages"][stage]["wall_us"] for r in runs)
        cpu = med(r["stages"][stage]["cpu_us"] for r in runs)
        lines.append(f"{stage:40s} {wall:8.2f} {cpu:8.2f}")
    lines.append(f"{'thread (CPU since it started)':40s} {'':>8s} {'CPU us':>8s}")
    for name in runs[0]["threads_cpu_us"]:
        cpu = med(r["threads_cpu_us"].get(name, 0.0) for r in runs)
        lines.append(f"{name:40s} {'':8s} {cpu:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3,000 events (a smoke)")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON")
    parser.add_argument("--synthetic", type=int, metavar="N", help="N synthetic funnel events")
    args = parser.parse_args(argv)
    # A given `settings` (a test's) names its own database; else one is claimed.
    sizes = QUICK if args.quick else FULL
    with open_context(settings, claim=settings is None, sizes=sizes) as ctx:
        runs = [one_run(ctx, args.synthetic) for _ in range(args.runs)]
    print(json.dumps(runs, indent=1) if args.json else table(runs))
    return runs


if __name__ == "__main__":
    main()
