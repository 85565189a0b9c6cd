"""Where one event's time goes: the consumer's budget, measured piece by piece.

The consumer goal of issue 4 is 20,000 events/s on this 2-core machine, i.e. 50 us of wall time
per event in one process, or 100 us of CPU per event over both cores (Kafka, Redis and every
consumer process included). These figures show how much of that the parts take on their own:

- compute: `consumer.batch.BatchScorer.run` (admission, the features before and after every
  event, rules, the model with its top reasons, the score messages) over the MovieLens log in
  consumer-sized batches, the state in memory, garbage collection tuned as in the consumer:
  everything the consumer does except Kafka and Redis. With the rules only, and with the
  registered model. The most one process could reach if Kafka and Redis cost nothing is
  1e6 / this.
- servers: the CPU the stack's own Kafka broker and Redis (when this project started them;
  pids from their pid files) spend per event while one consumer process reads the MovieLens
  topic end to end.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import sources
from bench.common import Context, process_cpu_s, stack_server_pids
from consumer.batch import BatchScorer
from consumer.incoming import IncomingBatch
from consumer.model_job import ModelWorker
from consumer.runner import tune_gc
from consumer.state_store import Loaded
from engage.settings import Settings
from features.event_reader import read_events
from features.fold import FoldState
from features.state_codec import STATE_FIELD, packed_users
from features.stream import StreamState
from scoring.rules import load_scorers


def registered_model(settings: Settings) -> Any:
    """The current model bundle, served as the consumer serves it (one thread), or None."""
    from scoring.registry import ModelRegistry

    registry = ModelRegistry(settings)
    version = registry.current_version()
    if version is None:
        return None
    bundle = registry.load(version)
    bundle.set_threads(settings.model_threads)
    return bundle


def compute_floor(ctx: Context, model: Any) -> dict[str, Any]:
    """us/event of `BatchScorer.run` over the MovieLens events, state in memory. The batches
    are read from the events' messages before the clock runs, as the consumer reads them (the
    reader's id codes included: admission and the fold take them)."""
    settings = ctx.settings
    data = sources.movielens_data(ctx)
    messages = [e.to_json() for e in sources.movielens_events(ctx)]
    # As the consumer runs the model and the writer.
    worker = ModelWorker(settings.model_overlap_min_rows, settings.writer_overlap_max_shown_share)
    scorer = BatchScorer(load_scorers(settings.rules_file), settings.log_features, worker)
    scorer.model = model
    batch = settings.batch_max_records

    def fresh() -> StreamState:
        tables = FoldState(meta=data.items)
        return StreamState(settings.feature_params, settings.admission_policy, tables)

    def read(first: int) -> IncomingBatch:
        events, _, errors = read_events(messages[first : first + batch])
        assert not errors, errors[:1]
        n = len(events)
        offsets = list(range(first, first + n))
        return IncomingBatch(events, [0] * n, offsets, [0] * n, [None] * n, [b""] * n)

    def loaded_of(state: StreamState, chunk: IncomingBatch) -> Loaded:
        """What the store hands the scorer: each user's packed state as read (the items'
        shards are empty: in memory they stay in the tables, as in one long batch)."""
        known = state.tables.user_index
        users = list(dict.fromkeys(chunk.events.user_ids))  # each user once, as a store reads
        held = [user for user in users if user in known]
        fields = packed_users(state.tables, held)
        packed = {u: f[STATE_FIELD] for u, f in zip(held, fields, strict=True)}
        return Loaded({user: packed.get(user, b"") for user in users})

    chunks = [read(first) for first in range(0, len(messages), batch)]
    warm = fresh()  # the compiled fold loads from numba's cache on first use: not measured
    scorer.run(warm, read(0), loaded_of(warm, chunks[0]))
    state = fresh()
    thresholds = gc.get_threshold()
    tune_gc(settings.gc_gen0_threshold)  # as the consumer runs
    try:
        started = time.process_time()  # CPU, not wall: the figure holds on a busy machine
        for chunk in chunks:  # (messages read: the writer's, maybe on the worker, awaited)
            scorer.run(state, chunk, loaded_of(state, chunk)).messages  # noqa: B018
        seconds = time.process_time() - started
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        worker.close()
    return {
        "events": len(messages),
        "batch": batch,
        "seconds": seconds,
        "us_per_event": seconds / len(messages) * 1e6,
        "model_version": getattr(model, "version", None),
    }


def server_cpu(ctx: Context, consume: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """CPU us/event of our own Kafka and Redis servers while `consume` runs (None if the
    servers are not this project's): over the consumer's busy span when its worker read them
    there (`servers_cpu_s`), else over the whole call (start-up, group join and the topic's
    production included: more per event)."""
    pids = stack_server_pids(ctx.settings)
    before = {name: process_cpu_s(pid) for name, pid in pids.items()}
    result = consume()
    busy = result.get("servers_cpu_s") or {}
    out: dict[str, Any] = {"events": result["events"], "consumer_per_s": result["events_per_s"],
                           "consumer_us_per_event": result.get("cpu_us_per_event")}  # fmt: skip
    for name, pid in pids.items():
        after, start = process_cpu_s(pid), before[name]
        used = busy.get(name)
        out[f"{name}_window"] = "busy span" if used is not None else "whole run"
        if used is None:
            used = None if after is None or start is None else after - start
        out[f"{name}_cpu_s"] = used
        out[f"{name}_us_per_event"] = None if used is None else used / result["events"] * 1e6
    return out


def measure(ctx: Context, runs: int, consume: Callable[[], dict[str, Any]]) -> Iterator[dict]:
    """Per run: the compute floor without and with the model, and the servers' CPU."""
    model = registered_model(ctx.settings)
    for _ in range(runs):
        yield {
            "rules": compute_floor(ctx, None),
            "model": compute_floor(ctx, model) if model is not None else None,
            "servers": server_cpu(ctx, consume),
        }


def machine_cpu(servers: dict[str, Any]) -> float | None:
    """The consumer process's, the broker's and Redis's CPU per event in one run, summed:
    what one event costs the machine's cores (None unless all three were read)."""
    parts = [servers.get(f"{name}_us_per_event") for name in ("consumer", "kafka", "redis")]
    return None if None in parts else float(sum(parts))


def cores_bound(us_per_event: float | None, cores: int | None = None) -> float | None:
    """The most events/s the machine's cores could give at `us_per_event` of CPU an event,
    however well the stages overlap (each core busy all the time)."""
    cores = cores or os.cpu_count() or 1
    return None if not us_per_event else cores * 1e6 / us_per_event
