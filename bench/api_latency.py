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
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import redis

from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.settings import Settings, get_settings
from features import keys
from producer.synthetic import SyntheticConfig, events

CLAIM = "engage:test-db-claim:{}"  # the same claims tests/conftest.py makes
MAX_CONNECTIONS = 32


def claim_db(settings: Settings) -> int:
    claims = redis.Redis.from_url(settings.with_redis_db(0).redis_url)
    for db in range(14, 0, -1):
        if claims.set(CLAIM.format(db), os.getpid(), nx=True, ex=3600):
            return db
    raise SystemExit("every Redis database 1-14 is claimed")


def seed(settings: Settings, users: int) -> list[str]:
    """Synthetic events into a fresh topic, scored by the real consumer; the scored ids."""
    kafka_clients.ensure_topic(settings, settings.events_topic)
    producer = kafka_clients.producer(settings)
    for e in events(SyntheticConfig(users=users, days=2, seed=11)):
        producer.send(settings.events_topic, key=e.user_id.encode(), value=e.to_json())
    producer.flush()
    producer.close()
    consumer = StreamConsumer(settings, group="bench-api")
    try:
        consumer.run(idle_exit_s=3)
    finally:
        consumer.close()
    client = redis.Redis.from_url(settings.redis_url)
    return [m.decode() for m in client.zrange(keys.leaderboard_key("rule"), 0, -1)]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()

    base = get_settings()
    db = claim_db(base)
    tag = uuid.uuid4().hex[:8]
    topics = {"events_topic": f"bench.{tag}.events", "scores_topic": f"bench.{tag}.scores",
              "dead_letter_topic": f"bench.{tag}.dlq"}  # fmt: skip
    settings = base.with_redis_db(db).model_copy(update=topics)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    server = None
    try:
        users = seed(settings, args.users)
        print(f"scored users: {len(users)} (redis db {db})")
        port = free_port()
        env = {**os.environ, "ENGAGE_REDIS_URL": settings.redis_url,
               "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
               "ENGAGE_EVENTS_TOPIC": settings.events_topic}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "engage", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the API did not start") from None
                time.sleep(0.1)
        paths = [f"/users/{quote(u, safe='')}/score" for u in users]
        random.Random(0).shuffle(paths)
        ctx = multiprocessing.get_context("spawn")
        mine, theirs = ctx.Pipe()
        loader = ctx.Process(target=load_process, args=(port, paths, args.rate, args.seconds,
                                                        theirs))  # fmt: skip
        loader.start()
        if not mine.poll(args.seconds + 60):
            raise SystemExit("the load process did not report")
        result = mine.recv()
        loader.join()
        if "error" in result:
            raise SystemExit(f"the load process failed: {result['error']}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        client.flushdb()
        redis.Redis.from_url(base.with_redis_db(0).redis_url).delete(CLAIM.format(db))
    ms = sorted(x * 1000 for x in result["latencies"])
    q = statistics.quantiles(ms, n=100, method="inclusive")
    bad = sum(1 for s in result["statuses"] if s != 200)
    print(f"GET /users/{{id}}/score: {len(ms)} requests at {args.rate:g} req/s for "
          f"{result['wall']:.1f} s ({len(ms) / result['wall']:.0f} req/s achieved), "
          f"non-200: {bad}, sent >1 ms late: {result['late']}")  # fmt: skip
    print(f"latency ms: p50 {q[49]:.2f}  p95 {q[94]:.2f}  p99 {q[98]:.2f}  max {ms[-1]:.2f}")


if __name__ == "__main__":
    main()
