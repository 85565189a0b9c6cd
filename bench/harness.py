"""`python -m bench`: every benchmark in one run, each figure the median of N runs.

    .venv/bin/python -m bench [--runs 3] [--only NAME[,NAME]] [--out DIR] [--quick] [--no-model]

Writes <out>/<YYYY-MM-DD>.json, <out>/<YYYY-MM-DD>.md (one table: figure, median, min, max,
unit, runs, ratio to ceiling) and <out>/<YYYY-MM-DD>-growth.png; progress goes to stderr.
A run with --only merges its figures into the same day's files. What each figure means:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import budget, ceilings, cluster, consumer_rate, growth
from bench.api_latency import measure, seed, serving
from bench.common import FULL, QUICK, Context, Progress, open_context
from bench.consumer_worker import WorkerPool
from bench.floor import TRANSPORT as FLOOR_TRANSPORT
from bench.replay_rate import replay_run
from bench.train_time import TrainRun
from engage.settings import PROJECT_ROOT, Settings, get_settings

SCHEMA = 1
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MODEL_NONE = {True: "none registered (rules only)", False: "off, --no-model (rules only)"}
QUICK_NOTE = " (quick smoke: tiny sizes, the numbers mean nothing)"


@dataclass
class M:
    """One measured value of one run."""

    name: str
    value: float | None
    unit: str
    description: str
    ceiling: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


Runs = Iterator[list[M]]


def label(n: int) -> str:
    """1_000 -> 1k, 100_000 -> 100k, 5_000_000 -> 5M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{suffix}"
    return str(n)


# --------------------------------------------------------------------------- the benchmarks


EPS = "events/s"
US = "us/event"
PERCENTILES = ("p50", "p95", "p99")


def bench_ceilings(ctx: Context, runs: int) -> Runs:
    n_requests = ctx.sizes.redis_benchmark_requests
    for _ in range(runs):
        r = ceilings.produce_only(ctx)
        what = f"kafka-python sends {r['events']:,} pre-serialised MovieLens events, flushes"
        out = [M("produce_only", r["events_per_s"], EPS, what, detail=r)]
        for source in ("movielens", "synthetic"):
            r = ceilings.consume_topic_only(ctx, source)
            what = f"kafka-python reads {r['events']:,} {source} events, only decode_event"
            out.append(M(f"consume_only_{source}", r["events_per_s"], EPS, what, detail=r))
        r = ceilings.redis_pipeline(ctx, ctx.sizes.redis_ops)
        what = (f"one Python client, {r['ops']:,} HINCRBY/HSET pipelined "
                f"{ceilings.PIPELINE_COMMANDS:,} at a time")  # fmt: skip
        out.append(M("redis_pipeline", r["ops_per_s"], "ops/s", what, detail=r))
        b = ceilings.redis_benchmark(ctx, n_requests)
        skipped = {} if b else {"skipped": "redis-benchmark not installed, or Redis secured"}
        for test in ("hset", "incr"):
            what = f"redis-benchmark -q -t {test} -P 16 -n {n_requests:,}, for reference"
            value = b[test] if b else None
            out.append(M(f"redis_benchmark_{test}", value, "ops/s", what, detail=skipped))
        yield out


def bench_replay(ctx: Context, runs: int) -> Runs:
    for _ in range(runs):
        r = replay_run(ctx)
        what = f"replay of {r['events']:,} MovieLens events at --speed max (build, JSON, send)"
        yield [M("replay_movielens", r["events_per_s"], EPS, what, "produce_only", r)]


def _consumer_detail(r: dict[str, Any]) -> dict[str, Any]:
    keep = ("events", "events_per_s", "cpu_s", "cpu_us_per_event", "peak_rss_mib",
            "model_version", "errors", "redis", "consumer_thread")  # fmt: skip
    return {k: r[k] for k in keep if k in r}


def transport(ctx: Context) -> str:
    """The Kafka client library engage's consumer uses (its `kafka_client` setting)."""
    return getattr(ctx.settings, "kafka_client", "kafka-python")


