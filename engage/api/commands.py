"""`engage serve`: the HTTP API and dashboard under uvicorn (one worker, loopback by default)."""

from __future__ import annotations

import typer

from engage.cli_support import namespace_options, services_down_exits
from engage.settings import get_settings


def serve(
    host: str = typer.Option(None, "--host", help="Bind address (default: ENGAGE_API_HOST)."),
    port: int = typer.Option(None, "--port", min=0, max=65535, help="Default: ENGAGE_API_PORT."),
    access_log: bool = typer.Option(
        False, "--access-log/--no-access-log", help="Log every request (costs latency)."
    ),
) -> None:
    """Serve the scores API (docs at /docs) and the live dashboard (at /)."""
    import uvicorn

    from engage.api import create_app

    settings = get_settings()
    # A Cluster client reads its slot map when it is built: down is one line, exit 3.
    with services_down_exits(settings):
        app = create_app(settings)
    uvicorn.run(
        app,
        host=host or settings.api_host,
        port=settings.api_port if port is None else port,
        access_log=access_log,
        timeout_graceful_shutdown=3,  # open SSE streams must not hold a shutdown forever
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(namespace_options()(serve))
