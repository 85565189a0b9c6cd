"""`engage score`, `engage top` and `engage watch`: what people ask the system day to day."""

from __future__ import annotations

import contextlib
import csv
import json
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import redis
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engage.cli_support import (
    EXIT_BAD_INPUT,
    EXIT_NOT_FOUND,
    check_database_topic,
    console,
    fail,
    kafka_down_message,
    kafka_reachable,
    namespace_options,
    services_down_exits,
)
from engage.limits import TOP_N_MAX, TOP_N_MIN, id_problem
from engage.redis_client import Client, connect
from engage.settings import Settings, get_settings
from features import keys
from scoring.lookup import UnknownUser, current_score, score_request, top_users
from scoring.reason_words import worded
from scoring.score_record import ServedScore

out = Console()
CSV_FIELDS = ["rank", "user_id", "score", "rule_score", "label", "propensity"]


def _redis(settings: Settings) -> Client:
    with services_down_exits(settings):  # a Cluster client connects when it is built,
        client = connect(settings, socket_connect_timeout=2)  # a single node's on the PING
        client.ping()
    return client


def check_id(value: str, what: str) -> None:
    """Exit 2 for an id the API would refuse too (engage/limits.py: the same limits)."""
    problem = id_problem(value)
    if problem is not None:
        raise fail(f"{what}: {problem}", EXIT_BAD_INPUT)


def model_reason_line(reason: dict[str, Any], digits: int = 3) -> Text:
    """A model reason as the terminal shows it: the contribution, green when it raises the
    probability and red when it lowers it, then the reason in words."""
    contribution = float(reason["contribution"])
    style = "green" if contribution > 0 else "red" if contribution < 0 else ""
    line = Text()
    line.append(f"{contribution:+.{digits}f}", style=style)  # the number only, not the words
    line.append(f"  {reason.get('text') or reason['feature']}")  # Text: never read as markup
    return line


def render_score(score: ServedScore) -> Table:
    table = Table(title=f"user {score.user_id}", show_header=False, title_justify="left")
    table.add_row("rule score", f"{score.rule_score:.1f}  ({score.label})")
    for reason in score.reasons:
        table.add_row("", f"+{reason['points']:.1f}  {reason['text']}")
    if score.propensity is None and score.model_status:
        domain = f" ({score.domain})" if score.domain else ""
        table.add_row("model", f"{score.model_status}{domain}: rule score only")
    elif score.propensity is None:
        table.add_row("model", "no model registered: rule score only")
    else:
        table.add_row("model propensity", f"{score.propensity:.3f}  ({score.model_version})")
        for reason in score.model_reasons:
            table.add_row("", model_reason_line(reason))
    updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(score.updated_at / 1000))
    table.add_row("updated", f"{updated} (after event {score.event_id})")
    return table