def floor_run(ctx: Context, run: int) -> dict[str, Any]:
    """The job floor's run `run` over the MovieLens topic (bench/floor.py), remembered."""
    return consumer_rate.remembered_run(ctx, "movielens", run, kind="floor")


def _paired_floor(ctx: Context, run: int) -> dict[str, Any] | None:
    """With the floor group chosen too: its run `run`, measured just before the consumer's
    (the machine's speed drifts; a ratio within one run cancels it). None if it failed: the
    floor group then measures it again and reports the failure itself."""
    if "floor" not in ctx.groups:
        return None
    try:
        return floor_run(ctx, run)
    except Exception as exc:
        ctx.log(f"consumer: the floor run before run {run + 1} failed ({exc}); no ratio")
        return None


def floor_ratio(ctx: Context, consumer: dict[str, Any], floor: dict[str, Any],
                name: str = "consumer_movielens") -> M:  # fmt: skip
    """`name` (consumer_movielens, or its rules-only run) / floor_movielens of one run."""
    detail = {
        "transport": transport(ctx),
        "floor_transport": FLOOR_TRANSPORT,
        "model_version": consumer["model_version"],
        "consumer_events_per_s": consumer["events_per_s"],
        "floor_events_per_s": floor["events_per_s"],
    }
    return M(f"{name}_floor_ratio", consumer["events_per_s"] / floor["events_per_s"],
             "x", f"{name} / floor_movielens, run by run (each floor run just before its "
             "consumer runs)", detail=detail)  # fmt: skip


def _rules_only(ctx: Context, run: int, floor: dict[str, Any] | None) -> list[M]:
    """The same MovieLens run with no model served (rules only: the issue's second goal,
    0.7 of the floor), and its ratio to the floor run of the same round."""
    r = consumer_rate.remembered_run(ctx, "movielens", run, kind="rules")
    detail = _consumer_detail(r)
    out = [M("consumer_movielens_rules", r["events_per_s"], EPS,
             "consumer_movielens with no model registered (rules only)",
             "consume_only_movielens", detail),
           M("consumer_movielens_rules_cpu_us", r["cpu_us_per_event"], US,
             "its CPU (user + system, all threads) per event over its busy span",
             detail=detail)]  # fmt: skip
    if floor is not None:
        out.append(floor_ratio(ctx, r, floor, "consumer_movielens_rules"))
    return out


def _librdkafka(ctx: Context, run: int) -> list[M]:
    """The same MovieLens run with the optional librdkafka client (engage[fast]), beside the
    default one: what the transport seam gains (skipped when confluent-kafka is missing)."""
    what = "consumer_movielens with ENGAGE_KAFKA_CLIENT=confluent (librdkafka)"
    cpu_what = "its CPU (user + system, all threads) per event over its busy span"
    if importlib.util.find_spec("confluent_kafka") is None:
        skipped = {"skipped": "confluent-kafka not installed (pip install 'engage[fast]')"}
        return [
            M("consumer_movielens_confluent", None, EPS, what, detail=skipped),
            M("consumer_movielens_confluent_cpu_us", None, US, cpu_what, detail=skipped),
        ]
    r = consumer_rate.remembered_run(ctx, "movielens", run, client="confluent")
    detail = _consumer_detail(r) | {"transport": "confluent"}
    return [M("consumer_movielens_confluent", r["events_per_s"], EPS, what,
              "consume_only_movielens", detail),
            M("consumer_movielens_confluent_cpu_us", r["cpu_us_per_event"], US, cpu_what,
              detail=detail)]  # fmt: skip


def _consumer_thread(r: dict[str, Any]) -> list[M]:
    """The one thread that decodes, folds, scores and sends every batch (Python's GIL keeps
    that work on it): its CPU per event, and the share of the busy span it ran. What it
    did not run it slept (the GIL, Redis, Kafka, the model) or waited for a core."""
    thread = r.get("consumer_thread") or {}
    detail = {k: thread[k] for k in ("ran", "waited_for_core", "slept") if k in thread}
    if not thread:
        detail = {"skipped": "no per-thread scheduler figures (Linux's /proc schedstat)"}
    return [M("consumer_movielens_thread_cpu_us", thread.get("cpu_us_per_event"), US,
              "consumer_movielens: the CPU per event of its consumer thread alone (Linux "
              "schedstat), the part no other core can take", detail=detail),
            M("consumer_movielens_thread_ran", thread.get("ran"), "of the span",
              "consumer_movielens: the share of its busy span its consumer thread ran on a "
              "core (the rest: waited for a core, or slept)", detail=detail)]  # fmt: skip


