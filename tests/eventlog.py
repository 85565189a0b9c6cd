"""A small mixed event log for pipeline tests: funnel sessions and MovieLens-like ratings.

Made here, deterministic for a seed, so tests need no external data. Includes ids with `:`,
`{`, `}` and spaces, explicit and implicit sessions, bounces, tags and genre-tagged items.
"""

from __future__ import annotations

import os
import random

from engage import kafka_clients
from engage.redis_client import connect
from engage.settings import Settings
from features import keys
from features.events import Event
from features.items import ItemMeta

GENRE_POOL = ["Action", "Comedy", "Drama", "Sci-Fi", "Romance", "Thriller"]
FUNNEL_PATH = [
    "page_view",
    "page_view",
    "pricing_view",
    "demo_request",
    "signup",
    "calendar_booking",
]


def make_log(
    n_users: int = 60, events_per_user: int = 50, seed: int = 7
) -> tuple[list[dict], dict]:
    """Events (as dicts, per-user order = list order) and item genres."""
    rng = random.Random(seed)
    genres = {f"m{i}": rng.sample(GENRE_POOL, rng.randint(0, 3)) for i in range(40)}
    events: list[dict] = []
    base = 1_700_000_000_000
    for u in range(n_users):
        uid = [f"user{u}", f"weird:{u}", f"{{brace}}{u}", f"sp ace {u}"][u % 4]
        ts = base + rng.randint(0, 86_400_000)
        funnel = u % 2 == 0
        session = 0
        for n in range(events_per_user):
            ts += rng.choice([5_000, 60_000, 600_000, 3_600_000, 86_400_000])
            eid = f"t:{seed}:{u}:{n}"
            if funnel:
                if rng.random() < 0.3:
                    session += 1
                step = FUNNEL_PATH[min(int(rng.expovariate(0.8)), len(FUNNEL_PATH) - 1)]
                e = {"event_id": eid, "user_id": uid, "ts": ts, "event_type": step,
                     "item_id": f"page{rng.randint(0, 5)}", "session_id": f"s{session}",
                     "context": {"device": rng.choice(["mobile", "desktop"]),
                                 "account_balance": rng.randint(0, 5000)},
                     "source": "synthetic"}  # fmt: skip
            elif rng.random() < 0.1:
                e = {"event_id": eid, "user_id": uid, "ts": ts, "event_type": "tag",
                     "item_id": f"m{rng.randint(0, 39)}", "context": {"tag": "fun"},
                     "source": "movielens"}  # fmt: skip
            else:
                e = {"event_id": eid, "user_id": uid, "ts": ts, "event_type": "rating",
                     "item_id": f"m{rng.randint(0, 39)}", "value": rng.randint(1, 10) / 2,
                     "source": "movielens"}  # fmt: skip
            events.append(e)
    return events, genres


def engage_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for an `engage` subprocess that should use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env.update(
        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        ENGAGE_REDIS_URL=settings.redis_url,
        ENGAGE_EVENTS_TOPIC=settings.events_topic,
        ENGAGE_SCORES_TOPIC=settings.scores_topic,
        ENGAGE_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        ENGAGE_DATA_DIR=str(settings.data_dir),
        ENGAGE_KAFKA_CLIENT=settings.kafka_client,
    )
    env.update(extra)
    return env


def publish_log(
    settings: Settings, events: list[dict], genres: dict, extra: list[tuple] = ()
) -> int:
    """Item metadata to Redis, events (and any extra raw (key, value) messages) to Kafka."""
    client = connect(settings)
    for item, gs in genres.items():
        client.hset(keys.item_meta_key(item), mapping=ItemMeta(tuple(gs)).to_hash())
    kafka_clients.ensure_topic(settings, settings.events_topic)
    producer = kafka_clients.producer(settings)
    for e in events:
        producer.send(settings.events_topic, key=e["user_id"].encode(), value=Event(**e).to_json())
    for key, value in extra:
        producer.send(settings.events_topic, key=key, value=value)
    producer.flush()
    producer.close()
    return len(events) + len(extra)


def in_parts(events: list[dict], n: int) -> list[list[dict]]:
    """The log cut into n contiguous parts, each user's events still in order. A test that must
    stop a consumer midway publishes the next part only when it is ready for it: the log cannot
    run out first, however fast the consumer has become."""
    size = -(-len(events) // n)
    return [events[i : i + size] for i in range(0, len(events), size)]


def consume_log(settings: Settings, group: str) -> int:
    """One in-process consumer over everything on `settings`' topic (3 s idle ends it); how
    many events it applied."""
    from consumer.runner import StreamConsumer

    consumer = StreamConsumer(settings, group=group)
    try:
        return consumer.run(idle_exit_s=3).processed
    finally:
        consumer.close()
