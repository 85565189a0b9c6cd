"""What every `engage` subcommand shares: the error console and the exit codes."""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from engage.redact import redact_text

if TYPE_CHECKING:
    from engage.settings import Settings

#: Exit codes: 0 ok, 1 failure, 2 bad arguments (typer's own), 3 services down, 4 not found.
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_SERVICES_DOWN = 3
EXIT_NOT_FOUND = 4

console = Console(stderr=True, soft_wrap=True)

#: How long a command waits for Kafka to answer a metadata request before calling it down
#: (kafka-python's own bootstrap timeout is 30 s, and some callers then carry on as if empty).
KAFKA_PROBE_S = 3.0


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one clear error line and return the Exit to raise. Passwords are masked: the
    line often names a server URL, and error output ends up in terminals, logs and CI."""
    console.print(f"[bold red]error:[/] {redact_text(message, _secrets())}", highlight=False)
    return typer.Exit(code)


def _secrets() -> list[str]:
    """The configured passwords, to mask wherever an error message might repeat them."""
    from engage.settings import get_settings

    try:
        settings = get_settings()
    except Exception:  # invalid settings are themselves being reported
        return []
    secrets = (settings.redis_password, settings.kafka_sasl_password)
    return [s.get_secret_value() for s in secrets if s is not None]


def time_ms(text: str | None, option: str) -> int | None:
    """An ISO date or date-time option to epoch ms (a time without a zone is taken as UTC)."""
    from datetime import UTC, datetime

    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise fail(
            f"{option}: not an ISO date or date-time: {text!r} (e.g. 2015-06-01T12:00:00Z)",
            EXIT_BAD_INPUT,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def kafka_down_message(settings: Settings) -> str:
    return (
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: no broker answered "
        f"(waited up to {KAFKA_PROBE_S:g} s for metadata)"
    )


def _bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    out = []
    for server in filter(None, (s.strip() for s in servers.split(","))):
        host, _, port = server.rpartition(":")
        if port.isdigit():
            out.append((host.strip("[]") or "127.0.0.1", int(port)))
    return out


def kafka_reachable(settings: Settings) -> bool:
    """Does a broker answer a metadata request within KAFKA_PROBE_S? When no bootstrap server
    even accepts a TCP connection, the answer is known at once, without that wait."""
    from engage.stack.probes import kafka_answers, port_open

    addresses = _bootstrap_addresses(settings.kafka_bootstrap_servers)
    if addresses and not any(
        port_open(host, port, timeout_s=KAFKA_PROBE_S) for host, port in addresses
    ):
        return False
    return kafka_answers(settings, timeout_s=KAFKA_PROBE_S)


@contextlib.contextmanager
def services_down_exits(settings: Settings, kafka: bool = False) -> Iterator[None]:
    """Redis (and with `kafka`, Kafka) unreachable inside the block: one line naming the
    server, exit 3 (the README's code), instead of a traceback. Other errors pass through;
    catch a command's own ones (a missing file is an OSError too) inside the block."""
    import redis

    try:
        yield
    except Exception as exc:
        if kafka and (type(exc).__module__.startswith("kafka") or isinstance(exc, TimeoutError)):
            # kafka-python: NoBrokersAvailable, KafkaTimeoutError, a metadata TimeoutError
            raise fail(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}",
                       EXIT_SERVICES_DOWN) from exc  # fmt: skip
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
            raise fail(
                f"cannot reach Redis at {settings.redis_url}: {exc}", EXIT_SERVICES_DOWN
            ) from exc
        raise


def require_kafka(settings: Settings) -> None:
    """Exit 3 with one line naming Kafka unless a broker answers within KAFKA_PROBE_S."""
    if not kafka_reachable(settings):
        raise fail(kafka_down_message(settings), EXIT_SERVICES_DOWN)


# -- namespaces: --bootstrap-server, --redis-url, --topic on every command that talks to servers

NAMESPACE_PANEL = "Servers and topic (default: the ENGAGE_* settings)"
#: A set in each Redis database: the events topics `engage consume` has applied into it.
#: Users and leaderboards are per database, so a second topic continues the first's users.
DATABASE_TOPICS_KEY = "engage:events-topics"


