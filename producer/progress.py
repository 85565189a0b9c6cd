"""A rich progress bar with an events/s column, or a no-op when output is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} events/s", style="cyan")


@contextmanager
def progress_bar(
    console: Console, label: str, total: int | None, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`. Disabled (a no-op) when asked, or when the console is no TTY."""
    if not enabled or not console.is_terminal:
        yield lambda n: None
        return
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn(label)]
    if total:
        columns.append(BarColumn())
    columns += [MofNCompleteColumn(), RateColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, speed_estimate_period=5) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