def bench_consumer(ctx: Context, runs: int) -> Runs:
    for run in range(runs):
        out = []
        floor = _paired_floor(ctx, run)
        for source in ("movielens", "synthetic"):
            events = ctx.sizes.synthetic_events if source == "synthetic" else None
            memory = source == "movielens"
            r = consumer_rate.remembered_run(ctx, source, run, events=events, memory=memory)
            what = (f"one consumer process end to end over {r['events']:,} {source} events: "
                    "Redis state, rules, model if registered, scores topic")  # fmt: skip
            out.append(M(f"consumer_{source}", r["events_per_s"], EPS, what,
                         f"consume_only_{source}", _consumer_detail(r)))  # fmt: skip
            if memory:
                out.append(M("consumer_movielens_cpu_us", r["cpu_us_per_event"], US,
                             "the consumer process's CPU (user + system, all threads) per "
                             "event over consumer_movielens's busy span"))  # fmt: skip
                out += _consumer_thread(r)
                if floor is not None:
                    out.append(floor_ratio(ctx, r, floor))
                out += _rules_only(ctx, run, floor)
                out += _librdkafka(ctx, run)
                m = r["redis"]
                out.append(M("redis_aggregate_bytes_per_user_movielens",
                             m["aggregate_bytes_per_user"], "bytes",
                             f"MEMORY USAGE of u:{{user}} + u:{{user}}:items / {m['users']:,} "
                             f"users after ml-latest-small", detail=m))  # fmt: skip
                out.append(M("redis_bytes_per_user_movielens", m["bytes_per_user"], "bytes",
                             "all u:{user}* keys (with the duplicate guard's ids and the "
                             "served :score) per user after ml-latest-small"))  # fmt: skip
        yield out


def bench_floor(ctx: Context, runs: int) -> Runs:
    for run in range(runs):
        r = floor_run(ctx, run)
        what = (f"the job floor (bench/floor.py) over the {r['events']:,} MovieLens events: "
                f"{FLOOR_TRANSPORT} poll, orjson, counters in a dict, a score message each, "
                "one MULTI/EXEC per batch")  # fmt: skip
        detail = _consumer_detail(r) | {"transport": FLOOR_TRANSPORT}
        yield [
            M("floor_movielens", r["events_per_s"], EPS, what, "consume_only_movielens", detail),
            M("floor_movielens_cpu_us", r["cpu_us_per_event"], US,
              "the floor process's CPU (user + system, all threads) per event over its busy "
              "span"),
        ]  # fmt: skip


def bench_budget(ctx: Context, runs: int) -> Runs:
    consume = lambda: consumer_rate.throughput_run(ctx, "movielens")  # noqa: E731
    for r in budget.measure(ctx, runs, consume):
        n = r["rules"]["events"]
        out = [M("budget_compute_rules", r["rules"]["us_per_event"], US,
                 f"BatchScorer.run over {n:,} MovieLens events, state in memory, rules only "
                 "(no Kafka, no Redis)", detail=r["rules"])]  # fmt: skip
        model = r["model"]
        out.append(M("budget_compute_model", model and model["us_per_event"], US,
                     "the same with the registered model (both targets, reasons)",
                     detail=model or {"skipped": "no model registered"}))  # fmt: skip
        servers = r["servers"]
        for name in ("kafka", "redis"):
            what = (f"CPU of the stack's own {name} per event over one consumer run's busy "
                    "span, MovieLens (empty if this project did not start it)")  # fmt: skip
            value = servers[f"{name}_us_per_event"]
            why = {} if value is not None else {"skipped": f"{name} not started by this project"}
            out.append(M(f"budget_{name}_server_cpu", value, US, what, detail=servers | why))
        machine = budget.machine_cpu(servers)
        why = {} if machine is not None else {"skipped": "a server not started by this project"}
        out.append(M("budget_machine_cpu", machine, US,
                     "that run's CPU per event of the consumer process, the broker and Redis "
                     "together, over the consumer's busy span", detail=servers | why))  # fmt: skip
        out.append(M("budget_cores_bound", budget.cores_bound(machine), "events/s",
                     "the most events/s this machine's cores give at budget_machine_cpu, "
                     "however well the stages overlap", detail=servers | why))  # fmt: skip
        yield out


