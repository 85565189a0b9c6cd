"""`engage consume` and `engage stats`."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, cast, get_args

import redis
import typer
from rich.console import Console
from rich.table import Table

from engage.cli_support import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_SERVICES_DOWN,
    check_database_topic,
    check_rules_file,
    console,
    fail,
    namespace_options,
    services_down_exits,
)
from engage.logs import LogFormat, json_lines_for, setup_logging
from engage.output import print_json, stdout
from engage.settings import get_settings

if TYPE_CHECKING:
    from consumer.progress import ProgressLine
    from consumer.runner import StreamConsumer
    from engage.settings import Settings


def consume(
    group: str = typer.Option(None, "--group", "-g", help="Consumer group (default: settings)."),
    idle_exit: float = typer.Option(None, "--idle-exit", help="Exit after this many idle seconds."),
    max_events: int = typer.Option(None, "--max-events", help="Exit after this many events."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="Serve Prometheus metrics."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as JSON."),
    order: str = typer.Option(
        None,
        "--order",
        help="arrival | event-time: merge partitions by event time, as training "
        "does (default: settings.consume_order).",
    ),
    log_features: bool = typer.Option(
        False,
        "--log-features",
        help="Put each event's whole feature vector on its score message (default: a digest; "
        "parity then names the features that differ, and `train --logged-features` can use "
        "them). Same as ENGAGE_LOG_FEATURES=true.",
    ),
    log_format: str = typer.Option(
        None,
        "--log-format",
        help="auto | human | json. human: readable lines and, on a terminal, a live progress "
        "line; json: one object a line (auto: human on a terminal, else json; default: "
        "ENGAGE_LOG_FORMAT, auto).",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also kafka-python's slow-I/O-loop warnings."
    ),
) -> None:
    """Consume events: exactly-once aggregates in Redis, rule and model scores out."""

    from consumer.runner import OutputRefused, StreamConsumer
    from engage.redis_client import CLUSTER_NODE, plain_url_names_a_cluster, refused

    settings = get_settings()
    if order is not None:
        if order not in ("arrival", "event-time"):
            raise fail(f"--order must be arrival or event-time, not {order!r}", EXIT_BAD_INPUT)
        settings = settings.model_copy(update={"consume_order": order.replace("-", "_")})
    if log_features:
        settings = settings.model_copy(update={"log_features": True})
    if log_format not in (None, *get_args(LogFormat)):
        raise fail(f"--log-format must be auto, human or json, not {log_format!r}", EXIT_BAD_INPUT)
    check_rules_file(settings)
    json_lines = json_lines_for(cast(LogFormat, log_format) or settings.log_format)
    setup_logging(json_lines=json_lines, verbose=verbose, console=console)
    port = metrics_port if metrics_port is not None else settings.metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")
    # A Cluster named as such gets the Cluster store (consumer/cluster_store.py, issue 17); a
    # plain URL naming a Cluster node would fail on its first key of another node: say so.
    if plain_url_names_a_cluster(settings):
        raise fail(CLUSTER_NODE, EXIT_BAD_INPUT)
    refusal = refused(settings)  # a wrong password is not an outage to wait out
    if refusal is not None:
        raise fail(f"Redis at {settings.redis_url} refused us: {refusal}", EXIT_SERVICES_DOWN)
    check_database_topic(settings, record=True)
    with services_down_exits(settings, kafka=True):  # NoBrokersAvailable, KafkaTimeoutError
        runner = StreamConsumer(settings, group=group)
    progress = _progress_line(runner, show=not json_lines)
    try:
        with _live(progress):
            on_batch = progress.on_batch if progress else None
            summary = runner.run(idle_exit_s=idle_exit, max_events=max_events, on_batch=on_batch)
    except redis.ConnectionError as exc:  # gave up waiting (redis_retry_give_up_s), or refused
        raise fail(f"Redis at {settings.redis_url}: {exc}", EXIT_SERVICES_DOWN) from exc
    except OutputRefused as exc:  # permanent: waiting or restarting cannot fix it
        raise fail(f"{exc}; nothing of the batch was committed", EXIT_FAILURE) from None
    result = {
        "processed": summary.processed,
        "dead_lettered": summary.dead_lettered,
        "batches": summary.batches,
        "fenced": summary.fenced,
        "seconds": round(summary.seconds, 2),
        "events_per_s": round(summary.rate, 1),
        "model_version": summary.model_version,
        "errors": summary.errors,
    }
    if as_json:
        print_json(result)
    else:
        from consumer.progress import summary_table

        stdout().print(summary_table(result))


def _progress_line(runner: StreamConsumer, show: bool) -> ProgressLine | None:
    """A live progress line for a person at a terminal (readable logs, stderr a terminal);
    None otherwise: a log collector gets the JSON lines and the summary only."""
    if not show or not console.is_terminal or not sys.stderr.isatty():
        return None
    from consumer.progress import ProgressLine, partition_lag

    return ProgressLine(lambda: partition_lag(runner))


def _live(progress: ProgressLine | None) -> contextlib.AbstractContextManager[object]:
    """Redraw `progress` on stderr twice a second; log lines print above it."""
    if progress is None:
        return contextlib.nullcontext()
    from rich.live import Live

    return Live(progress, console=console, refresh_per_second=2, redirect_stdout=False,
                redirect_stderr=False)  # fmt: skip


def stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Processed and dead-lettered counts, and lag per partition (from Redis offsets)."""
    from consumer.stats import collect_stats
    from engage.cli_support import require_kafka

    settings = get_settings()
    require_kafka(settings)  # else the lag reads 0 after kafka-python's 30 s bootstrap timeout
    check_database_topic(settings)
    with services_down_exits(settings):
        result = collect_stats(settings)
    if not result["partitions"]:  # no topic yet, or Kafka gone since: never read that as lag 0
        require_kafka(settings)
    with services_down_exits(settings):
        result["quality"] = _live_quality(settings)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("partition", "applied offset", "end offset", "lag")
    for row in result["partitions"]:
        table.add_row(*(str(row[k]) for k in ("partition", "applied", "end", "lag")))
    out = Console()
    out.print(f"topic {result['topic']}: processed {result['processed']}, "
              f"dead-lettered {result['dead_lettered']}, users {result['users']}")  # fmt: skip
    out.print(table)
    quality = result["quality"]
    if quality is None:
        return
    for domain, f in quality["domains"].items():
        out.print(f"live quality {domain}, last {f['n']:,} labelled: ROC-AUC {_num(f['roc_auc'])}"
                  f", ECE {_num(f['ece'])}", markup=False, highlight=False)  # fmt: skip
    if quality.get("funnel_waiting") is not None:
        out.print(f"funnel propensity: {quality['funnel_waiting']:,} scores waiting for a "
                  "conversion", markup=False, highlight=False)  # fmt: skip
    drifting = ", ".join(quality["drifting"])
    out.print(f"model status: {quality['status']}" + (f" ({drifting})" if drifting else "")
              + " (engage quality: the whole report)", markup=False, highlight=False)  # fmt: skip


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _live_quality(settings: Settings) -> dict[str, object] | None:
    """The live quality in brief (`engage quality` has it all): per domain the largest
    window's n, ROC-AUC and ECE; the drift status and the drifting features; the funnel
    propensity scores waiting for their label (None without a join state). None when the
    consumer has stored none."""
    from redis.cluster import RedisCluster

    from engage.redis_client import connect
    from offline.quality_report import collect_quality, status

    client = connect(settings)
    cluster = isinstance(client, RedisCluster)
    client.close()
    if cluster:  # the consumer keeps no live quality on a Cluster yet (docs/quality.md)
        return None
    report = collect_quality(settings)
    if not report["partitions"]["quality"] and not report["partitions"]["drift"]:
        return None
    domains = {}
    for domain, q in report["quality"].items():
        filled = [f for f in q["windows"].values() if f["n"]]
        if filled:
            f = filled[-1]
            domains[domain] = {"n": f["n"], "roc_auc": f["roc_auc"], "ece": f["ece"]}
    drifting = sorted({name for d in report["drift"] for name in d["drifting"]})
    funnel = report["funnel"]
    return {"status": status(report), "domains": domains, "drifting": drifting,
            "funnel_waiting": funnel["waiting"] if funnel else None,
            "problems": report["problems"]}  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("consume")(namespace_options()(consume))
    app.command("stats")(namespace_options()(stats))
