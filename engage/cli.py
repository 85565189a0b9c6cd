"""The `engage` command line: one entry point for the stack, the pipeline and its tools."""

from __future__ import annotations

import importlib
import json

import typer
from rich.console import Console
from rich.table import Table

from engage.cli_support import (
    EXIT_SERVICES_DOWN,
    check_rules_file,
    check_settings,
    console,
    fail,
    namespace_options,
)
from engage.settings import get_settings
from engage.stack import manager
from engage.stack.errors import StackError

app = typer.Typer(
    help="Real-time user-engagement scoring on Kafka and Redis.", no_args_is_help=True
)
stack_app = typer.Typer(
    help="Start, inspect and stop the local Kafka and Redis.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        print(f"engage {version('engage')}")
        raise typer.Exit()


@app.callback()
def _check_settings(
    _: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    # Before any command: a bad ENGAGE_* value is one line naming the variable (exit 2), not
    # a traceback.
    check_settings()


def _print_states(states: list[manager.ServiceState], as_json: bool) -> None:
    if as_json:
        print(json.dumps([s.as_dict() for s in states]))
        return
    table = Table("service", "address", "state", "pid", "ready (s)")
    for s in states:
        pids = ",".join(map(str, s.pids)) or "-"
        table.add_row(s.name, s.address, s.origin, pids, str(s.ready_s or "-"))
    Console().print(table)


@stack_app.command("up")
def stack_up(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable state."),
    redis_cluster: int = typer.Option(
        None,
        "--redis-cluster",
        min=1,
        max=16,
        help="Redis as a local cluster of N masters (no replicas) on consecutive ports from "
        "ENGAGE_STACK_REDIS_CLUSTER_PORT (7100), instead of one node.",
    ),
):
    """Reuse running Kafka/Redis or start the project's own (jars from Maven Central)."""
    try:
        states = manager.up(get_settings(), redis_cluster=redis_cluster)
    except StackError as exc:
        raise fail(str(exc), EXIT_SERVICES_DOWN) from exc
    _print_states(states, as_json)
    for s in states:
        if s.name == "redis-cluster":
            console.print(f"Redis Cluster at {s.address}: point engage at it with\n"
                          f"  export ENGAGE_REDIS_URL={s.address}", highlight=False)  # fmt: skip


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json")):
    """Show what answers where, and which processes are the project's own. Exit 3 if down."""
    states = manager.status(get_settings())
    _print_states(states, as_json)
    if any(s.origin == "down" for s in states):
        raise typer.Exit(EXIT_SERVICES_DOWN)


@stack_app.command("down")
def stack_down():
    """Stop the servers this project started (never ones it merely reused)."""
    stopped = manager.down(get_settings())
    console.print(
        f"stopped: {', '.join(stopped) if stopped else 'nothing (no servers of ours ran)'}"
    )


@app.command("demo")
@namespace_options(topic=False)  # the demo makes its own topics (and Redis database)
def demo(
    seconds: float = typer.Option(30.0, "--seconds", min=5, help="How long the live part runs."),
    rate: float = typer.Option(800.0, "--rate", min=10, help="Events per second to replay."),
    train: bool = typer.Option(True, "--train/--no-train", help="Train a model if none exists."),
) -> None:
    """The whole pipeline live: stack, replay, consumer, live view, top users, explanation."""
    from engage.demo import run_demo

    check_rules_file(get_settings())
    try:
        run_demo(get_settings(), seconds=seconds, rate=rate, train=train)
    except StackError as exc:
        raise fail(str(exc), EXIT_SERVICES_DOWN) from exc


# Each package adds its own subcommands: a module with `register(app: typer.Typer) -> None`.
COMMAND_MODULES: list[str] = [
    "consumer.commands",
    "offline.commands",
    "producer.commands",
    "engage.score_commands",
    "engage.api.commands",
    "bench.commands",
]
for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)
