"""`engage bench`: the benchmark harness (`python -m bench`) as a subcommand."""

from __future__ import annotations

import typer


def bench(ctx: typer.Context) -> None:
    """Run the benchmarks on the local stack; same options as `python -m bench --help`."""
    from bench.harness import main

    raise typer.Exit(main(ctx.args))


def register(app: typer.Typer) -> None:
    app.command(
        "bench",
        context_settings={
            "allow_extra_args": True,
            "ignore_unknown_options": True,
            "help_option_names": [],
        },
        add_help_option=False,
    )(bench)
