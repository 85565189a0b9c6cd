"""The consumer as a measured subprocess, and the harness side that starts and stops it.

    python -m bench.consumer_worker     (then one JSON job line on stdin)

The worker imports everything, then reads its job: which consumer (`kind`), ENGAGE_*
variables (as for `engage consume`), the group, a `go` file path, whether to keep latencies
and how many to drop as warm-up. (So a spare worker can be started ahead of time.) It runs the
real `StreamConsumer` (rules, the registered model if any, scores topic), or with kind "floor"
the job floor of bench/floor.py, holding its partitions paused until the `go` file exists, so
several workers can all join the group before any starts (no rebalance inside the measured
span), and runs until SIGTERM. On stdout it writes JSON lines: `{"assigned": [...]}` at every
assignment, then one summary with its batch span (on the system-wide monotonic clock, so spans
of several processes can be merged), its CPU time over that span (user + system, all threads),
its peak RSS (VmHWM) and, if asked, event-to-score percentiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench.common import Context, engage_env, process_cpu_s, rss_mib, stack_server_pids
from bench.floor import FloorConsumer
from consumer.runner import RunSummary, StreamConsumer
from engage.settings import Settings, get_settings

JOIN_TIMEOUT_S = 90.0
#: Fractions of a run's events over which its head and tail CPU per event are read (the
#: head skips the first tenth: start-up and compilation are not growth).
HEAD, TAIL = (0.1, 0.2), (0.9, 1.0)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Measured(Protocol):
    """What the worker runs: engage's `StreamConsumer`, or the job floor (bench/floor.py).

    `kafka` is a kafka-python KafkaConsumer or an engage transport consumer; partitions are
    TopicPartitions or partition numbers accordingly (the gate takes either)."""

    kafka: Any
    stopping: bool

    def seek_to_stored(self, partitions: list[Any]) -> None: ...


class Gate:
    """Holds a consumer's partitions paused until the `go` file exists, and reads its CPU time
    over the busy span: from the first poll that returns records to the end of the last batch.

    It wraps the instance's `kafka.poll` and `seek_to_stored` (every assignment seeks), so
    both consumers are gated and measured by the same code."""

    def __init__(self, consumer: Measured, go: Path) -> None:
        self.kafka = consumer.kafka
        self.go = go
        self.released = False
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.marks: list[tuple[int, float]] = []  # (events done, CPU s) after each batch
        #: The consumer thread's own (on-CPU s, runnable-but-waiting s, wall s) at the span's
        #: start and end: how much of the span the one thread that runs the batches ran.
        self.thread_first: tuple[float, float, float] | None = None
        self.thread_last: tuple[float, float, float] | None = None
        #: This project's broker and Redis (when it started them): their CPU over the span.
        self.servers = {n: p for n, p in stack_server_pids(get_settings()).items() if p}
        self.servers_first: dict[str, float | None] = {}
        self.servers_last: dict[str, float | None] = {}
        self._poll = self.kafka.poll
        self._seek = consumer.seek_to_stored
        self.kafka.poll = self.poll  # type: ignore[method-assign]
        consumer.seek_to_stored = self.seek_to_stored  # type: ignore[method-assign]

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        if not self.released and self.go.exists():
            self.released = True
            self.kafka.resume(*self.kafka.paused())
        polled = self._poll(*args, **kwargs)
        if polled and self.cpu_first is None:
            self.cpu_first = time.process_time()
            self.marks.append((0, self.cpu_first))
            self.thread_first = thread_schedstat()
            self.servers_first = {n: process_cpu_s(p) for n, p in self.servers.items()}
        return polled

    def seek_to_stored(self, partitions: list[Any]) -> None:
        self._seek(partitions)
        if not self.released:
            self.kafka.pause(*partitions)
        _emit({"assigned": sorted(getattr(p, "partition", p) for p in partitions)})

    def batch_done(self, summary: RunSummary) -> None:
        self.cpu_last = time.process_time()
        self.marks.append((summary.processed + summary.dead_lettered, self.cpu_last))
        self.thread_last = thread_schedstat()
        self.servers_last = {n: process_cpu_s(p) for n, p in self.servers.items()}

    def servers_cpu_s(self) -> dict[str, float]:
        """The CPU seconds each server of this project's stack spent over the busy span."""
        out = {}
        for name, first in self.servers_first.items():
            last = self.servers_last.get(name)
            if first is not None and last is not None:
                out[name] = last - first
        return out

    def consumer_thread(self) -> dict[str, float] | None:
        """The consumer thread over the busy span: its CPU, the time it was runnable but
        waited for a core, and the span's wall time (s); None where Linux's schedstat is not
        there. The rest of the span it slept: for the GIL, Redis, Kafka or the model."""
        first, last = self.thread_first, self.thread_last
        if first is None or last is None:
            return None
        on_cpu, waiting, wall = (b - a for a, b in zip(first, last, strict=True))
        return {"cpu_s": on_cpu, "runnable_s": waiting, "wall_s": wall}

    def cpu_us_between(self, start: float, end: float) -> float | None:
        """CPU per event (us) from the batch that reached the `start` fraction of the run's
        events to the one that reached `end`: the cost at two points of one run, free of the
        machine's speed drifting between separate runs."""
        if len(self.marks) < 2 or self.marks[-1][0] <= 0:
            return None
        total = self.marks[-1][0]
        first = [m for m in self.marks if m[0] <= start * total][-1]  # marks[0] has 0 events
        last = next(m for m in self.marks if m[0] >= end * total)
        return (last[1] - first[1]) / (last[0] - first[0]) * 1e6

    @property
    def cpu_s(self) -> float | None:
        """User + system CPU of the whole process (every thread: the clients' I/O threads
        too) over the busy span."""
        if self.cpu_first is None or self.cpu_last is None:
            return None
        return self.cpu_last - self.cpu_first