def bench_cluster(ctx: Context, runs: int) -> Runs:
    """One node vs a local 3-master Redis Cluster, same MovieLens topic, same run
    (bench/cluster.py)."""
    for r in cluster.measure(ctx, runs):
        one, many = r["single"], r["cluster"]
        n = f"{one['events']:,} MovieLens events"
        skipped = {} if r["single_redis_ours"] else {"skipped": "redis not started by this project"}
        yield [
            M("cluster_single_movielens", one["events_per_s"], EPS,
              f"one consumer process over {n} on the single Redis node (run beside "
              "cluster_movielens)", detail=one),
            M("cluster_movielens", many["events_per_s"], EPS,
              f"the same over {n} on a local 3-master Redis Cluster (no replicas; "
              "ratio: to the single node)", "cluster_single_movielens", many),
            M("cluster_single_redis_server_cpu", one["redis_cpu_us_per_event"], US,
              "the single Redis server's CPU (user + system) per event during that run",
              detail=skipped),
            M("cluster_redis_server_cpu", many["redis_cpu_us_per_event"], US,
              "the Cluster's Redis CPU per event during its run, summed over its 3 nodes",
              "cluster_single_redis_server_cpu"),
            M("cluster_single_bytes_per_user", one["bytes_per_user"], "bytes",
              "MEMORY USAGE of all u:{user}* keys per user after the single-node run"),
            M("cluster_bytes_per_user", many["bytes_per_user"], "bytes",
              "the same on the Cluster, with the user's guard hash ug:{user}",
              "cluster_single_bytes_per_user"),
        ]  # fmt: skip


def bench_latency(ctx: Context, runs: int) -> Runs:
    cases = [(rate, 1) for rate in ctx.sizes.latency_rates] + list(ctx.sizes.latency_scaled)
    for _ in range(runs):
        out = []
        for rate, processes in cases:
            r = consumer_rate.latency_run(ctx, rate, ctx.sizes.latency_seconds, processes)
            name = f"latency_{label(rate)}" + (f"_{processes}proc" if processes > 1 else "")
            what = f"input at {rate:,} events/s ({r['events']:,} MovieLens events)"
            if processes > 1:
                what += f", {processes} consumer processes in one group"
            for p in PERCENTILES:
                detail = r if p == "p50" else {}
                out.append(M(f"{name}_{p}", r[f"{p}_ms"], "ms", f"event to score {p}, {what}",
                             detail=detail))  # fmt: skip
            out.append(M(f"{name}_offered", r["offered_events_per_s"], EPS,
                         f"input rate achieved, {what}"))  # fmt: skip
            out.append(M(f"{name}_consumed", r["consumed_events_per_s"], EPS,
                         f"consumer rate achieved, {what}"))  # fmt: skip
        yield out


def bench_scaling(ctx: Context, runs: int) -> Runs:
    n = ctx.sizes.synthetic_events
    for run in range(runs):
        one = consumer_rate.remembered_run(ctx, "synthetic", run, events=n)
        two = consumer_rate.remembered_run(ctx, "synthetic", run, events=n, processes=2)
        what = (f"two consumer processes in one group, {ctx.settings.partitions} partitions, "
                f"{two['events']:,} synthetic events")  # fmt: skip
        speedup = two["events_per_s"] / one["events_per_s"]
        yield [
            M("consumer_2proc_synthetic", two["events_per_s"], EPS, what,
              "consume_only_synthetic", _consumer_detail(two)),
            M("consumer_2proc_speedup", speedup, "x", "two processes' rate / one process's"),
        ]  # fmt: skip


