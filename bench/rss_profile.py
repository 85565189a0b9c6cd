"""Where the consumer's memory goes as it consumes more events (issue 15: peak RSS flat).

    python -m bench.rss_profile --events 100000 500000 1000000 [--trace] [--out FILE.json]

For each size: `size` synthetic events (bench.sources: ~20 per user) are produced into a
topic of its own, then one real `StreamConsumer` process reads them all (a fresh group, an
emptied private Redis database, its own scores topic) and stops. Every `--interval` seconds
the harness samples the worker's VmRSS and VmHWM (/proc/<pid>/status) and the events applied
so far (Redis stats), so RSS can be read against events, not only at the end. At the end the
worker reports its peak RSS, glibc malloc's view (mallinfo2: in use, free, mmapped), pymalloc's
arenas (sys._debugmallocstats), the live object count and the sizes of the caches that could
grow with users (the scores producer's key -> partition cache, the store's item metadata).

With `--trace`, tracemalloc runs in the worker from its first batch on (which slows it ten times
and more, and adds its own memory, so RSS of traced runs is not comparable): snapshots at
--snapshots fractions of the events, and the report lists the top allocation lines that grew
between the first and the last one (with their tracebacks, --frames deep), to tell Python-side
growth from what lies outside Python.

`--env NAME=VALUE` passes variables to the worker (e.g. MALLOC_ARENA_MAX=2,
ENGAGE_GC_GEN0_THRESHOLD=0); `--partition-fetch-bytes N [N ...]` runs the consumer once per value
with the kafka-python consumer's max_partition_fetch_bytes overridden (0: engage/transport's own,
8 MiB), on the same topic: how much of the RSS is fetch buffers.
Results: JSON on stdout (or --out), progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import sources
from bench.common import (
    CLAIM,
    CLAIM_TTL_S,
    Context,
    engage_env,
    open_context,
    release_db,
    rss_mib,
)
from engage.redis_client import connect
from engage.settings import Settings, get_settings

DEFAULT_SIZES = (100_000, 500_000, 1_000_000)


# --------------------------------------------------------------------------- worker side


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd")
_MALLINFO2_FIELDS += ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


def mallinfo() -> dict[str, float]:
    """glibc malloc, every arena: MiB taken from the system (heap + mmapped), in use, free."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    mib = 1024 * 1024
    return {
        "heap_mib": round(info.arena / mib, 1),
        "mmapped_mib": round(info.hblkhd / mib, 1),
        "in_use_mib": round((info.uordblks + info.hblkhd) / mib, 1),
        "free_mib": round(info.fordblks / mib, 1),
    }


def pymalloc_stats() -> dict[str, int]:
    """pymalloc's arenas and block bytes, parsed from sys._debugmallocstats (it writes to the
    C stderr, so file descriptor 2 is redirected around the call)."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    wanted = {
        "# arenas allocated current": "arenas",
        "# arenas highwater mark": "arenas_highwater",
        "# bytes in allocated blocks": "allocated_bytes",
        "# bytes in available blocks": "available_bytes",
        "bytes lost to pool headers": "pool_header_bytes",
        "bytes lost to quantization": "quantization_bytes",
        "Total": "total_bytes",
    }
    out: dict[str, int] = {}
    for line in text.splitlines():
        for prefix, name in wanted.items():
            if line.startswith(prefix) and "=" in line:
                with contextlib.suppress(ValueError):
                    out.setdefault(name, int(line.rsplit("=", 1)[1].strip().replace(",", "")))
    return out


def _caches(consumer: Any) -> dict[str, int]:
    """Sizes of the structures that could grow with users (None where there is none)."""
    out: dict[str, int] = {"meta_cache": len(consumer.store.meta.known)}
    client = getattr(consumer.out, "client", None)
    partitioner = getattr(getattr(client, "config", {}), "get", lambda _k: None)("partitioner")
    if hasattr(partitioner, "cache_info"):  # the bounded LRU
        out["partition_cache"] = partitioner.cache_info().currsize
    elif hasattr(partitioner, "_cache"):  # the unbounded dict it replaced
        out["partition_cache"] = len(partitioner._cache)
    from features import fold  # a new signature would be a compilation (and its code kept)

    out["fold_signatures"] = len(fold._kernel.signatures)
    return out


def _small_fetch(limit: int) -> None:
    """Cap the kafka-python consumer's fetch size per partition (the transport sets it)."""
    from engage import kafka_clients

    original = kafka_clients.consumer

    def consumer(settings: Any, *topics: str, **overrides: Any) -> Any:
        overrides["max_partition_fetch_bytes"] = limit
        return original(settings, *topics, **overrides)

    kafka_clients.consumer = consumer  # type: ignore[assignment]


