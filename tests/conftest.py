"""Fixtures that give tests the real Kafka and Redis.

Order: servers named by ENGAGE_* variables; else Docker via testcontainers when an engine
answers; else the project's own local stack (started here if nothing answers, and stopped
at the end if this session started it). Outside CI a test that needs servers which cannot be
had is skipped with the reason; in CI (CI=true) it fails instead.

Tiers: every test that uses the server fixtures is marked `stack` at collection (by fixture,
below), long tests that need no server `slow`; `make unit` runs the rest, with no server, and
there a test that reaches for the servers without the mark fails at once, naming the fix.
"""

from __future__ import annotations

import importlib.util
import os
import re
import uuid
from collections.abc import Iterator

import pytest
import redis
from kafka.errors import KafkaError

from engage.kafka_clients import admin_client
from engage.redis_client import connect
from engage.settings import Settings, get_settings
from engage.stack import manager
from engage.stack.containers import containers, docker_engine_answers
from engage.stack.errors import StackError

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DB_CLAIM = "engage:test-db-claim:{}"
#: The tags in this session's topic names (`session_tag`): the session deletes those topics
#: when it ends, so tests run against a long-lived broker do not leave theirs behind (a
#: developer's broker held 1,143 of them after a few days of runs).
SESSION_TAGS: set[str] = set()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long fault and load tests")


#: The fixtures that give a test the real servers: a test that uses any of them, directly or
#: through its own fixtures, is marked `stack` at collection, so `make unit` (-m "not stack")
#: leaves it out without anyone having to remember the mark.
SERVER_FIXTURES = frozenset(
    {
        "stack_settings",
        "test_redis_db",
        "settings",
        "redis_client",
        "private_redis",
        "private_kafka",
    }
)
#: Parametrised fixtures that reach the servers only for some parameters, through
#: request.getfixturevalue (invisible to the fixture closure): (module, fixture, parameter).
SERVER_PARAMS = frozenset(
    ("test_state_store.py", "subject", store)
    for store in ("redis", "redis+local", "redis+small-local")
)


#: Tests that need no server but take many seconds (real MovieLens, training, backtests,
#: subprocesses that import the whole stack, 1000-example fuzzers): marked `slow` here, so
#: `make unit` stays under a minute; `make test` runs them. Module -> test function names.
SLOW_TESTS = {
    "test_cli_errors.py": {
        "test_replay_and_train_on_a_damaged_movielens_folder_is_exit_2",
        "test_consume_with_a_bad_rules_file_is_exit_2_before_connecting",
    },
    "test_fold.py": {"test_real_movielens_is_bit_identical"},
    "test_fuzz_decoder.py": {
        "test_corrupted_bytes_only_ever_raise_decode_error",
        "test_mutated_events_are_rejected_or_keep_the_invariants",
        "test_distinct_ids_never_share_a_key",
        "test_every_good_event_is_accepted_unchanged",
    },
    "test_offline_calibration.py": {
        "test_backtest_stays_before_the_test_period",
        "test_fitting_and_calibrating_never_read_the_test_rows",
        "test_test_period_diagnostic_scores_the_rule_training_serves",
    },
    "test_offline_train.py": {"test_train_run_writes_report_and_registers"},
    "test_online_calibration.py": {
        "test_engage_train_reports_and_registers_the_served_online_figures"
    },
    "test_partitioning.py": {"test_memory_stays_bounded_with_the_number_of_keys"},
}


def needs_servers(item: pytest.Item) -> bool:
    if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    module = item.path.name
    return any(
        (module, name, value) in SERVER_PARAMS
        for name, value in callspec.params.items()
        if isinstance(value, str)
    )


def unit_run(config: pytest.Config) -> bool:
    """True when the -m expression leaves the server tests out (`make unit`)."""
    return "not stack" in " ".join((config.getoption("markexpr") or "").split())


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "stack" not in item.keywords and needs_servers(item):
            item.add_marker(pytest.mark.stack)
        name = getattr(item, "originalname", item.name)
        if name in SLOW_TESTS.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)
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
def stack_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings pointing at a real, answering Kafka and Redis for the whole session."""
    if unit_run(request.config):
        pytest.fail(
            "this test reaches Kafka/Redis but is not marked `stack`: mark it "
            "(or add its fixture to SERVER_FIXTURES in tests/conftest.py); "
            "`make unit` never starts servers",
            pytrace=False,
        )
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
    delete_session_topics(base)
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


def session_tag() -> str:
    """A fresh tag for topic names; the session deletes every topic named with it at its end
    (`delete_session_topics`)."""
    tag = uuid.uuid4().hex[:8]
    SESSION_TAGS.add(tag)
    return tag


def session_topics(names: list[str]) -> list[str]:
    """Those of `names` made with this session's tags (a tag is one `.`- or `-`-separated
    part of the name: test.{tag}.events, test.{tag}-2.scores, fetched-{tag})."""
    return [name for name in names if SESSION_TAGS.intersection(re.split(r"[.-]", name))]


def delete_session_topics(settings: Settings) -> None:
    """Delete the topics this session's tests made; a failure is reported, never raised."""
    if not SESSION_TAGS:
        return
    try:
        admin = admin_client(settings)
    except KafkaError as exc:
        print(f"\n[stack] could not delete this session's topics: {exc}")
        return
    try:
        doomed = session_topics(admin.list_topics())
        for at in range(0, len(doomed), 100):
            admin.delete_topics(doomed[at : at + 100], timeout_ms=60_000)
        print(f"\n[stack] deleted this session's {len(doomed)} topics")
    except KafkaError as exc:
        print(f"\n[stack] could not delete this session's topics: {exc}")
    finally:
        admin.close()


def fresh_settings(stack_settings: Settings, db: int, **update: object) -> Settings:
    """Settings with fresh topic names on Redis database `db` (emptied)."""
    tag = session_tag()
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


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each Kafka client of the transport seam in turn (`Settings.kafka_client`); confluent
    needs `pip install 'engage[fast]'`: skipped without it, a failure in CI."""
    if request.param == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        message = "confluent-kafka is not installed (pip install 'engage[fast]')"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return request.param
