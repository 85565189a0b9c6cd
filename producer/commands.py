"""`engage replay ...`: turn MovieLens logs or the synthetic funnel into the live event stream."""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import typer
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from engage.cli_support import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_SERVICES_DOWN,
    check_database_topic,
    console,
    fail,
    namespace_options,
    time_ms,
)
from engage.settings import get_settings
from producer.badrows import BadRowError
from producer.integrity import ChecksumError
from producer.pacing import Speed, parse_speed
from producer.replay import ReplaySummary

replay_app = typer.Typer(help="Replay logs into the events topic.", no_args_is_help=True)

SPEED_HELP = "max (no waiting), realtime, or N: event time runs N times faster than wall time."
PROGRESS_HELP = "Show a progress bar (only ever drawn on a terminal)."
RATE_HELP = "Send N events per second of wall time, whatever their event times (not with --speed)."
SKIP_HELP = "Pass over the first N events of the selection: resumes an interrupted replay."
#: The shell's exit code for a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def register(app: typer.Typer) -> None:
    app.add_typer(replay_app, name="replay")


def _pacing(speed: str, rate: float | None) -> tuple[Speed, str]:
    """The --speed, or --rate (they exclude each other), and how the summary names it."""
    try:
        pace = parse_speed(speed)
    except ValueError as exc:
        raise fail(f"--speed: {exc}", EXIT_BAD_INPUT) from None
    if rate is None:
        return pace, str(pace)
    if not pace.is_max:
        raise fail("--speed and --rate: give one of them", EXIT_BAD_INPUT)
    if not 0 < rate < float("inf"):
        raise fail(
            f"--rate must be a number of events per second > 0, not {rate:g}", EXIT_BAD_INPUT
        )
    return pace, f"{rate:g} events/s"


def _at_least(value: int | None, minimum: int, option: str) -> None:
    if value is not None and value < minimum:
        raise fail(f"{option} must be at least {minimum}, not {value}", EXIT_BAD_INPUT)


