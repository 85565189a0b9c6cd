"""What every `engage` subcommand shares: the error console and the exit codes."""

from __future__ import annotations

import typer
from rich.console import Console

#: Exit codes: 0 ok, 1 failure, 2 bad arguments (typer's own), 3 services down, 4 not found.
EXIT_FAILURE = 1
EXIT_SERVICES_DOWN = 3
EXIT_NOT_FOUND = 4

console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