def _namespace_parameters(kafka: bool, topic: bool) -> list[inspect.Parameter]:
    """The options, declared once; each is the ENGAGE_* variable named in its help."""
    options = [
        ("kafka_bootstrap_servers", "--bootstrap-server", "HOST:PORT",
         "Kafka brokers, comma-separated (ENGAGE_KAFKA_BOOTSTRAP_SERVERS).", kafka),
        ("redis_url", "--redis-url", "URL",
         "Redis, its database included: redis://host:6379/7 (ENGAGE_REDIS_URL).", True),
        ("events_topic", "--topic", "TOPIC",
         "The events topic; unless set, its scores and dead-letter topics follow it "
         "(x.events: x.scores, x.deadletter) (ENGAGE_EVENTS_TOPIC).", topic),
    ]  # fmt: skip
    return [
        inspect.Parameter(
            f"namespace_{field}",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None, flag, metavar=metavar, help=text, rich_help_panel=NAMESPACE_PANEL
            ),
            annotation=str | None,
        )
        for field, flag, metavar, text, wanted in options
        if wanted
    ]


def namespace_options(
    *, kafka: bool = True, topic: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command with --redis-url (and --bootstrap-server, --topic): one definition
    for every command. What they name overrides the environment for the whole command (every
    get_settings() call in it), validated like the environment; none named changes nothing."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        extra = _namespace_parameters(kafka, topic)
        names = {p.name: p.name.removeprefix("namespace_") for p in extra}

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            given = {field: kwargs.pop(name, None) for name, field in names.items()}
            named = {field: value for field, value in given.items() if value is not None}
            if not named:
                return command(*args, **kwargs)
            from engage.settings import set_command_line

            set_command_line(named)
            try:
                check_settings()
                return command(*args, **kwargs)
            finally:
                set_command_line({})  # in-process callers (tests) get their settings back

        signature = inspect.signature(command, eval_str=True)
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *extra]
        )
        run.__annotations__ = {
            **typing.get_type_hints(command),
            **{p.name: p.annotation for p in extra},
        }
        return run

    return decorate


def check_settings() -> None:
    """Exit 2 with one line naming each bad ENGAGE_* value (or option). The values are not
    echoed: they may be passwords."""
    from pydantic import ValidationError

    from engage.settings import get_settings

    try:
        get_settings()
    except ValidationError as exc:
        problems = [f"ENGAGE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                    for e in exc.errors(include_url=False, include_input=False)]  # fmt: skip
        raise fail("invalid settings: " + "; ".join(problems), EXIT_BAD_INPUT) from None


def check_database_topic(settings: Settings, record: bool = False) -> None:
    """Warn (one line) when this Redis database holds users of another events topic; with
    `record`, note that this topic's users are now applied here (`engage consume`). Best
    effort: an unreachable Redis is the command's own error to report."""
    import redis

    from engage.redact import redact_url
    from engage.redis_client import connect
    from features.keys import leaderboard_key

    topic = settings.events_topic
    try:
        client = connect(settings, socket_connect_timeout=2)
        try:
            others = sorted(t.decode() for t in client.smembers(DATABASE_TOPICS_KEY))
            others = [t for t in others if t != topic]
            if others and client.exists(leaderboard_key("rule")):
                console.print(
                    f"[yellow]warning:[/] Redis {redact_url(settings.redis_url)} already holds "
                    f"users of events topic {', '.join(others)}: users and leaderboards are per "
                    f"database, so {topic} continues them (docs/faq.md: a new topic does not "
                    "isolate state)",
                    highlight=False,
                )
            if record:
                client.sadd(DATABASE_TOPICS_KEY, topic)
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return


def check_rules_file(settings: Settings) -> None:
    """A bad rules file is bad input: exit 2 naming the file and the line or field, found
    before any connection is tried (every command that scores: consume, explain, parity,
    demo)."""
    from scoring.rules import RulesError, load_scorers

    try:
        load_scorers(settings.rules_file)
    except RulesError as exc:
        raise fail(f"{exc} (ENGAGE_RULES_FILE)", EXIT_BAD_INPUT) from None