@contextmanager
def _stop_on_ctrl_c() -> Iterator[threading.Event]:
    """Ctrl-C sets the event: the replay stops after the event in flight, waits for what it
    sent to be acknowledged and says where to resume. A second Ctrl-C interrupts at once."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(send: Callable[[threading.Event], ReplaySummary]) -> ReplaySummary:
    """Run a replay, turning unreachable servers into one clear line and exit code 3."""
    settings = get_settings()
    check_database_topic(settings)
    try:
        with _stop_on_ctrl_c() as stop:
            return send(stop)
    except KafkaError as exc:
        raise fail(
            f"Kafka at {settings.kafka_bootstrap_servers} is not usable: {exc!r}",
            EXIT_SERVICES_DOWN,
        ) from None
    except redis.exceptions.ConnectionError as exc:
        raise fail(
            f"Redis at {settings.redis_url} is not reachable: {exc}", EXIT_SERVICES_DOWN
        ) from None


def _report(
    summary: ReplaySummary, as_json: bool, extra: dict[str, object], limit: int | None = None
) -> None:
    """Print the summary (table or one JSON object); exit 1 if any event was not delivered,
    130 (with where to resume) if Ctrl-C stopped it."""
    if as_json:
        print(json.dumps({**summary.as_dict(), **extra}))
    else:
        table = Table("replay", "", show_header=False)
        for key, value in {**extra, **summary.as_dict()}.items():
            if key in {"errors", "bad_row_examples"} or (
                key in {"interrupted", "resume_skip"} and not summary.interrupted
            ):
                continue
            shown = f"{value:,}" if type(value) in (int, float) else str(value)
            table.add_row(key, shown)
        Console().print(table)
        for row in summary.bad_row_examples:
            console.print(f"[yellow]bad row[/] {row}", highlight=False)
        for error in summary.errors:
            console.print(f"[red]delivery error[/] {error}", highlight=False)
    if summary.interrupted:
        handed = summary.sent + summary.failed
        rest = f" --limit {limit - handed}" if limit is not None else ""
        console.print(
            f"interrupted: sent {summary.sent:,} events to {summary.topic}"
            + (f" ({summary.failed:,} more not delivered)" if summary.failed else "")
            + f"; to resume, run the same command with --skip {summary.resume_skip}{rest}",
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    if not summary.ok:
        raise fail(
            f"{summary.failed:,} of {summary.sent + summary.failed:,} events were not delivered",
            EXIT_FAILURE,
        )


@replay_app.command("movielens")
@namespace_options()
def replay_movielens(
    path: Path | None = typer.Option(
        None,
        "--path",
        help="Folder or official zip. Default: ENGAGE_MOVIELENS_DIR, the shared copy, "
        "else download (sha256-checked) into the cache.",
    ),
    speed: str = typer.Option("max", "--speed", help=SPEED_HELP),
    rate: float | None = typer.Option(None, "--rate", metavar="EVENTS_PER_S", help=RATE_HELP),
    limit: int | None = typer.Option(None, "--limit", help="Send at most N events."),
    skip: int = typer.Option(0, "--skip", help=SKIP_HELP),
    since: str | None = typer.Option(None, "--since", help="Only events at or after (ISO)."),
    until: str | None = typer.Option(None, "--until", help="Only events before (ISO)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad input row."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
) -> None:
    """Replay ml-latest-small ratings and tags in event-time order; item metadata to Redis."""
    from producer import movielens  # pandas: imported by the commands that need it
    from producer.replay import ReplayOptions, replay

    settings = get_settings()
    (pace, pacing), since_ms = _pacing(speed, rate), time_ms(since, "--since")
    until_ms = time_ms(until, "--until")
    _at_least(limit, 0, "--limit")
    _at_least(skip, 0, "--skip")
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise fail("--since must be earlier than --until", EXIT_BAD_INPUT)
    if path is not None and not path.exists():
        raise fail(f"--path: {path} does not exist", EXIT_BAD_INPUT)
    source = path if path is not None else movielens.default_path(settings)
    try:
        data = movielens.load(source, settings.cache_dir, strict=strict)
    except (movielens.DatasetNotFound, movielens.DatasetError) as exc:
        raise fail(str(exc), EXIT_BAD_INPUT) from None
    except (ChecksumError, BadRowError) as exc:
        raise fail(str(exc)) from None
    except urllib.error.URLError as exc:
        raise fail(
            f"cannot download {movielens.URL} ({exc.reason}); "
            "pass --path or set ENGAGE_MOVIELENS_DIR"
        ) from None
    except OSError as exc:
        raise fail(f"cannot read the MovieLens data: {exc}") from None
    summary = _run(
        lambda stop: replay(
            data.events(since_ms, until_ms),
            settings,
            ReplayOptions(
                items=data.items,
                limit=limit,
                speed=pace,
                rate=rate,
                skip=skip,
                total=data.count_between(since_ms, until_ms),
                bad_rows=data.bad_rows.count,
                progress=progress and not as_json,
            ),
            stop=stop,
        )
    )
    summary.bad_row_examples = [str(row) for row in data.bad_rows.examples]
    extra = {"source": str(data.folder), "verified": ",".join(data.verified) or "-"}
    _report(summary, as_json, {**extra, "speed": pacing}, limit)


@replay_app.command("synthetic")
@namespace_options()
def replay_synthetic(
    users: int = typer.Option(1000, "--users", help="How many simulated users."),
    days: int = typer.Option(7, "--days", help="How many days of event time."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same events (byte for byte)."),
    truth_file: Path | None = typer.Option(
        None,
        "--truth-file",
        help="Write each user's hidden intent and outcome (.csv/.json/.jsonl).",
    ),
    speed: str = typer.Option("max", "--speed", help=SPEED_HELP),
    rate: float | None = typer.Option(None, "--rate", metavar="EVENTS_PER_S", help=RATE_HELP),
    limit: int | None = typer.Option(None, "--limit", help="Send at most N events."),
    skip: int = typer.Option(0, "--skip", help=SKIP_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help=PROGRESS_HELP),
    drift_feature: str | None = typer.Option(
        None,
        "--drift-feature",
        metavar="NAME",
        help="Shift one input's distribution from the middle of event time on (a drift "
        "test): account_balance (x20, moves ctx_log_balance), browsing_depth (+10, ctx_depth) "
        "or device (all mobile, ctx_mobile); the feature names work too.",
    ),
) -> None:
    """Replay a seeded product funnel (sessions, pricing, demos, signups, bookings, bots)."""
    from producer import synthetic
    from producer.replay import ReplayOptions, replay

    settings = get_settings()
    pace, pacing = _pacing(speed, rate)
    _at_least(skip, 0, "--skip")
    _at_least(users, 1, "--users")
    _at_least(days, 1, "--days")
    _at_least(limit, 0, "--limit")
    try:
        config = synthetic.SyntheticConfig(users=users, days=days, seed=seed, drift=drift_feature)
    except ValueError as exc:
        raise fail(f"--drift-feature: {exc}", EXIT_BAD_INPUT) from None
    extra: dict[str, object] = {"source": f"synthetic seed={seed} users={users} days={days}"}
    if drift_feature is not None:
        extra["drift"] = f"{synthetic.drift_field(drift_feature)} from {config.drift_from_ms}"
    if truth_file is not None:
        try:
            synthetic.write_truth(config, truth_file)
        except OSError as exc:
            raise fail(f"--truth-file: cannot write {truth_file}: {exc}", EXIT_BAD_INPUT) from None
        extra["truth_file"] = str(truth_file)
    summary = _run(
        lambda stop: replay(
            synthetic.events(config),
            settings,
            ReplayOptions(
                items=synthetic.synthetic_item_meta(),
                limit=limit,
                speed=pace,
                rate=rate,
                skip=skip,
                progress=progress and not as_json,
            ),
            stop=stop,
        )
    )
    _report(summary, as_json, {**extra, "speed": pacing}, limit)