def thread_schedstat() -> tuple[float, float, float] | None:
    """This thread's (on-CPU s, runnable-but-waiting s) from Linux's schedstat, and the
    monotonic clock; None elsewhere."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting = (int(x) / 1e9 for x in f.read().split()[:2])
    except (OSError, ValueError):
        return None
    return on_cpu, waiting, time.monotonic()


def _watch_parent(consumer: Measured) -> None:
    """Stop if the harness dies (the worker must never outlive it)."""
    parent = os.getppid()
    while not consumer.stopping:
        if os.getppid() != parent:
            consumer.stopping = True
        time.sleep(1.0)


def worker_main() -> None:
    line = sys.stdin.readline()
    if not line:  # a spare worker that was never needed
        return
    job = json.loads(line)
    for name in [n for n in os.environ if n.startswith("ENGAGE_")]:
        del os.environ[name]
    os.environ.update(job["env"])
    get_settings.cache_clear()
    latencies, drop = job["latencies"], job["drop"]
    consumer: StreamConsumer | FloorConsumer
    if job["kind"] == "floor":
        consumer = FloorConsumer(get_settings(), job["group"])
    else:
        consumer = StreamConsumer(get_settings(), group=job["group"], keep_latencies=latencies)
    gate = Gate(consumer, Path(job["go"]))
    # The run installs its own handlers and gives these back when it ends: a SIGTERM after
    # that (e.g. the harness's second) must not kill the worker before its summary is out.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: setattr(consumer, "stopping", True))
    threading.Thread(target=_watch_parent, args=(consumer,), daemon=True).start()
    summary = consumer.run(on_batch=gate.batch_done)
    _, peak = rss_mib()
    result: dict[str, Any] = {
        "processed": summary.processed,
        "dead_lettered": summary.dead_lettered,
        "batches": summary.batches,
        "fenced": summary.fenced,
        "first_batch_at": summary.first_batch_at,
        "last_batch_at": summary.last_batch_at,
        "busy_rate": summary.busy_rate,
        "cpu_s": gate.cpu_s,
        # the run's second tenth and its last: how the cost per event grows with the state
        "cpu_us_head": gate.cpu_us_between(*HEAD),
        "cpu_us_tail": gate.cpu_us_between(*TAIL),
        "consumer_thread": gate.consumer_thread(),
        "servers_cpu_s": gate.servers_cpu_s(),
        "peak_rss_mib": round(peak, 1),
        "model_version": summary.model_version,
        "errors": summary.errors,
    }
    if latencies:
        lat = np.asarray(summary.latencies_ms[drop:] or summary.latencies_ms, dtype=float)
        if len(lat):
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            result.update(
                latency_n=len(lat),
                p50_ms=float(p50),
                p95_ms=float(p95),
                p99_ms=float(p99),
                max_ms=float(lat.max()),
            )
    _emit({"summary": result})


# --------------------------------------------------------------------------- harness side


@dataclass
class WorkerProcess:
    """One worker subprocess; a thread reads its JSON lines."""

    proc: subprocess.Popen
    stderr: Any
    assigned: list[int] | None = None
    summary: dict[str, Any] | None = None
    signalled: bool = False

    @classmethod
    def spawn(cls) -> WorkerProcess:
        """A worker importing its modules, waiting for its job on stdin."""
        stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.consumer_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        worker = cls(proc, stderr)
        threading.Thread(target=worker._read, daemon=True).start()
        return worker

    def assign(
        self, settings: Settings, group: str, go: Path, latencies: bool, drop: int, kind: str
    ) -> None:
        job = {
            "kind": kind,
            "env": {k: v for k, v in engage_env(settings).items() if k.startswith("ENGAGE_")},
            "group": group,
            "go": str(go),
            "latencies": latencies,
            "drop": drop,
        }
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:  # it died before its job, e.g. an import failed
            self.proc.wait()
            raise RuntimeError(
                f"consumer worker exited with {self.proc.returncode} before its job: "
                f"{self.stderr_tail()}"
            ) from None

    def discard(self) -> None:
        """End a worker that has no job (it exits when its stdin closes)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "assigned" in record:
                self.assigned = record["assigned"]
            elif "summary" in record:
                self.summary = record["summary"]

    def check_alive(self) -> None:
        if self.proc.poll() is not None and self.summary is None:
            raise RuntimeError(
                f"consumer worker exited with {self.proc.returncode}: {self.stderr_tail()}"
            )

    def stderr_tail(self, chars: int = 1500) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-chars:]

    def signal_stop(self) -> None:
        """SIGTERM, once: the consumer finishes its batch, leaves the group and reports."""
        if self.proc.poll() is None and not self.signalled:
            self.signalled = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        self.signal_stop()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        deadline = time.monotonic() + 5
        while self.summary is None and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            if self.summary is None:
                raise RuntimeError(f"consumer worker gave no summary: {self.stderr_tail()}")
            return self.summary
        finally:
            self.stderr.close()


