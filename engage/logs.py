"""Logging for the long-running commands: JSON lines for log collectors, readable lines for a
person at a terminal. Either way a URL's password never reaches the log."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson
from rich.console import Console

from engage.redact import redact_text

LogFormat = Literal["auto", "human", "json"]

#: kafka-python warns whenever one step of its I/O loop, or a rebalance listener, takes more
#: than 0.1 s ("... is blocking the event loop ...", "Sync listeners block the consumer event
#: loop"): on a loaded machine that is every few seconds, and none of it needs acting upon.
#: Such warnings are dropped unless asked for (`engage consume --verbose`).
EVENT_LOOP_NOISE = "event loop"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),  # a URL in a message keeps no password
        }
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class RedactingFormatter(logging.Formatter):
    """The readable format, traceback included, with URL passwords masked as in JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def quiet_event_loop_warnings(record: logging.LogRecord) -> bool:
    """False (drop) for kafka-python's slow-step warnings, described at EVENT_LOOP_NOISE."""
    return not (record.name.startswith("kafka") and EVENT_LOOP_NOISE in record.getMessage())


def json_lines_for(log_format: LogFormat) -> bool:
    """JSON unless asked for readable lines, or (auto) unless stderr is a terminal: what a
    collector reads is never a terminal, what a person reads usually is."""
    if log_format == "auto":
        return not sys.stderr.isatty()
    return log_format == "json"


def setup_logging(
    level: str = "INFO",
    json_lines: bool = True,
    verbose: bool = False,
    console: Console | None = None,
) -> None:
    """Route every log record to stderr, as JSON lines or as readable lines on `console` (a
    rich console: lines then print above a live progress line instead of through it)."""
    handler: logging.Handler
    if json_lines:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=console or Console(stderr=True),
            show_path=False,
            markup=False,
            log_time_format="%H:%M:%S",
        )
        handler.setFormatter(RedactingFormatter("%(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(quiet_event_loop_warnings)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
