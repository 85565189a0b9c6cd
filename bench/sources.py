"""Benchmark inputs: the MovieLens events, synthetic configs, and topics filled once.

Topics are produced once per harness run and cached in the Context: every consumer run reads
the same topic again from the beginning, on an emptied Redis database (offsets live there).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

from bench.common import Context
from engage.kafka_clients import ensure_topic
from engage.settings import Settings
from features.events import Event
from features.items import ItemMeta
from producer import movielens, synthetic
from producer.replay import ReplayOptions, ReplaySummary, replay


def movielens_path(ctx: Context) -> Path:
    path = movielens.default_path(ctx.settings)
    if path is None:
        raise RuntimeError("no MovieLens folder: set ENGAGE_MOVIELENS_DIR")
    return path


def movielens_data(ctx: Context) -> movielens.MovieLens:
    """ml-latest-small, parsed once per harness run."""
    if "movielens" not in ctx.cache:
        ctx.log("loading ml-latest-small")
        ctx.cache["movielens"] = movielens.load(movielens_path(ctx), ctx.settings.cache_dir)
    return ctx.cache["movielens"]


def movielens_count(ctx: Context) -> int:
    total = len(movielens_data(ctx))
    limit = ctx.sizes.movielens_events
    return total if limit is None else min(total, limit)


def movielens_events(ctx: Context) -> Iterator[Event]:
    return itertools.islice(movielens_data(ctx).events(), movielens_count(ctx))


def synthetic_config(events: int) -> synthetic.SyntheticConfig:
    """A funnel with enough users for `events` over 30 days (they average about 31 each)."""
    return synthetic.SyntheticConfig(users=max(100, events // 20), days=30, seed=0)


def produce(
    settings: Settings,
    events: Iterator[Event],
    limit: int,
    items: Mapping[str, ItemMeta] | None = None,
) -> ReplaySummary:
    """Replay at full speed (item metadata too, if given); every event must be acknowledged."""
    summary = replay(events, settings, ReplayOptions(items=items, limit=limit, progress=False))
    if summary.failed or summary.sent != limit:
        raise RuntimeError(
            f"{settings.events_topic}: sent {summary.sent} of {limit}, "
            f"failed {summary.failed}: {summary.errors}"
        )
    return summary


def movielens_topic(ctx: Context) -> tuple[Settings, int]:
    """A topic holding the MovieLens events (the replay benchmark's first topic if it ran)."""
    if "topic:movielens" not in ctx.cache:
        settings = ctx.fresh("movielens")
        data, count = movielens_data(ctx), movielens_count(ctx)
        ctx.log(f"producing {count:,} MovieLens events into {settings.events_topic}")
        produce(settings, movielens_events(ctx), count, items=data.items)
        ctx.cache["topic:movielens"] = (settings, count)
    return ctx.cache["topic:movielens"]


def synthetic_topic(ctx: Context, events: int) -> tuple[Settings, int]:
    """A topic holding `events` synthetic funnel events."""
    key = f"topic:synthetic:{events}"
    if key not in ctx.cache:
        settings = ctx.fresh(f"synthetic{events}")
        ctx.log(f"producing {events:,} synthetic events into {settings.events_topic}")
        ensure_topic(settings, settings.events_topic, settings.partitions)
        produce(settings, synthetic.events(synthetic_config(events)), events)
        ctx.cache[key] = (settings, events)
    return ctx.cache[key]


def drop_topic(ctx: Context, key: str) -> None:
    """Delete a cached topic that is no longer needed (big ones take disk)."""
    if key in ctx.cache:
        settings, _ = ctx.cache.pop(key)
        ctx.delete_topics(settings)