class WorkerPool:
    """Hands out workers; with `spare`, one more is always already started (the quick smoke:
    its start-up then overlaps the run before; a full run starts each worker in turn)."""

    def __init__(self, spare: bool) -> None:
        self.spare = spare
        self.ready: list[WorkerProcess] = []
        if spare:
            self.ready.append(WorkerProcess.spawn())

    def take(self) -> WorkerProcess:
        worker = self.ready.pop() if self.ready else WorkerProcess.spawn()
        if self.spare and not self.ready:
            self.ready.append(WorkerProcess.spawn())
        return worker

    def close(self) -> None:
        while self.ready:
            self.ready.pop().discard()


def run_consumers(
    ctx: Context,
    settings: Settings,
    expected: int | None,
    processes: int = 1,
    latencies: bool = False,
    drop: int = 0,
    during: Callable[[], int] | None = None,
    kind: str = "engage",
) -> dict[str, Any]:
    """Start `processes` workers (`kind` "engage": the real consumer; "floor": bench/floor.py)
    in one fresh group on `settings`' topic, release them together, wait until `expected`
    events (or what `during()` returns: it produces while they run) are applied, stop them.
    Rate = events / (last batch of any worker - first batch of any); CPU = the workers' CPU
    over their busy spans, summed."""
    group = f"{settings.events_topic}.g{time.time_ns()}"
    with tempfile.TemporaryDirectory(prefix="engage-bench-") as tmp:
        go = Path(tmp) / "go"
        pool = ctx.cache.get("workers") or WorkerPool(spare=False)
        workers = [pool.take() for _ in range(processes)]
        for w in workers:
            w.assign(settings, group, go, latencies, drop, kind)
        try:
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while True:
                for w in workers:
                    w.check_alive()
                held = [w.assigned for w in workers]
                if all(held) and sorted(p for h in held for p in h or []) == list(
                    range(settings.partitions)
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumers did not share the partitions: {held}")
                time.sleep(0.05)
            go.touch()
            if during is not None:
                expected = during()
            assert expected is not None
            deadline = time.monotonic() + 600 + expected / 1000  # at least 1,000 events/s
            while ctx.processed(settings.events_topic) < expected:
                for w in workers:
                    w.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"consumers did not finish {expected} events in time")
                time.sleep(0.1)
            for w in workers:
                w.signal_stop()
            summaries = [w.stop() for w in workers]
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                    w.proc.wait()
    first = min(s["first_batch_at"] for s in summaries if s["first_batch_at"] is not None)
    last = max(s["last_batch_at"] for s in summaries if s["last_batch_at"] is not None)
    events = sum(s["processed"] + s["dead_lettered"] for s in summaries)
    cpu = [s["cpu_s"] for s in summaries]
    cpu_s = sum(cpu) if None not in cpu else None
    result: dict[str, Any] = {
        "events": events,
        "expected": expected,
        "events_per_s": events / (last - first) if last > first else 0.0,
        "cpu_s": cpu_s,
        "cpu_us_per_event": cpu_s / events * 1e6 if cpu_s is not None and events else None,
        "peak_rss_mib": max(s["peak_rss_mib"] for s in summaries),
        # one process's head and tail (HEAD, TAIL); None over several
        "cpu_us_head": summaries[0].get("cpu_us_head") if processes == 1 else None,
        "cpu_us_tail": summaries[0].get("cpu_us_tail") if processes == 1 else None,
        "consumer_thread": _thread_figures(summaries[0], events) if processes == 1 else None,
        "servers_cpu_s": summaries[0].get("servers_cpu_s") if processes == 1 else None,
        "model_version": summaries[0]["model_version"],
        "errors": sorted({e for s in summaries for e in s["errors"]}),
        "processes": summaries,
    }
    if latencies:
        result.update(
            {
                k: summaries[0][k]
                for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "latency_n")
                if k in summaries[0]
            }
        )
    return result


def _thread_figures(summary: dict[str, Any], events: int) -> dict[str, float] | None:
    """One process's consumer thread: its CPU per event (us) and the shares of the busy
    span it ran, waited for a core, and slept (GIL, Redis, Kafka, the model's threads)."""
    thread = summary.get("consumer_thread")
    if not thread or not events or thread["wall_s"] <= 0:
        return None
    wall = thread["wall_s"]
    ran, waited = thread["cpu_s"] / wall, thread["runnable_s"] / wall
    return {"cpu_us_per_event": thread["cpu_s"] / events * 1e6, "ran": ran,
            "waited_for_core": waited, "slept": max(0.0, 1.0 - ran - waited)}  # fmt: skip


if __name__ == "__main__":
    worker_main()