def worker_main() -> None:
    job = json.loads(sys.stdin.readline())
    for name in [n for n in os.environ if n.startswith("ENGAGE_")]:
        del os.environ[name]
    os.environ.update(job["env"])
    from consumer.runner import RunSummary, StreamConsumer
    from engage.settings import get_settings

    get_settings.cache_clear()
    if job.get("partition_fetch_bytes"):
        _small_fetch(job["partition_fetch_bytes"])
    events: int = job["events"]
    trace_dir = Path(job["trace_dir"]) if job.get("trace_dir") else None
    marks = sorted(int(events * f) for f in job.get("snapshots", ()))
    snapshots: list[tuple[int, str]] = []
    consumer = StreamConsumer(get_settings(), group=job["group"])
    started = time.monotonic()

    def on_batch(summary: RunSummary) -> None:
        # Traced from the first batch on: start-up (imports, the compiled fold) is not growth,
        # and tracing it would take minutes.
        if trace_dir is not None and not tracemalloc.is_tracing():
            tracemalloc.start(job.get("frames", 2))
        done = summary.processed + summary.dead_lettered
        while trace_dir is not None and marks and done >= marks[0]:
            marks.pop(0)
            path = trace_dir / f"snap{len(snapshots)}.pickle"
            tracemalloc.take_snapshot().dump(str(path))
            snapshots.append((done, str(path)))

    summary = consumer.run(
        idle_exit_s=job.get("idle_exit_s", 60.0), max_events=events, on_batch=on_batch
    )
    current, peak = rss_mib()
    result: dict[str, Any] = {
        "processed": summary.processed,
        "dead_lettered": summary.dead_lettered,
        "batches": summary.batches,
        "fenced": summary.fenced,
        "seconds": round(time.monotonic() - started, 1),
        "busy_rate": round(summary.busy_rate, 1),
        "peak_rss_mib": round(peak, 1),
        "end_rss_mib": round(current, 1),
        "malloc": mallinfo(),
        "pymalloc": pymalloc_stats(),
        "objects": len(gc.get_objects()) + gc.get_freeze_count(),
        "caches": _caches(consumer),
        "snapshots": snapshots,
    }
    if trace_dir is not None:
        traced, traced_peak = tracemalloc.get_traced_memory()
        result["traced_mib"] = round(traced / 2**20, 1)
        result["traced_peak_mib"] = round(traced_peak / 2**20, 1)
    sys.stdout.write(json.dumps({"summary": result}) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- harness side


def _status(pid: int) -> tuple[float, float] | None:
    try:
        return rss_mib(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None


def trace_report(snapshots: list[tuple[int, str]], top: int = 20) -> dict[str, Any]:
    """The top allocation lines that grew from the first snapshot to the last, and the
    tracebacks of the largest growths; per snapshot the traced total."""
    if len(snapshots) < 2:
        return {}
    loaded = [(n, tracemalloc.Snapshot.load(p)) for n, p in snapshots]
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ]
    loaded = [(n, s.filter_traces(ignore)) for n, s in loaded]
    (n0, first), (n1, last) = loaded[0], loaded[-1]
    by_line = last.compare_to(first, "lineno")
    by_trace = last.compare_to(first, "traceback")
    totals = [
        {"events": n, "traced_mib": round(sum(t.size for t in s.traces) / 2**20, 1)}
        for n, s in loaded
    ]

    def where(stat: Any) -> str:
        frame = stat.traceback[0]
        return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"

    lines = [
        {
            "at": where(s),
            "grew_kib": round(s.size_diff / 1024, 1),
            "size_kib": round(s.size / 1024, 1),
            "count_diff": s.count_diff,
        }
        for s in by_line[:top]
    ]
    traces = []
    for s in by_trace[:5]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in s.traceback]
        traces.append(
            {
                "grew_kib": round(s.size_diff / 1024, 1),
                "count_diff": s.count_diff,
                "traceback": frames,
            }
        )
    return {"between_events": [n0, n1], "totals": totals, "top_lines": lines, "top_traces": traces}


