"""API latency benchmark (not a test): GET /users/{id}/score at a steady rate.

    python -m bench.api_latency [--rate 200] [--seconds 20] [--users 300]

Scores a few hundred synthetic users with the real consumer (fresh topic, a Redis database
claimed like the tests claim theirs), starts `engage serve` (uvicorn, one worker) on a free
loopback port, and fires requests open-loop at `--rate` from a separate process (raw asyncio
HTTP/1.1 over keep-alive connections, so the client adds as little as possible). Prints
p50/p95/p99/max in ms, measured from writing the request to reading the whole response.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from bench.common import engage_env, open_context
from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.redis_client import connect
from engage.settings import Settings
from features import keys
from producer.synthetic import SyntheticConfig, events

MAX_CONNECTIONS = 32


def seed(settings: Settings, users: int) -> list[str]:
    """Synthetic events into a fresh topic, scored by the real consumer; the scored ids."""
    kafka_clients.ensure_topic(settings, settings.events_topic)
    producer = kafka_clients.producer(settings)
    sent = 0
    for e in events(SyntheticConfig(users=users, days=2, seed=11)):
        producer.send(settings.events_topic, key=e.user_id.encode(), value=e.to_json())
        sent += 1
    producer.flush()
    producer.close()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    consumer = StreamConsumer(settings, group=f"{settings.events_topic}.api")
    try:
        consumer.run(idle_exit_s=10, max_events=sent)
    finally:
        consumer.close()
        for sig, handler in handlers.items():  # run() installed its own
            signal.signal(sig, handler)
    client = connect(settings)
    try:
        return [m.decode() for m in client.zrange(keys.leaderboard_key("rule"), 0, -1)]
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _request(pool: list, port: int, path: str) -> tuple[float, int]:
    if pool:
        try:
            return await _exchange(pool, pool.pop(), path)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the server closed an idle keep-alive connection (uvicorn: after 5 s)
    return await _exchange(pool, await asyncio.open_connection("127.0.0.1", port), path)


async def _exchange(pool: list, conn: tuple, path: str) -> tuple[float, int]:
    reader, writer = conn
    started = time.perf_counter()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    elapsed = time.perf_counter() - started
    if len(pool) < MAX_CONNECTIONS:
        pool.append(conn)
    else:
        writer.close()
    return elapsed, int(head.split(b" ", 2)[1])


async def _load(port: int, paths: list[str], rate: float, seconds: float) -> dict:
    pool: list = []
    for path in paths[:50]:  # warm-up: connections, imports, caches
        await _request(pool, port, path)
    total = int(rate * seconds)
    tasks, late = [], 0
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            late += 1
        tasks.append(asyncio.ensure_future(_request(pool, port, paths[i % len(paths)])))
    results = await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    return {"latencies": [r[0] for r in results], "statuses": [r[1] for r in results],
            "wall": wall, "late": late}  # fmt: skip


def load_process(port: int, paths: list[str], rate: float, seconds: float, out) -> None:
    try:
        out.send(asyncio.run(_load(port, paths, rate, seconds)))
    except BaseException as exc:  # the parent must not wait forever on a dead loader
        out.send({"error": repr(exc)})
        raise


@contextmanager
def serving(settings: Settings) -> Iterator[int]:
    """`engage serve` (one uvicorn worker) on a free loopback port until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "engage", "serve", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=engage_env(settings), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def measure(port: int, users: list[str], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop GETs of /users/{id}/score at `rate` for `seconds` from a separate process:
    latency percentiles in ms, achieved request rate, non-200 answers, requests sent late."""
    paths = [f"/users/{quote(u, safe='')}/score" for u in users]
    random.Random(0).shuffle(paths)
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    loader = ctx.Process(target=load_process, args=(port, paths, rate, seconds, theirs))
    loader.start()
    try:
        if not mine.poll(seconds + 60):
            raise RuntimeError("the load process did not report")
        result = mine.recv()
    finally:
        loader.join(timeout=10)
        if loader.is_alive():
            loader.kill()
    if "error" in result:
        raise RuntimeError(f"the load process failed: {result['error']}")
    ms = sorted(x * 1000 for x in result["latencies"])
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "requests": len(ms),
        "rate": rate,
        "achieved_per_s": len(ms) / result["wall"],
        "non_200": sum(1 for s in result["statuses"] if s != 200),
        "late": result["late"],
        "p50_ms": q[49],
        "p95_ms": q[94],
        "p99_ms": q[98],
        "max_ms": ms[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()
    with open_context(prefix="bench.api") as ctx:
        settings = ctx.fresh("api")
        users = seed(settings, args.users)
        print(f"scored users: {len(users)} (redis db {ctx.db})")
        with serving(settings) as port:
            r = measure(port, users, args.rate, args.seconds)
    print(f"GET /users/{{id}}/score: {r['requests']} requests at {args.rate:g} req/s "
          f"({r['achieved_per_s']:.0f} req/s achieved), non-200: {r['non_200']}, "
          f"sent >1 ms late: {r['late']}")  # fmt: skip
    print(f"latency ms: p50 {r['p50_ms']:.2f}  p95 {r['p95_ms']:.2f}  p99 {r['p99_ms']:.2f}  "
          f"max {r['max_ms']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
