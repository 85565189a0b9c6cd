"""Fixtures that give tests the real Kafka and Redis.

Order: servers named by ENGAGE_* variables; else Docker via testcontainers when an engine
answers; else the project's own local stack (started here if nothing answers, and stopped
at the end if this session started it). Outside CI a test that needs servers which cannot be
had is skipped with the reason; in CI (CI=true) it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from engage.redis_client import connect
from engage.settings import Settings, get_settings
from engage.stack import manager
from engage.stack.containers import containers, docker_engine_answers
from engage.stack.errors import StackError

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DB_CLAIM = "engage:test-db-claim:{}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long fault and load tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI needs the real Kafka and Redis, but: {reason}", pytrace=False)
    pytest.skip(f"Kafka/Redis not available (outside CI, so skipping): {reason}")


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[Settings]:
    """Settings pointing at a real, answering Kafka and Redis for the whole session."""
    base = get_settings()
    named = base.explicitly_set("kafka_bootstrap_servers") or base.explicitly_set("redis_url")
    if not named and docker_engine_answers():
        with containers(base) as env:
            yield Settings(**{k.removeprefix("ENGAGE_").lower(): v for k, v in env.items()})
        return
    try:
        states = manager.up(base)
    except StackError as exc:
        _unavailable(str(exc))
    for s in states:
        if s.origin == "started":
            print(f"\n[stack] started {s.name} at {s.address} in {s.ready_s}s")
    yield base
    if any(s.origin == "started" for s in states):
        manager.down(base)


@pytest.fixture(scope="session")
def test_redis_db(stack_settings: Settings) -> Iterator[int]:
    """A Redis logical database this pytest session owns (claimed in db 0), so test sessions
    running side by side never flush each other's data."""
    claims = connect(stack_settings.with_redis_db(0))
    for db in range(1, 16):
        if claims.set(TEST_DB_CLAIM.format(db), os.getpid(), nx=True, ex=6 * 3600):
            break
    else:
        pytest.fail("all Redis test databases 1-15 are claimed by other test sessions")
    yield db
    claims.delete(TEST_DB_CLAIM.format(db))


def fresh_settings(stack_settings: Settings, db: int, **update: object) -> Settings:
    """Settings with fresh topic names on Redis database `db` (emptied)."""
    tag = uuid.uuid4().hex[:8]
    fresh = stack_settings.with_redis_db(db).model_copy(
        update={
            "events_topic": f"test.{tag}.events",
            "scores_topic": f"test.{tag}.scores",
            "dead_letter_topic": f"test.{tag}.deadletter",
            **update,
        }
    )
    connect(fresh).flushdb()
    return fresh


@pytest.fixture
def settings(stack_settings: Settings, test_redis_db: int) -> Settings:
    """Per-test settings: fresh topic names and an empty Redis database of this session."""
    return fresh_settings(stack_settings, test_redis_db)


@pytest.fixture
def redis_client(settings: Settings) -> redis.Redis:
    return connect(settings)
