"""`engage --version`, and the namespace options (--bootstrap-server, --redis-url, --topic):
they override the environment for the whole command, the scores and dead-letter topics follow
the events topic, and a Redis database that already holds another topic's users is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from kafka import TopicPartition

from engage import kafka_clients
from engage.cli_support import DATABASE_TOPICS_KEY
from engage.redis_client import connect
from engage.settings import Settings, derived_topic

DEAD = "127.0.0.1:1"  # nothing listens on port 1: the environment alone cannot work


def engage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`engage` with an environment that points nowhere usable: only the options can work."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    base.update(
        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=DEAD,
        ENGAGE_REDIS_URL=f"redis://{DEAD}/0",
        ENGAGE_EVENTS_TOPIC="never.used.events",
        **env,
    )
    return subprocess.run([sys.executable, "-m", "engage", *args], env=base,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_version() -> None:
    result = engage("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"engage {version('engage')}"


def test_scores_and_dead_letter_topics_follow_the_events_topic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert derived_topic("engage.events", "scores") == "engage.scores"  # the defaults agree
    assert derived_topic("trial", "deadletter") == "trial.deadletter"
    for name in ("EVENTS_TOPIC", "SCORES_TOPIC", "DEAD_LETTER_TOPIC"):
        monkeypatch.delenv(f"ENGAGE_{name}", raising=False)
    assert (Settings().scores_topic, Settings().dead_letter_topic) == (
        "engage.scores",
        "engage.deadletter",
    )
    named = Settings(events_topic="a.events")
    assert (named.scores_topic, named.dead_letter_topic) == ("a.scores", "a.deadletter")
    monkeypatch.setenv("ENGAGE_SCORES_TOPIC", "mine")  # set explicitly: kept
    kept = Settings(events_topic="a.events")
    assert (kept.scores_topic, kept.dead_letter_topic) == ("mine", "a.deadletter")


def test_an_option_is_validated_like_the_environment() -> None:
    result = engage(
        "top", "--redis-url", "redis://:hunter2@127.0.0.1:1/0", ENGAGE_REDIS_PASSWORD="other"
    )
    assert result.returncode == 2, result.stderr
    assert "invalid settings" in result.stderr and "both redis_url and redis_password" in (
        result.stderr
    )
    assert "hunter2" not in result.stderr


def _count(settings: Settings, topic: str) -> int:
    reader = kafka_clients.consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        return sum(reader.end_offsets(tps).values()) if tps else 0
    finally:
        reader.close()


@pytest.mark.stack
def test_commands_use_the_named_servers_and_topic(settings: Settings) -> None:
    first = settings.events_topic
    second = first.replace(".events", "-2.events")
    servers = ["--bootstrap-server", settings.kafka_bootstrap_servers,
               "--redis-url", settings.redis_url]  # fmt: skip

    sent = engage("replay", "synthetic", "--users", "8", "--days", "1", "--json",
                  *servers, "--topic", first)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    summary = json.loads(sent.stdout)
    assert summary["topic"] == first and summary["sent"] == _count(settings, first) > 0

    consumed = engage("consume", "--idle-exit", "3", "--json", *servers, "--topic", first)
    assert consumed.returncode == 0, consumed.stderr
    assert json.loads(consumed.stdout)["processed"] == summary["sent"]
    assert "warning" not in consumed.stderr  # a fresh database: nothing to warn about
    # The scores went to the topic derived from --topic, not to the environment's.
    assert _count(settings, derived_topic(first, "scores")) == summary["sent"]

    stats = engage("stats", "--json", *servers, "--topic", first)
    assert stats.returncode == 0, stats.stderr
    counted = json.loads(stats.stdout)
    assert (counted["topic"], counted["processed"], counted["total_lag"]) == (
        first,
        summary["sent"],
        0,
    )
    top = engage("top", "3", "--json", "--redis-url", settings.redis_url)
    assert top.returncode == 0, top.stderr
    assert len(json.loads(top.stdout)) == 3

    # A second topic into the same database continues the first one's users: each command of
    # the second topic that touches the database says so, once.
    replayed = engage("replay", "synthetic", "--users", "2", "--days", "1", "--json", *servers,
                      "--topic", second)  # fmt: skip
    again = engage("consume", "--idle-exit", "3", "--json", *servers, "--topic", second)
    stats = engage("stats", "--json", *servers, "--topic", second)
    for result in (replayed, again, stats):
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and first in warnings[0] and second in warnings[0], warnings
    assert {t.decode() for t in connect(settings).smembers(DATABASE_TOPICS_KEY)} == {
        first,
        second,
    }
