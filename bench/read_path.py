"""The batch read of users a consumer's local copy lacks, from spans and by the general path.

    .venv/bin/python -m bench.read_path [--events 1000000] [--rounds 5]

What it measures: `RedisBatch.load` on the warm path (a trusted store, as one consumer of
every partition), the consumer thread's CPU a user read. A claimed private Redis database is
filled with the state a consumer leaves after the first 60% of N synthetic events (batches of
4,000 through the store, the rules only), then the users and items of the next 50 batches are
read into fresh tables again and again, the two ways in turns: the replies as bytes and spans
(`consumer/resp_replies.py`, `RedisBatch._load_spans`) and as hiredis's objects (the general
path: `resp_replies.reads_raw` answering False). Both see the same Redis, the same users, the
same machine minute. Needs the stack (Kafka is not used).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import time
from typing import Any

from bench.common import open_context
from bench.sources import synthetic_config
from consumer import resp_replies
from consumer.batch import BatchScorer, Incoming
from consumer.local_state import LocalState
from consumer.store import RedisStateStore
from engage.partitioning import positive_murmur2
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from producer import synthetic
from scoring.rules import load_scorers

BATCH, PARTITIONS, READ_BATCHES = 4_000, 6, 50


def _batches(events: int) -> tuple[list[list[Incoming]], list[Any]]:
    """The first 60% of the log in batches (to fill Redis), and the next READ_BATCHES'
    (users' items, items) as a batch asks `load` for them."""
    log = synthetic.events(synthetic_config(events))
    offsets: dict[int, int] = {}
    fill: list[list[Incoming]] = []
    reads: list[Any] = []
    for _ in range(int(0.6 * events) // BATCH + READ_BATCHES):
        chunk: list[Incoming] = []
        for event in itertools.islice(log, BATCH):
            p = positive_murmur2(event.user_id.encode()) % PARTITIONS
            offsets[p] = offsets.get(p, -1) + 1
            chunk.append(Incoming(event, p, offsets[p], 0))
        if len(fill) * BATCH < 0.6 * events:
            fill.append(chunk)
            continue
        user_items: dict[str, set[str]] = {}
        for i in chunk:
            user_items.setdefault(i.event.user_id, set()).update(
                [i.event.item_id] if i.event.item_id else []
            )
        reads.append((user_items, {i.event.item_id for i in chunk if i.event.item_id}))
    return fill, reads[:READ_BATCHES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fill, reads = _batches(args.events)
    with open_context() as ctx:
        client = ctx.redis()
        store = RedisStateStore(client, "read-path", 3600, LocalState(5_000, 200_000))
        store.own(True)
        scorer = BatchScorer(load_scorers(None), log_features=False)
        for chunk in fill:
            batch = store.begin({i.partition for i in chunk})
            state = store.state(FeatureParams(), AdmissionPolicy())
            user_items = {i.event.user_id: set[str]() for i in chunk}
            for i in chunk:
                if i.event.item_id:
                    user_items[i.event.user_id].add(i.event.item_id)
            items = {i.event.item_id for i in chunk if i.event.item_id}
            batch.commit(scorer.run(state, chunk, batch.load(state, user_items, items)).writes)

        def read_all() -> None:
            for user_items, items in reads:
                store.forget()  # (fresh tables: every user of the batch is read)
                batch = store.begin([])
                batch.load(store.state(FeatureParams(), AdmissionPolicy()), user_items, items)
                batch.abort()

        def general() -> None:
            real = resp_replies.reads_raw
            resp_replies.reads_raw = lambda connection: False
            try:
                read_all()
            finally:
                resp_replies.reads_raw = real

        users = sum(len(user_items) for user_items, _ in reads)
        timings: dict[str, list[float]] = {"spans": [], "general": []}
        read_all()  # (compiled, warmed)
        general()
        gc.collect()
        for _ in range(args.rounds):
            for name, run in (("general", general), ("spans", read_all)):
                started = time.thread_time()
                run()
                timings[name].append((time.thread_time() - started) / users * 1e6)
        client.close()
    print(f"{len(reads)} batches, {users / len(reads):,.0f} users a batch read "
          f"({args.events:,} synthetic events, the state of their first 60%)")  # fmt: skip
    for name, values in timings.items():
        shown = " / ".join(f"{v:.2f}" for v in values)
        print(f"{name:8s} median {statistics.median(values):.2f} us a user read ({shown})")


if __name__ == "__main__":
    main()