def score(
    user_id: str = typer.Argument(..., help="The user id, exactly as in the events."),
    item: str = typer.Option(None, "--item", help="Score this user-item pair at request time."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """A user's current rule and model scores with reasons; --item scores a user-item pair."""
    check_id(user_id, "user id")
    if item is not None:
        check_id(item, "--item")
    settings = get_settings()
    client = _redis(settings)
    try:
        if item is None:
            served = current_score(client, user_id)
        else:
            from scoring.registry import ModelRegistry

            registry = ModelRegistry(settings, settings.feature_params)
            if registry.current_version() is None:
                raise fail("no model registered: run `engage train` first", EXIT_NOT_FOUND)
            scored = score_request(client, registry.load(), settings.feature_params, user_id, item)
    except UnknownUser as exc:
        raise fail(str(exc), EXIT_NOT_FOUND) from exc
    if item is None:
        if as_json:
            print(json.dumps(served.as_dict()))
        else:
            out.print(render_score(served))
        return
    result: dict[str, Any] = scored.__dict__
    if as_json:
        print(json.dumps(result))
    elif result["probability"] is None:
        out.print(f"P(engaged | {user_id}, {item}): {result['model_status']} "
                  f"(model {result['model_version']})")  # fmt: skip
        for warning in result["warnings"]:
            console.print(f"[yellow]note:[/] {warning}", highlight=False)
    else:
        out.print(f"P(engaged | {user_id}, {item}) = {result['probability']:.3f} "
                  f"(model {result['model_version']})")  # fmt: skip
        for reason in result["reasons"]:
            out.print(Text("  ").append_text(model_reason_line(reason)))
        for warning in result["warnings"]:
            console.print(f"[yellow]note:[/] {warning}", highlight=False)


def top(
    n: int = typer.Argument(10, min=TOP_N_MIN, max=TOP_N_MAX, help="How many users."),
    label: str = typer.Option(
        None, "--label", help="Only users with this label (high/medium/low)."
    ),
    by: str = typer.Option("rule", "--by", help="Rank by 'rule' score or 'model' propensity."),
    csv_path: Path = typer.Option(None, "--csv", help="Also write the list to this CSV file."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The top N users by score, from the leaderboard."""
    if by not in ("rule", "model"):
        raise fail("--by must be 'rule' or 'model'", 2)
    if label is not None and label not in ("high", "medium", "low"):
        raise fail("--label must be high, medium or low", 2)
    if csv_path is not None and not csv_path.parent.is_dir():  # before asking Redis anything
        raise fail(f"--csv: cannot write {csv_path}: no folder {csv_path.parent}", EXIT_BAD_INPUT)
    rows = top_users(_redis(get_settings()), n, by=by, label=label)
    if csv_path is not None:
        try:
            with open(csv_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        except OSError as exc:  # a directory, no permission, disk full
            raise fail(f"--csv: cannot write {csv_path}: {exc.strerror}", EXIT_BAD_INPUT) from None
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("rank", "user", "rule score", "label", "propensity", title=f"top {n} by {by}")
    for r in rows:
        prop = f"{r['propensity']:.3f}" if r["propensity"] is not None else "-"
        table.add_row(str(r["rank"]), r["user_id"], f"{r['rule_score']:.1f}", r["label"], prop)
    out.print(table)
    if not rows:
        console.print("no scored users yet (is the consumer running?)")


class WatchView:
    """The live table of `engage watch`: latest updates, rate and lag in the header."""

    def __init__(self, settings: Settings, user: str | None, label: str | None, rows: int = 15):
        self.settings, self.user, self.label = settings, user, label
        self.recent: deque[dict[str, Any]] = deque(maxlen=rows)
        self.previous: dict[str, float] = {}
        self.seen = 0
        # Set by StatsPoller. None: not measured (yet, or Kafka is down): shown as "-", never 0.
        self.rate: float | None = None
        self.lag: int | None = None
        self.kafka_up: bool | None = None  # None until the first check

    def add(self, update: dict[str, Any]) -> bool:
        """Take one update; False when the filters leave it out."""
        user = update["user_id"]
        if (self.user is not None and user != self.user) or (
            self.label is not None and update["rule"]["label"] != self.label
        ):
            return False
        model = update.get("model")
        for key in ("propensity_reasons", "interaction_reasons"):  # in words, as shown
            if model and key in model:
                model[key] = worded(model[key])
        score = update["rule"]["score"]
        update["delta"] = score - self.previous.get(user, score)
        self.previous[user] = score
        self.recent.appendleft(update)
        self.seen += 1
        return True

    def header(self) -> Text:
        rate = "-" if self.rate is None else f"{self.rate:,.0f}"
        lag = "-" if self.lag is None else f"{self.lag:,}"
        header = Text(f"events/s {rate}   lag {lag}   updates shown {self.seen:,}")
        if self.kafka_up is False:
            kafka = self.settings.kafka_bootstrap_servers
            header.append(f"   Kafka DOWN at {kafka}: lag unknown", style="bold red")
        elif self.kafka_up is None:
            header.append("   (checking Kafka)", style="dim")
        return header

    def render(self) -> Group:
        header = self.header()
        table = Table("user", "rule", "label", "model p", "change", "top reason",
                      "top model reason")  # fmt: skip
        for u in self.recent:
            model = u.get("model") or {}
            reasons = u["rule"]["reasons"]
            model_reasons = model.get("propensity_reasons") or []
            table.add_row(
                Text(u["user_id"]),  # Text: ids are shown as given, never as markup
                f"{u['rule']['score']:.1f}",
                u["rule"]["label"],
                f"{model['propensity']:.3f}"
                if "propensity" in model
                else model.get("skipped", "-"),
                f"{u['delta']:+.1f}",
                Text(reasons[0]["text"] if reasons else ""),
                model_reason_line(model_reasons[0], digits=2) if model_reasons else Text("-"),
            )
        return Group(header, table)


class StatsPoller:
    """Rate and lag for the view, measured once a second in a thread: when Kafka does not
    answer, each check waits up to KAFKA_PROBE_S, and the live view must not freeze meanwhile.
    Kafka down is shown as down, never as a lag of 0."""

    def __init__(self, settings: Settings, view: WatchView, every_s: float = 1.0,
                 report: bool = False) -> None:  # fmt: skip
        self.settings, self.view, self.every_s, self.report = settings, view, every_s, report
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="watch-stats", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _measure(self) -> dict[str, Any] | None:
        """collect_stats, or None when Kafka does not answer (or stops answering midway:
        collect_stats then reports no partitions, which must not read as lag 0)."""
        from consumer.stats import collect_stats

        if not kafka_reachable(self.settings):
            return None
        stats = collect_stats(self.settings)
        if not stats["partitions"] and not kafka_reachable(self.settings):
            return None
        return stats

    def _run(self) -> None:
        view, last = self.view, None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                stats = self._measure()
            except (redis.RedisError, OSError):  # Redis hiccup: keep the last figures
                stats = None if view.kafka_up is False else {}
            if stats is None:
                self._kafka(False)
                view.rate = view.lag = last = None
            elif stats:
                self._kafka(True)
                processed = stats["processed"] + stats["dead_lettered"]
                now = time.monotonic()
                if last is not None:
                    view.rate = (processed - last[1]) / max(now - last[0], 1e-3)
                last, view.lag = (now, processed), stats["total_lag"]
            self.stopping.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def _kafka(self, up: bool) -> None:
        was, self.view.kafka_up = self.view.kafka_up, up
        if self.report and was is not up and (was is not None or not up):
            servers = self.settings.kafka_bootstrap_servers
            if up:
                console.print(f"Kafka at {servers} answers again", highlight=False)
            else:
                console.print(f"[bold red]warning:[/] {kafka_down_message(self.settings)}: "
                              "lag unknown", highlight=False)  # fmt: skip


def follow(
    settings: Settings,
    client: Client,
    view: WatchView,
    seconds: float | None,
    json_lines: bool = False,
) -> None:
    """Feed `view` from the scores channel (and rate and lag, StatsPoller) for `seconds`."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.scores_channel(settings.events_topic))
    stop_at = time.monotonic() + seconds if seconds else float("inf")
    poller = StatsPoller(settings, view, report=json_lines)
    live = None if json_lines else Live(view.render(), console=out, refresh_per_second=4)
    try:
        poller.start()
        if live is not None:
            live.start()
        while time.monotonic() < stop_at:
            message = pubsub.get_message(timeout=0.25)
            if message is not None:
                for update in orjson.loads(message["data"]):
                    if view.add(update) and json_lines:
                        print(json.dumps(update), flush=True)
            if live is not None:
                live.update(view.render())
    finally:
        poller.stop()
        if live is not None:
            live.stop()
        pubsub.close()


def watch(
    user: str = typer.Option(None, "--user", help="Only this user."),
    label: str = typer.Option(None, "--label", help="Only updates with this label."),
    duration: float = typer.Option(None, "--duration", help="Stop after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print updates as JSON lines instead."),
) -> None:
    """Follow score updates live (Redis pub/sub), with events/s and consumer lag."""
    if label is not None and label not in ("high", "medium", "low"):
        raise fail("--label must be high, medium or low", 2)
    if user is not None:
        check_id(user, "--user")
    settings = get_settings()
    client = _redis(settings)
    check_database_topic(settings)
    with contextlib.suppress(KeyboardInterrupt):
        follow(settings, client, WatchView(settings, user, label), duration, json_lines=as_json)


def register(app: typer.Typer) -> None:
    app.command("score")(namespace_options(kafka=False, topic=False)(score))
    app.command("top")(namespace_options(kafka=False, topic=False)(top))
    app.command("watch")(namespace_options()(watch))
