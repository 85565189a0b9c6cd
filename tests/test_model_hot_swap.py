"""A model registered while the consumer runs is served without a restart; a model built on
other feature code is refused and the running one keeps serving."""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from consumer.runner import StreamConsumer
from engage import kafka_clients
from offline.dataset import build_dataset
from scoring.model import ModelBundle
from scoring.registry import ModelRegistry
from tests.eventlog import make_log, publish_log
from tests.offline_synth import fitted_bundle, synthetic_log

pytestmark = pytest.mark.stack


def tiny_bundle(settings, feature_hash_: str | None = None) -> ModelBundle:
    events, meta = synthetic_log(n_users=30, per_user=20)
    data = build_dataset(events, meta, settings.feature_params)
    return fitted_bundle(data, settings.feature_params, "logreg", "logreg", feature_hash_)


def versions_on_scores_topic(settings, expected: int) -> dict[str, str | None]:
    """event_id -> the model version its score names (None: rule score only)."""
    reader = kafka_clients.consumer(settings, settings.scores_topic, consumer_timeout_ms=4000)
    versions = {}
    for message in reader:
        score = orjson.loads(message.value)
        versions[score["event_id"]] = score["model"]["version"] if score["model"] else None
        if len(versions) >= expected:
            break
    reader.close()
    return versions


def test_new_model_is_served_without_restart_and_a_wrong_hash_is_refused(settings, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path, "model_poll_s": 0.2})
    registry = ModelRegistry(settings, settings.feature_params)
    consumer = StreamConsumer(settings, group=f"{settings.events_topic}.swap")
    result = {}
    thread = threading.Thread(target=lambda: result.update(s=consumer.run(idle_exit_s=8)))
    thread.start()

    first, genres = make_log(n_users=10, events_per_user=10, seed=1)
    publish_log(settings, first, genres)
    time.sleep(2.0)  # scored with rules only: no model registered yet
    good = registry.register(tiny_bundle(settings))
    time.sleep(1.0)
    second, _ = make_log(n_users=10, events_per_user=10, seed=2)
    third, _ = make_log(n_users=10, events_per_user=10, seed=3)
    for shift, log in ((30, second), (60, third)):  # each log after the users' earlier events,
        for e in log:  # so none is dead-lettered as late (max_lateness_s)
            e["ts"] += shift * 86_400_000
    publish_log(settings, second, genres)
    time.sleep(2.0)
    bad = registry.register(tiny_bundle(settings, feature_hash_="0" * 16))
    time.sleep(1.0)
    publish_log(settings, third, genres)
    thread.join(timeout=60)

    versions = versions_on_scores_topic(settings, len(first) + len(second) + len(third))
    assert len(versions) == 300
    by_log = {n: {v for e, v in versions.items() if e.startswith(f"t:{n}:")} for n in (1, 2, 3)}
    assert by_log[1] == {None}  # rule scores only, and the message says so
    assert by_log[2] == {good}  # the new model, no restart
    assert by_log[3] == {good}  # the refused one never served
    assert any(bad in error and "feature hash" in error for error in result["s"].errors)
