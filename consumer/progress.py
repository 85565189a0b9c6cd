"""`engage consume` on a terminal: one live line of progress, and the end summary.

The line is redrawn by rich's Live on its own thread; the numbers it shows are stored by the
run loop's `on_batch` callback, on the loop's thread. The Kafka client is not thread-safe,
so the lag is read there too, from the high watermarks the last fetch brought (no request).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rich.table import Table
from rich.text import Text

from consumer.runner import RunSummary, StreamConsumer
from engage.output import table

#: The events/s shown is over about this many seconds: recent enough to follow a change of
#: pace, long enough not to flicker with every batch.
RATE_WINDOW_S = 5.0
#: No batch for this long: the line says idle (the rate of the last batch is stale by then).
IDLE_AFTER_S = 2.0


def partition_lag(runner: StreamConsumer) -> int | None:
    """Events behind the high watermarks of the last fetch, over the assigned partitions;
    None while a watermark is unknown (nothing fetched yet)."""
    total = 0
    for partition, applied in list(runner.positions.items()):
        high = runner.kafka.highwater(partition)
        if high is None:
            return None
        total += max(0, high - applied - 1)
    return total


class ProgressLine:
    """The live line: consumed, events/s, lag, dead-lettered."""

    def __init__(
        self,
        lag: Callable[[], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lag_of = lag
        self.clock = clock
        self.started = clock()
        self.recent: deque[tuple[float, int]] = deque()  # (time, events done) per batch
        self.line = "waiting for partitions and events"
        self.last_batch: float | None = None

    def on_batch(self, summary: RunSummary) -> None:
        """The run loop's callback after each committed batch: store the line to show."""
        now = self.clock()
        done = summary.processed + summary.dead_lettered
        self.recent.append((now, done))
        while len(self.recent) > 2 and now - self.recent[1][0] >= RATE_WINDOW_S:
            self.recent.popleft()
        since, before = self.recent[0]
        if len(self.recent) == 1:  # the first batch: its rate since the start
            since, before = self.started, 0
        rate = (done - before) / (now - since) if now > since else 0.0
        lag = self.lag_of()
        self.line = (
            f"consumed {summary.processed:,} · {rate:,.0f} events/s · "
            f"lag {'?' if lag is None else f'{lag:,}'} · "
            f"dead-lettered {summary.dead_lettered:,}"
        )
        self.last_batch = now

    def __rich__(self) -> Text:
        """What Live draws, a few times a second."""
        text = Text(self.line)
        if self.last_batch is not None and self.clock() - self.last_batch >= IDLE_AFTER_S:
            text.append(f" · idle {self.clock() - self.last_batch:.0f} s", style="dim")
        return text


def summary_table(result: dict[str, Any]) -> Table:
    """The run summary of `engage consume` for a person (`--json` gives the same fields)."""
    rows = table(title="consumed", show_header=False)
    rows.add_column(justify="left")
    rows.add_column(justify="right")
    rows.add_row("processed", f"{result['processed']:,}")
    rows.add_row("dead-lettered", f"{result['dead_lettered']:,}")
    rows.add_row("batches", f"{result['batches']:,}")
    rows.add_row("fenced batches", f"{result['fenced']:,}")
    rows.add_row("seconds", f"{result['seconds']:,.2f}")
    rows.add_row("events/s", f"{result['events_per_s']:,.1f}")
    rows.add_row("model", result["model_version"] or "none (rule scores only)")
    for error in result["errors"]:
        rows.add_row("error", Text(error, style="red"))
    return rows
