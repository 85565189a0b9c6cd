"""Re-make docs/dashboard.png: the dashboard during a short MovieLens run, in its own namespace.

    .venv/bin/python docs/make_dashboard_png.py            # or: make docs-dashboard

What it does, on the running Kafka and Redis (`engage stack up`, or the ENGAGE_* settings):

1. Model: uses the model registered in `ENGAGE_DATA_DIR` when that variable is set and holds
   one; otherwise trains one on ml-latest-small into a temporary folder (`engage train`, about a
   minute), so the project's own registry (`.data/models`) is never written.
2. Namespace: fresh topics `engage.docs.<time>.events` / `.scores` / `.deadletter` and Redis
   database `--redis-db` (11), which must be empty (`--flush` empties it first).
3. Replays the first `--events` MovieLens events at `--rate` events/s while a consumer scores
   them, opens the dashboard (the API in a thread) in headless Chromium (tests/browser.py:
   Debian's chromium and chromium-driver) on the leading user, and saves the screenshot while
   events still arrive.
4. Stops the consumer and the producer, deletes the three topics and empties the database
   (`--keep` leaves them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consumer.runner import StreamConsumer  # noqa: E402
from engage.api import create_app  # noqa: E402
from engage.redis_client import connect  # noqa: E402
from engage.settings import Settings  # noqa: E402
from features import keys  # noqa: E402
from producer import movielens  # noqa: E402
from producer.pacing import throttle  # noqa: E402
from producer.replay import ReplayOptions, replay  # noqa: E402
from scoring.lookup import top_users  # noqa: E402
from scoring.registry import ModelRegistry  # noqa: E402
from tests.browser import chrome, serve_in_thread  # noqa: E402


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def _model(settings: Settings, data: Path) -> Settings:
    """Settings whose data dir holds a registered model: ENGAGE_DATA_DIR's, else a new one."""
    if "ENGAGE_DATA_DIR" in os.environ:
        if ModelRegistry(settings, settings.feature_params).current_version() is not None:
            return settings
        folder = settings.data_dir
    else:
        folder = Path(tempfile.mkdtemp(prefix="engage-docs-"))
    print(f"training a model on {data} into {folder} (engage train, about a minute)")
    argv = [sys.executable, "-m", "engage", "train", "--movielens", str(data), "--bootstrap", "100"]
    env = {**os.environ, "ENGAGE_DATA_DIR": str(folder)}
    subprocess.run(argv, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return settings.model_copy(update={"data_dir": folder})


def docs_run(redis_db: int, flush: bool) -> tuple[Settings, Any, Any]:
    """The settings of a docs run (a model as `_model` finds it, fresh `engage.docs.<time>.*`
    topics, Redis database `redis_db` emptied: refused if it holds keys, unless `flush`), its
    Redis client and the MovieLens source."""
    base = Settings()
    data = movielens.default_path(base)
    if data is None:
        raise SystemExit("no MovieLens copy: set ENGAGE_MOVIELENS_DIR to ml-latest-small")
    run = time.strftime("%Y%m%d-%H%M%S")
    topics = {
        "events_topic": f"engage.docs.{run}.events",
        "scores_topic": f"engage.docs.{run}.scores",
        "dead_letter_topic": f"engage.docs.{run}.deadletter",
    }
    settings = _model(base, data).with_redis_db(redis_db).model_copy(update=topics)
    client = connect(settings)
    if client.dbsize() and not flush:
        raise SystemExit(f"Redis database {redis_db} is not empty: choose another "
                         "(--redis-db) or empty it (--flush)")  # fmt: skip
    client.flushdb()
    return settings, client, movielens.load(data, settings.cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--events", type=int, default=15_000, help="MovieLens events to replay")
    parser.add_argument("--rate", type=float, default=1_500, help="events per second")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the database")
    args = parser.parse_args()

    settings, client, source = docs_run(args.redis_db, args.flush)

    stop = threading.Event()
    consumer = StreamConsumer(settings, group=f"{settings.events_topic}.docs")
    consumer_thread = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    options = ReplayOptions(items=source.items, limit=args.events, progress=False)
    producer_thread = threading.Thread(
        target=replay,
        args=(throttle(source.events(), args.rate, stop), settings, options),
        name="replay",
        daemon=True,
    )
    consumer_thread.start()
    producer_thread.start()
    try:
        stats = keys.stats_key(settings.events_topic)
        processed = lambda: int(client.hget(stats, "processed") or 0)  # noqa: E731
        _wait(lambda: processed() >= args.events // 2, 120, "half of the events to be scored")
        leader = top_users(client, 1)[0]["user_id"]
        with serve_in_thread(create_app(settings)) as url, chrome(1400, 1000) as page:
            page.get(f"{url}/?user={leader}")
            _wait(lambda: len(page.find_elements("css selector", "#leaderboard tr")) >= 20, 30,
                  "the leaderboard")  # fmt: skip
            _wait(lambda: int(page.find_element("id", "timeline").get_attribute("data-points")
                              or 0) > 3, 30, "the user's timeline")  # fmt: skip
            _wait(lambda: int(page.find_element("id", "updates").get_attribute("data-count")
                              or 0) > 50, 30, "live updates")  # fmt: skip
            time.sleep(1.5)  # let the last flash of an updated row fade
            page.save_screenshot(str(args.out))
        print(f"wrote {args.out} (user {leader}, {processed():,} events scored)")
    finally:
        stop.set()
        producer_thread.join(timeout=15)
        consumer.stopping = True
        consumer_thread.join(timeout=30)
        consumer.close()
        if not args.keep:
            _clean(settings, client)


def _clean(settings: Settings, client) -> None:
    from engage.kafka_clients import admin_client

    admin = admin_client(settings)
    try:
        topics = [settings.events_topic, settings.scores_topic, settings.dead_letter_topic]
        admin.delete_topics([t for t in topics if t in set(admin.list_topics())])
    finally:
        admin.close()
    client.flushdb()


if __name__ == "__main__":
    main()
