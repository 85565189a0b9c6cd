"""What every `engage` subcommand shares: the error console and the exit codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

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


def require_kafka(settings: Settings) -> None:
    """Exit 3 with one line naming Kafka unless a broker answers within KAFKA_PROBE_S."""
    if not kafka_reachable(settings):
        raise fail(kafka_down_message(settings), EXIT_SERVICES_DOWN)