def bench_api(ctx: Context, runs: int) -> Runs:
    sizes = ctx.sizes
    settings = ctx.fresh("api")
    ctx.reset_state()
    ctx.log(f"api: scoring {sizes.api_users} synthetic users, starting engage serve")
    users = seed(settings, sizes.api_users)
    what = (f"GET /users/{{id}}/score at {sizes.api_rate:g} req/s for {sizes.api_seconds:g} s "
            f"over {len(users)} users, one uvicorn worker")  # fmt: skip
    try:
        with serving(settings) as port:
            for _ in range(runs):
                r = measure(port, users, sizes.api_rate, sizes.api_seconds)
                out = [M(f"api_score_{p}", r[f"{p}_ms"], "ms", f"{p} of {what}",
                         detail=r if p == "p50" else {}) for p in PERCENTILES]  # fmt: skip
                out.append(M("api_score_achieved", r["achieved_per_s"], "req/s",
                             f"requests/s achieved, {what}"))  # fmt: skip
                yield out
    finally:
        ctx.delete_topics(settings)


def bench_growth(ctx: Context, runs: int) -> Runs:
    sizes = sorted(ctx.sizes.growth_events)
    for run in range(runs):
        out = []
        per_event: dict[int, tuple[float, float | None]] = {}  # size -> (wall us, CPU us)
        for n in sizes:
            r = consumer_rate.remembered_run(ctx, "synthetic", run, events=n,
                                             memory=n == sizes[-1])  # fmt: skip
            out.append(M(f"growth_{label(n)}_rate", r["events_per_s"], EPS,
                         f"consumer rate over {n:,} synthetic events",
                         detail=_consumer_detail(r)))  # fmt: skip
            out.append(M(f"growth_{label(n)}_rss", r["peak_rss_mib"], "MiB",
                         f"consumer peak RSS (VmHWM) over {n:,} synthetic events"))  # fmt: skip
            cpu_what = f"consumer CPU (all threads) per event over {n:,} synthetic events"
            out.append(M(f"growth_{label(n)}_cpu_us", r["cpu_us_per_event"], US, cpu_what))
            per_event[n] = (1e6 / r["events_per_s"], r["cpu_us_per_event"])
        small, large = per_event[sizes[0]], per_event[sizes[-1]]
        span = f"at {label(sizes[-1])} / at {label(sizes[0])} synthetic events"
        out.append(M("growth_wall_per_event_ratio", large[0] / small[0], "x",
                     f"wall time per event {span} (goal: at most 1.2)"))  # fmt: skip
        cpu_ratio = large[1] / small[1] if large[1] and small[1] else None
        out.append(M("growth_cpu_per_event_ratio", cpu_ratio, "x",
                     f"consumer CPU per event {span} (goal: at most 1.2)"))  # fmt: skip
        head, tail = r["cpu_us_head"], r["cpu_us_tail"]
        out.append(M("growth_cpu_tail_head_ratio", tail / head if head and tail else None, "x",
                     f"consumer CPU per event over the last tenth of the {label(sizes[-1])} run "
                     "/ over its second tenth: the same growth within one run, which the "
                     "machine's speed drifting between runs does not move",
                     detail={"head_cpu_us": head, "tail_cpu_us": tail}))  # fmt: skip
        m = r["redis"]
        after = f"after {sizes[-1]:,} events"
        out.append(M("redis_bytes_per_user", m["bytes_per_user"], "bytes",
                     f"MEMORY USAGE of u:{{user}}* keys / {m['users']:,} users {after}",
                     detail=m))  # fmt: skip
        what = f"MEMORY USAGE of s:{{user}}:* keys / {m['sessions']:,} sessions {after}"
        out.append(M("redis_bytes_per_session", m["bytes_per_session"], "bytes", what))
        yield out


