"""`engage demo`: the whole product in one command, on a project-started Kafka and Redis.

Starts the stack if needed, replays MovieLens (synthetic funnel data when no copy can be had,
and it says so) at a pace a person can follow, runs the consumer beside it, shows the live
score view, then prints the top users and one user's explained score.

The demo works in its own namespace, so it never touches real state: a fresh events topic per
run and its own Redis database (`settings.demo_redis_db`), emptied at the start.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterable

from rich.console import Console

from engage.redact import redact_url
from engage.redis_client import connect
from engage.settings import Settings
from features.events import Event

out = Console()


def demo_settings(settings: Settings) -> Settings:
    run = time.strftime("%Y%m%d-%H%M%S")
    return settings.with_redis_db(settings.demo_redis_db).model_copy(
        update={
            "events_topic": f"engage.demo.{run}.events",
            "scores_topic": f"engage.demo.{run}.scores",
            "dead_letter_topic": f"engage.demo.{run}.deadletter",
        }
    )


def pick_source(settings: Settings, limit: int) -> tuple[str, Iterable[Event], dict]:
    """MovieLens if a copy (or a download) is available, else the synthetic funnel."""
    from producer import movielens, synthetic

    try:
        data = movielens.load(movielens.default_path(settings), settings.cache_dir)
        return f"MovieLens ({data.folder})", data.events(), data.items
    except Exception as exc:  # no copy and no network: say so, and carry on with synthetic
        out.print(f"[yellow]MovieLens unavailable ({exc}); using synthetic funnel events.[/]")
        config = synthetic.SyntheticConfig(users=max(50, limit // 40), days=14, seed=1)
        return "synthetic funnel", synthetic.events(config), synthetic.synthetic_item_meta()


def _train_first(settings: Settings) -> None:
    """Train and register a model on MovieLens (`engage train`), when a copy is available."""
    from producer import movielens

    path = movielens.default_path(settings)
    if path is None:
        out.print("No model registered and no local MovieLens copy: rule scores only.")
        return
    out.print(f"No model registered yet: training one on {path} first (engage train).")
    argv = [sys.executable, "-m", "engage", "train", "--movielens", str(path)]
    if subprocess.run(argv, check=False).returncode != 0:
        out.print("[yellow]training failed; the demo goes on with rule scores only[/]")


def run_demo(settings: Settings, seconds: float, rate: float, train: bool) -> None:
    from consumer.runner import StreamConsumer
    from engage.score_commands import WatchView, follow, render_score
    from engage.stack import manager
    from producer.pacing import throttle
    from producer.replay import ReplayOptions, replay
    from scoring.lookup import current_score, top_users
    from scoring.registry import ModelRegistry

    out.rule("engage demo")
    for state in manager.up(settings):
        out.print(f"{state.name}: {state.address} ({state.origin})")
    registry = ModelRegistry(settings, settings.feature_params)
    if registry.current_version() is None and train:
        _train_first(settings)
    version = registry.current_version()
    out.print(f"model: {version or 'none (rule scores only)'}")

    demo = demo_settings(settings)
    client = connect(demo)
    client.flushdb()
    limit = int(seconds * rate)
    name, events, items = pick_source(demo, limit)
    out.print(f"replaying {limit:,} events of {name} at ~{rate:,.0f}/s into {demo.events_topic}")

    stop = threading.Event()
    consumer = StreamConsumer(demo, group=f"{demo.events_topic}.demo")
    consumer_thread = threading.Thread(target=consumer.run, daemon=True)
    producer_thread = threading.Thread(
        target=replay,
        args=(
            throttle(events, rate, stop),
            demo,
            ReplayOptions(items=items, limit=limit, progress=False),
        ),
        daemon=True,
    )
    consumer_thread.start()
    producer_thread.start()
    follow(demo, client, WatchView(demo, None, None, rows=12), seconds + 2)
    stop.set()
    producer_thread.join(timeout=10)
    time.sleep(1.0)
    consumer.stopping = True
    consumer_thread.join(timeout=20)

    out.rule("top users")
    leaders = top_users(client, 10)
    for row in leaders:
        prop = f"  p={row['propensity']:.3f}" if row["propensity"] is not None else ""
        out.print(f"{row['rank']:>3}. user {row['user_id']:<8} {row['rule_score']:5.1f} "
                  f"{row['label']}{prop}")  # fmt: skip
    if leaders:
        out.rule("one user's score, explained")
        out.print(render_score(current_score(client, leaders[0]["user_id"])))
    out.rule("next")
    env = f"ENGAGE_REDIS_URL={redact_url(demo.redis_url)} ENGAGE_EVENTS_TOPIC={demo.events_topic}"
    out.print(f"Ask it yourself:   {env} engage top 10 --label high")
    out.print(f"Dashboard and API: {env} engage serve   -> http://127.0.0.1:{settings.api_port}/")