def profile_run(
    ctx: Context,
    events: int,
    *,
    trace: bool = False,
    snapshots: tuple[float, ...] = (0.2, 0.6, 1.0),
    frames: int = 2,
    env: dict[str, str] | None = None,
    partition_fetch_bytes: int | None = None,
    interval: float = 1.0,
) -> dict[str, Any]:
    """One consumer process over the `events`-event synthetic topic, sampled as it runs."""
    topic_settings, _ = sources.synthetic_topic(ctx, events)
    settings = ctx.with_output(topic_settings, f"rss{events}")
    ctx.reset_state()
    group = f"{settings.events_topic}.rss{time.time_ns()}"
    with tempfile.TemporaryDirectory(prefix="engage-rss-") as tmp:
        job = {
            "env": {k: v for k, v in engage_env(settings).items() if k.startswith("ENGAGE_")},
            "group": group,
            "events": events,
            "trace_dir": tmp if trace else None,
            "snapshots": list(snapshots),
            "frames": frames,
            "partition_fetch_bytes": partition_fetch_bytes,
        }
        proc_env = {**os.environ, **(env or {})}
        with tempfile.TemporaryFile(mode="w+") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.rss_profile", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=proc_env,
            )
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.close()
            samples: list[dict[str, float]] = []
            t0 = time.monotonic()
            deadline = t0 + 600 + events / 1000
            try:
                while proc.poll() is None:
                    status = _status(proc.pid)
                    if status is not None:
                        samples.append(
                            {
                                "t": round(time.monotonic() - t0, 1),
                                "events": ctx.processed(settings.events_topic),
                                "rss_mib": round(status[0], 1),
                                "hwm_mib": round(status[1], 1),
                            }
                        )
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"consumer did not finish {events:,} events in time")
                    time.sleep(interval)
                out = proc.stdout.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            summary = None
            for line in out.splitlines():
                with contextlib.suppress(ValueError):
                    summary = json.loads(line).get("summary", summary)
            if summary is None:
                stderr.seek(0)
                raise RuntimeError(f"worker exited {proc.returncode}: {stderr.read()[-2000:]}")
        applied = ctx.processed(settings.events_topic)
        counts = [s["events"] for s in samples] + [applied]
        # Another process emptying this database (FLUSHDB) resets the offsets: the consumer
        # then reads the topic again from the start, and the run measures something else.
        summary["disturbed"] = bool(
            summary["fenced"]
            or applied != summary["processed"] + summary["dead_lettered"]
            or any(b < a for a, b in itertools.pairwise(counts))
        )
        result = {
            "events": events,
            "env": env or {},
            "partition_fetch_bytes": partition_fetch_bytes,
            **summary,
            "samples": samples,
        }
        if trace:
            result["trace"] = trace_report(summary["snapshots"])
        result.pop("snapshots", None)
    ctx.delete(settings.scores_topic, settings.dead_letter_topic)
    return result


def _brief(r: dict[str, Any]) -> str:
    m, p, c = r.get("malloc", {}), r.get("pymalloc", {}), r.get("caches", {})
    return (
        f"{r['events']:>9,} events: peak {r['peak_rss_mib']:.0f} MiB, end {r['end_rss_mib']:.0f}"
        f" | malloc heap {m.get('heap_mib')} mmap {m.get('mmapped_mib')} in use "
        f"{m.get('in_use_mib')} free {m.get('free_mib')} | pymalloc arenas {p.get('arenas')} "
        f"(hw {p.get('arenas_highwater')}), blocks {p.get('allocated_bytes', 0) / 2**20:.0f} MiB"
        f" | objects {r['objects']:,} | caches {c} | {r['busy_rate']:,.0f} events/s"
    )


def claim_db(settings: Settings, db: int) -> None:
    """Claim Redis database `db` as bench.common claims its own (tests and benchmarks then
    leave it alone)."""
    claims = connect(settings.with_redis_db(0))
    try:
        if not claims.set(CLAIM.format(db), os.getpid(), nx=True, ex=CLAIM_TTL_S):
            raise SystemExit(f"Redis database {db} is claimed by another process")
    finally:
        claims.close()


def _runs(ctx: Context, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = dict(item.split("=", 1) for item in args.env)
    results: list[dict[str, Any]] = []
    for n in sorted(args.events):
        for fetch in args.partition_fetch_bytes:
            what = f"{' (traced)' if args.trace else ''}{f', fetch {fetch:,}' if fetch else ''}"
            ctx.log(f"consumer over {n:,} synthetic events{what}")
            r = profile_run(
                ctx,
                n,
                trace=args.trace,
                snapshots=tuple(args.snapshots),
                frames=args.frames,
                env=env,
                partition_fetch_bytes=fetch or None,
                interval=args.interval,
            )
            ctx.log(_brief(r))
            results.append(r)
            if args.out:  # after every run: a long one keeps what it measured
                args.out.write_text(json.dumps(results, indent=1))
        sources.drop_topic(ctx, f"topic:synthetic:{n}")
    for fetch in args.partition_fetch_bytes:
        peaks = [
            r["peak_rss_mib"] for r in results if r["partition_fetch_bytes"] == (fetch or None)
        ]
        if len(peaks) > 1:
            ctx.log(
                f"peak RSS, largest/smallest size{f' (fetch {fetch:,})' if fetch else ''}: "
                f"{peaks[-1]:.0f}/{peaks[0]:.0f} MiB = {peaks[-1] / peaks[0]:.2f}"
            )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rss_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the worker")
    parser.add_argument("--snapshots", type=float, nargs="+", default=[0.2, 0.6, 1.0])
    parser.add_argument("--frames", type=int, default=2, help="traceback depth when tracing")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--partition-fetch-bytes", type=int, nargs="+", default=[0])
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--redis-db",
        type=int,
        default=None,
        help="use this Redis database (claimed, emptied); default: the first free of 14..1",
    )
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return
    settings = get_settings()
    if args.redis_db is not None:
        claim_db(settings, args.redis_db)
        settings = settings.with_redis_db(args.redis_db)
    try:
        with open_context(
            settings, claim=args.redis_db is None, prefix=f"bench.rss.{os.getpid()}"
        ) as ctx:
            results = _runs(ctx, args)
    finally:
        if args.redis_db is not None:
            release_db(settings, args.redis_db)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