def bench_train(ctx: Context, runs: int) -> Runs:
    train = ctx.cache.pop("train", None) or TrainRun(ctx)
    r = train.wait()
    what = "ml-latest-small" if r["ratings"] is None else f"its first {r['ratings']:,} ratings"
    what = f"wall time of engage train --movielens on {what} (--no-register), once"
    if train.background:
        what += ", overlapping the other benchmarks"
    yield [M("train_movielens", r["seconds"], "s", what, detail=r)]


@dataclass(frozen=True)
class Bench:
    run: Callable[[Context, int], Runs]
    once: bool = False
    #: The group whose runs measure this one's too when both are chosen (run by run, so the
    #: two interleave); this group then runs after it and reports the remembered runs.
    within: str | None = None


BENCHES: dict[str, Bench] = {
    "ceilings": Bench(bench_ceilings),
    "replay": Bench(bench_replay),
    "consumer": Bench(bench_consumer),
    "floor": Bench(bench_floor, within="consumer"),
    "budget": Bench(bench_budget),
    "cluster": Bench(bench_cluster),
    "latency": Bench(bench_latency),
    "scaling": Bench(bench_scaling),
    "api": Bench(bench_api),
    "growth": Bench(bench_growth),
    "train": Bench(bench_train, once=True),
}


# --------------------------------------------------------------------------- the results


def summarise(name: str, group: str, measured: list[M]) -> dict[str, Any]:
    first = measured[0]
    values = [m.value for m in measured if m.value is not None]
    figure: dict[str, Any] = {
        "group": group,
        "description": first.description,
        "unit": first.unit,
        "median": statistics.median(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": len(values),
        "values": values,
        "ceiling": first.ceiling,
        "ratio_to_ceiling": None,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "details": [m.detail for m in measured if m.detail],
    }
    if not values:
        figure["skipped"] = first.detail.get("skipped", "no value")
    return figure


def add_ratios(figures: dict[str, dict[str, Any]]) -> None:
    for figure in figures.values():
        ceiling = figures.get(figure.get("ceiling") or "")
        if ceiling and ceiling["median"] and figure["median"] is not None:
            figure["ratio_to_ceiling"] = figure["median"] / ceiling["median"]
        else:
            figure["ratio_to_ceiling"] = None


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def machine(ctx: Context) -> dict[str, Any]:
    client = ctx.redis()
    try:
        redis_version = client.info("server").get("redis_version")
    finally:
        client.close()
    return {
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kafka": ctx.settings.kafka_bootstrap_servers,
        "redis": f"{ctx.settings.redis_host_port[0]}:{ctx.settings.redis_host_port[1]} "
        f"(version {redis_version}, db {ctx.db})",
        "git_commit": _git_commit(),
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def markdown(result: dict[str, Any], plot: str | None) -> str:
    m = result["machine"]
    lines = [
        f"# engage benchmarks, {result['date']}",
        "",
        f"`{result['command']}`: {result['seconds']:.0f} s; each figure is the median of "
        f"{result['runs']} run(s) (training: one){QUICK_NOTE if result['quick'] else ''}.",
        f"{m['cpus']} CPUs, load average {m['load_average'][0]:.2f} at the start and "
        f"{result['load_average_end'][0]:.2f} at the end; {m['platform']}, Python {m['python']}; "
        f"Kafka {m['kafka']}, Redis {m['redis']}; commit {m['git_commit']}; "
        f"model: {result['model_version'] or MODEL_NONE[result['model_requested']]}.",
    ]
    history = result.get("history", [])
    if len(history) > 1:
        lines += ["", "The figures come from these runs (the file merges a day's runs):", ""]
        lines += [
            f"- {', '.join(h['groups'])}: `{h['command']}`, {h['seconds']:.0f} s, load average "
            f"{h['load_average'][0]:.2f} -> {h['load_average'][1]:.2f}, commit {h['commit']}"
            for h in history
        ]
    lines += [
        "",
        "| group | figure | median | min | max | unit | runs | ratio to ceiling |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for name, f in result["figures"].items():
        ratio = f["ratio_to_ceiling"]
        ratio_text = f"{ratio:.2f} of {f['ceiling']}" if ratio is not None else ""
        if "skipped" in f:
            ratio_text = f"skipped: {f['skipped']}"
        lines.append(
            f"| {f['group']} | {name} | {fmt(f['median'])} | {fmt(f['min'])} | "
            f"{fmt(f['max'])} | {f['unit']} | {f['runs']} | {ratio_text} |"
        )
    if result["errors"]:
        lines += ["", "Failed:", ""]
        lines += [
            f"- {group}: {error.splitlines()[-1]}" for group, error in result["errors"].items()
        ]
    lines += ["", "What each figure is:", ""]
    lines += [f"- `{name}`: {f['description']}" for name, f in result["figures"].items()]
    if plot:
        lines += ["", f"![consumer rate and peak RSS against events]({plot})"]
    return "\n".join(lines) + "\n"


def growth_points(figures: dict[str, dict[str, Any]], sizes: tuple[int, ...]) -> list[dict]:
    points = []
    for n in sizes:
        rate, rss = figures.get(f"growth_{label(n)}_rate"), figures.get(f"growth_{label(n)}_rss")
        if rate and rss and rate["median"] is not None and rss["median"] is not None:
            points.append(
                {
                    "events": n,
                    "rate": rate["median"],
                    "rate_min": rate["min"],
                    "rate_max": rate["max"],
                    "rss": rss["median"],
                    "rss_min": rss["min"],
                    "rss_max": rss["max"],
                }
            )
    return points


# --------------------------------------------------------------------------- the command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, rules only: the CI smoke (default --out: a temp dir)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default: {RESULTS_DIR}")
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--no-model",
        dest="model",
        action="store_false",
        default=None,
        help="consumers score with the rules only (default with --quick)",
    )
    model.add_argument(
        "--model",
        dest="model",
        action="store_true",
        help="consumers also serve the registered model (default without --quick)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in args.only if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.model is None:
        args.model = not args.quick
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="engage-bench-")) if args.quick else RESULTS_DIR
    return args


def run_order(only: list[str]) -> list[str]:
    """The chosen groups as given, except that one measured within another chosen group's
    runs comes after that group."""
    return sorted(only, key=lambda name: BENCHES[name].within in only)


def run(args: argparse.Namespace, settings: Settings | None = None) -> dict[str, Any]:
    """Run the chosen benchmarks, write the JSON, Markdown and plot; the result (as written).

    `settings` (a test's) are used as they are: their Redis database and topic prefix;
    otherwise a Redis database is claimed and topics are named bench.<random>.*"""
    log = Progress()
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    date = dt.date.today().isoformat()
    measured: dict[str, list[M]] = {}
    groups: dict[str, str] = {}
    errors: dict[str, str] = {}
    given = settings is not None
    base = settings or get_settings()
    # A test's settings are used as they are; otherwise a Redis database is claimed.
    prefix = base.events_topic.removesuffix(".events") + ".bench" if given else None
    with ExitStack() as stack:
        if not args.model:  # an empty registry: the consumers find no model
            empty = stack.enter_context(tempfile.TemporaryDirectory(prefix="engage-bench-"))
            base = base.model_copy(update={"data_dir": Path(empty)})
        ctx = stack.enter_context(
            open_context(base, claim=not given, prefix=prefix, log=log, sizes=sizes)
        )
        info = machine(ctx)
        log(
            f"benchmarks {', '.join(args.only)}; {args.runs} run(s); "
            f"{'quick' if args.quick else 'full'} sizes; Redis db {ctx.db}; "
            f"load average {info['load_average'][0]:.2f}"
        )
        ctx.defer_deletes = args.quick
        ctx.groups = tuple(args.only)
        ctx.cache["workers"] = WorkerPool(spare=args.quick)
        stack.callback(ctx.cache["workers"].close)
        if args.quick and "train" in args.only:
            ctx.cache["train"] = TrainRun(ctx, background=True)  # overlaps the rest
        try:
            for name in run_order(args.only):
                bench = BENCHES[name]
                total = 1 if bench.once else args.runs
                log(f"{name}: start ({total} run{'s' if total > 1 else ''})")
                try:
                    for n, values in enumerate(bench.run(ctx, total), 1):
                        for m in values:
                            measured.setdefault(m.name, []).append(m)
                            groups[m.name] = name
                        shown = ", ".join(f"{m.name} {fmt(m.value)} {m.unit}" for m in values[:6])
                        log(f"{name}: run {n}/{total}: {shown}{' ...' if len(values) > 6 else ''}")
                except Exception:
                    errors[name] = traceback.format_exc()
                    log(f"{name}: FAILED\n{errors[name]}")
        finally:
            train = ctx.cache.pop("train", None)
            if train is not None:  # started in the background, never collected
                train.cancel()
    figures = {name: summarise(name, groups[name], ms) for name, ms in measured.items()}
    models = {d.get("model_version") for f in figures.values() for d in f["details"]}
    result = {
        "schema": SCHEMA,
        "date": date,
        "command": " ".join(["python -m bench", *args.argv]),
        "quick": args.quick,
        "runs": args.runs,
        "only": args.only,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": info,
        "load_average_end": list(os.getloadavg()),
        "model_version": next((m for m in models if m), None),
        "model_requested": args.model,
        "sizes": {k: getattr(sizes, k) for k in sizes.__dataclass_fields__},
        "figures": figures,
        "errors": errors,
    }
    write(result, args.out, sizes)
    log(
        f"done in {result['seconds']:.0f} s: {args.out / (date + '.json')}, .md"
        + (f"; {len(errors)} benchmark(s) failed: {', '.join(errors)}" if errors else "")
    )
    return result


def _history_entry(result: dict[str, Any]) -> dict[str, Any]:
    """Which run measured which groups: a day's file merges several --only runs."""
    return {
        "command": result["command"],
        "groups": sorted({f["group"] for f in result["figures"].values()}),
        "seconds": result["seconds"],
        "load_average": [result["machine"]["load_average"][0], result["load_average_end"][0]],
        "commit": result["machine"]["git_commit"],
    }


def _still_shown(history: list[dict[str, Any]], replaced: list[str]) -> list[dict[str, Any]]:
    """Earlier runs, each with only the groups this run did not measure again."""
    kept = []
    for entry in history:
        groups = [g for g in entry["groups"] if g not in replaced]
        if groups:
            kept.append(entry | {"groups": groups})
    return kept


def write(result: dict[str, Any], out: Path, sizes: Any) -> None:
    """Merge into the same day's results (an --only run replaces just its figures), write."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{result['date']}.json"
    this_run = _history_entry(result)  # before the merge adds earlier runs' figures
    result["history"] = [this_run]
    if json_path.is_file():
        try:
            old = json.loads(json_path.read_text())
        except ValueError:
            old = {}
        if old.get("schema") == SCHEMA and old.get("quick") == result["quick"]:
            merged = {
                n: f for n, f in old.get("figures", {}).items() if f["group"] not in result["only"]
            }
            merged.update(result["figures"])
            result["figures"] = merged
            kept = {g: e for g, e in old.get("errors", {}).items() if g not in result["only"]}
            result["errors"] = {**kept, **result["errors"]}
            result["history"] = _still_shown(old.get("history", []), result["only"])
            result["history"].append(this_run)
    order = {name: i for i, name in enumerate(BENCHES)}
    result["figures"] = dict(
        sorted(result["figures"].items(), key=lambda kv: order.get(kv[1]["group"], 99))
    )
    add_ratios(result["figures"])
    plot = None
    points = growth_points(result["figures"], sizes.growth_events)
    if points:
        png = out / f"{result['date']}-growth.png"
        growth.plot(points, png, f"engage consumer growth, {result['date']}")
        plot = png.name
    result["growth_plot"] = plot
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(json_path)
    (out / f"{result['date']}.md").write_text(markdown(result, plot))


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """The command line; 0 when every chosen benchmark ran, 1 otherwise."""
    args = parse_args(argv)
    if shutil.which("redis-benchmark") is None:
        print(
            "note: redis-benchmark not found (Debian: redis-tools); its reference figures "
            "are skipped",
            file=sys.stderr,
        )
    result = run(args, settings)
    return 1 if result["errors"] else 0
