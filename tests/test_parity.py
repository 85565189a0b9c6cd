"""`engage parity` against the real stack: replays through Kafka and the real consumer, then
the features and scores it logged are checked against the offline code's.

Two replays share this module's Redis database (each with its own topics, ids and items, so
their states never meet): one partition with a registered model, where everything must agree
to 1e-9, and six partitions, where user, session and context features and the user-only
scores must still agree and the item features' mismatch rate is only reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.settings import Settings
from features.events import Event
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES
from offline.dataset import build_dataset
from offline.export import export_topic
from offline.logged import logged_dataset
from offline.parity import feature_group, read_offline_topic, read_online, run_parity
from scoring.model import ModelBundle
from scoring.registry import ModelRegistry
from tests.conftest import fresh_settings
from tests.eventlog import engage_env, make_log, publish_log
from tests.offline_synth import fitted_bundle, synthetic_log
from tests.test_cli_commands import dead_port

pytestmark = pytest.mark.stack

BAD = [(b"u1", b"not json at all"), (b"user3", b'{"event_id":"x","user_id":"user3"}')]


def small_bundle(settings: Settings) -> ModelBundle:
    """XGBoost for interaction, logistic regression for propensity: both serving paths."""
    events, meta = synthetic_log(n_users=30, per_user=20)
    data = build_dataset(events, meta, settings.feature_params)
    return fitted_bundle(data, settings.feature_params, "xgboost", "logreg")


def prefixed_log(prefix: str, **kwargs: int) -> tuple[list[dict], dict]:
    """make_log with its own user, item and event ids, so two replays share one database."""
    events, genres = make_log(**kwargs)
    renamed = [
        {**e, "event_id": prefix + e["event_id"], "user_id": prefix + e["user_id"],
         "item_id": prefix + e["item_id"]}
        for e in events
    ]  # fmt: skip
    return renamed, {prefix + item: gs for item, gs in genres.items()}


def refused_extras(events: list[dict]) -> list[tuple[bytes, bytes]]:
    """Two re-sent events (duplicates) and one a week behind its user's latest (late): the
    consumer dead-letters them, and offline must refuse the same ones."""
    last = events[-1]
    late = {**last, "event_id": last["event_id"] + ":late", "ts": last["ts"] - 7 * 86_400_000}
    return [(e["user_id"].encode(), Event(**e).to_json()) for e in (events[-1], events[-2], late)]


def replay(settings: Settings, prefix: str) -> int:
    events, genres = prefixed_log(prefix, n_users=40, events_per_user=40)
    kafka_clients.ensure_topic(settings, settings.events_topic, settings.partitions)
    publish_log(settings, events, genres, extra=BAD + refused_extras(events))
    summary = StreamConsumer(settings, group=f"{settings.events_topic}.parity").run(idle_exit_s=2)
    assert summary.processed == len(events) and summary.dead_lettered == len(BAD) + 3
    assert summary.batches >= 8  # small batches: state goes through Redis many times
    return len(events)


@pytest.fixture(scope="module")
def base(stack_settings, test_redis_db, tmp_path_factory) -> Settings:
    data_dir = tmp_path_factory.mktemp("parity")
    settings = fresh_settings(
        stack_settings,
        test_redis_db,
        data_dir=data_dir,
        batch_max_records=150,
        log_features=True,
    )
    ModelRegistry(settings, settings.feature_params).register(small_bundle(settings))
    return settings


def renamed(settings: Settings, **update: object) -> Settings:
    tag = settings.events_topic.removesuffix(".events")
    return settings.model_copy(update={
        "events_topic": f"{tag}.{update['partitions']}p.events",
        "scores_topic": f"{tag}.{update['partitions']}p.scores",
        "dead_letter_topic": f"{tag}.{update['partitions']}p.deadletter", **update,
    })  # fmt: skip


@pytest.fixture(scope="module")
def one_partition(base) -> tuple[Settings, int]:
    settings = renamed(base, partitions=1)
    return settings, replay(settings, "one/")


@pytest.fixture(scope="module")
def six_partitions(base) -> tuple[Settings, int]:
    settings = renamed(base, partitions=6)
    return settings, replay(settings, "six/")


def engage(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def six_partitions_event_time(base) -> tuple[Settings, int]:
    """Six partitions, the consumer merging them by event time (consume_order)."""
    settings = renamed(base, partitions=6, consume_order="event_time")
    settings = settings.model_copy(update={
        name: getattr(settings, name).replace(".6p.", ".6p-event-time.")
        for name in ("events_topic", "scores_topic", "dead_letter_topic")
    })  # fmt: skip
    return settings, replay(settings, "six-et/")


def test_one_partition_every_feature_and_score_agrees(one_partition, tmp_path):
    settings, n = one_partition
    assert_everything_agrees(run_parity(settings), n, partitions=1)

    # The same from a Parquet snapshot of the events topic.
    export_topic(settings, tmp_path / "snap")
    from_snapshot = run_parity(settings, snapshot=tmp_path / "snap")
    assert from_snapshot["ok"] and from_snapshot["joined"] == n
    assert from_snapshot["events_source"]["kind"] == "snapshot"


@pytest.fixture(scope="module")
def one_partition_lean(base) -> tuple[Settings, int]:
    """One partition, score messages as served by default: digests, no vectors."""
    settings = renamed(base, partitions=1, log_features=False)
    settings = settings.model_copy(update={
        name: getattr(settings, name).replace(".1p.", ".1p-lean.")
        for name in ("events_topic", "scores_topic", "dead_letter_topic")
    })  # fmt: skip
    return settings, replay(settings, "lean/")


def test_lean_messages_are_checked_by_their_digests(one_partition_lean):
    """Without logged vectors every message's feature digests are compared; a message whose
    digest was changed fails parity and names its event."""
    settings, n = one_partition_lean
    report = run_parity(settings)
    assert report["ok"], report["failures"]
    assert report["scores_messages"]["without_features"] == n
    assert report["digests"] == {
        "compared": n,
        "user_context_mismatched": 0,
        "item_mismatched": 0,
        "item_exact": True,
        "sample": [],
    }
    assert all(f["compared"] == 0 for f in report["features"])

    event_id = "lean/t:7:6:20"
    key, payload = first_score(settings, event_id)
    assert "features" not in payload and len(payload["fd"]) == 33
    head, tail = payload["fd"].split(":")
    forged = {**payload, "fd": f"{head}:{int(tail, 16) ^ 1:016x}"}
    producer = kafka_clients.producer(settings)
    producer.send(settings.scores_topic, key=key, value=orjson.dumps(forged))
    producer.flush()
    producer.close()
    report = run_parity(settings)
    [failure] = report["failures"]
    assert failure["kind"] == "digest" and failure["name"] == "item"
    assert failure["event_id"] == event_id and failure["mismatched"] == 1
    cli = engage(settings, "parity")
    assert cli.returncode == 1 and "--log-features" in cli.stderr, cli.stderr


def test_six_partitions_merged_by_event_time_agree_exactly(six_partitions_event_time):
    """The same six-partition replay that leaves item features apart in arrival order
    (`test_six_partitions_user_and_session_exact_items_reported`) agrees on every feature and
    every score when the consumer merges its partitions by event time, as training does."""
    settings, n = six_partitions_event_time
    assert_everything_agrees(run_parity(settings), n, partitions=6)


def assert_everything_agrees(report: dict, n: int, partitions: int) -> None:
    assert report["ok"], report["failures"]
    assert report["partitions"] == partitions and report["joined"] == n
    # Dead-lettered (undecodable, duplicate, late): on neither side.
    assert report["events"]["undecodable_excluded"] == len(BAD)
    refused = report["events"]["refused_excluded"]
    assert refused["count"] == 3 and refused["by_reason"] == {"duplicate": 2, "late": 1}
    assert report["missing"]["online_gap"]["count"] == 0
    assert report["missing"]["offline"]["count"] == 0
    assert report["scores_messages"]["duplicates"] == 0
    for feature in report["features"]:
        assert feature["compared"] == n and feature["mismatched"] == 0, feature
        assert feature["max_abs_diff"] <= 1e-9, feature
    assert all(g["events_mismatched"] == 0 for g in report["groups"].values())
    digests = report["digests"]
    assert digests["compared"] == n and digests["user_context_mismatched"] == 0
    assert digests["item_mismatched"] == 0
    # "exact" is what parity demands (items only on one partition), not the outcome.
    assert all(g["exact"] for g in report["groups"].values()) == (partitions == 1)
    (_version, status), *others = report["models"].items()
    assert not others and status == {"events": n, "loaded": True, "error": None}
    for score in ("interaction", "propensity", "rule", "interaction_online"):
        entry = report["scores"][score]
        assert entry["compared"] == n and entry["mismatched"] == 0, (score, entry)
        assert entry["max_abs_diff"] <= 1e-9


def first_score(settings: Settings, event_id: str) -> tuple[bytes, dict]:
    reader = kafka_clients.consumer(settings, settings.scores_topic, consumer_timeout_ms=5000)
    try:
        for message in reader:
            payload = orjson.loads(message.value)
            if payload["event_id"] == event_id:
                return message.key, payload
    finally:
        reader.close()
    raise AssertionError(f"no score for {event_id}")


def test_a_forged_feature_is_named_and_the_last_copy_wins(one_partition):
    settings, _ = one_partition
    event_id, feature = "one/t:7:6:20", "s_events"
    key, payload = first_score(settings, event_id)
    j = INTERACTION_FEATURES.index(feature)
    forged = {**payload, "features": list(payload["features"])}
    forged["features"][j] += 0.5
    producer = kafka_clients.producer(settings)
    producer.send(settings.scores_topic, key=key, value=orjson.dumps(forged))
    producer.flush()

    report = run_parity(settings)
    assert not report["ok"]
    assert report["scores_messages"]["duplicates"] == 1
    assert report["scores_messages"]["duplicates_differing"] == 1
    [failure] = report["failures"]
    assert failure["name"] == feature and failure["group"] == "session"
    assert failure["event_id"] == event_id and failure["mismatched"] == 1
    assert failure["online"] - failure["offline"] == 0.5
    cli = engage(settings, "parity")
    assert cli.returncode == 1, cli.stderr
    assert feature in cli.stderr and event_id in cli.stderr

    # A later re-emission of the true message (what a crashed batch does) wins again.
    producer.send(settings.scores_topic, key=key, value=orjson.dumps(payload))
    producer.flush()
    producer.close()
    again = run_parity(settings)
    assert again["ok"] and again["scores_messages"]["duplicates"] == 2


def test_the_served_online_calibrated_probability_agrees_and_a_forged_one_is_named(
    one_partition,
):
    """`interaction_online`, the probability as served (recalibrated by the consumer's
    calibrators per partition and domain), equals the same calibrators run offline over the
    same rows in event order; a message whose served probability was changed names its event."""
    settings, n = one_partition
    entry = run_parity(settings)["scores"]["interaction_online"]
    assert entry["exact"] and entry["compared"] == n and entry["mismatched"] == 0, entry
    online = read_online(settings)
    moved = online.scores["interaction_online"] - online.scores["interaction"]
    assert np.abs(moved).max() > 0  # the calibration did move the served probability

    event_id = min(e for e in online.index if e != "one/t:7:6:20")
    key, payload = first_score(settings, event_id)
    forged = {**payload, "model": {**payload["model"]}}
    forged["model"]["interaction_online"] = round(forged["model"]["interaction_online"] + 0.01, 6)
    producer = kafka_clients.producer(settings)
    producer.send(settings.scores_topic, key=key, value=orjson.dumps(forged))
    producer.flush()
    report = run_parity(settings)
    [failure] = report["failures"]
    assert (failure["kind"], failure["name"], failure["event_id"]) == (
        "score",
        "interaction_online",
        event_id,
    )
    assert abs(failure["online"] - failure["offline"] - 0.01) < 2e-6

    producer.send(settings.scores_topic, key=key, value=orjson.dumps(payload))  # true again
    producer.flush()
    producer.close()
    assert run_parity(settings)["ok"]


def test_six_partitions_user_and_session_exact_items_reported(six_partitions):
    settings, n = six_partitions
    cli = engage(settings, "parity", "--json")
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["partitions"] == 6 and report["joined"] == n and report["ok"]
    assert report["events"]["refused_excluded"]["count"] == 3
    for group in ("user", "session", "context"):
        g = report["groups"][group]
        assert g["exact"] and g["events_compared"] == n and g["events_mismatched"] == 0, g
    for feature in report["features"]:
        if feature_group(feature["name"]) != "item":
            assert feature["mismatched"] == 0 and feature["max_abs_diff"] == 0.0, feature
    item = report["groups"]["item"]
    assert not item["exact"] and isinstance(item["mismatch_rate"], float)
    assert 0.0 <= item["mismatch_rate"] <= 1.0
    # The user-only scores agree; the interaction score reads item features: reported only.
    assert report["scores"]["propensity"]["mismatched"] == 0
    assert report["scores"]["rule"]["mismatched"] == 0
    assert not report["scores"]["interaction"]["exact"]
    print(f"\nitem-feature mismatch rate, 6 partitions: {item['mismatch_rate']:.4f}")


def test_services_down_is_exit_3(one_partition):
    settings, _ = one_partition
    kafka_down = engage(
        settings, "parity", ENGAGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{dead_port()}"
    )
    assert kafka_down.returncode == 3 and "cannot reach Kafka" in kafka_down.stderr
    redis_down = engage(settings, "parity", ENGAGE_REDIS_URL=f"redis://127.0.0.1:{dead_port()}/0")
    assert redis_down.returncode == 3 and "cannot reach Redis" in redis_down.stderr


def test_nothing_scored_in_range_is_exit_4(one_partition, tmp_path: Path):
    settings, _ = one_partition
    result = engage(settings, "parity", "--since", "2099-01-01")
    assert result.returncode == 4 and "no scores" in result.stderr


@pytest.mark.parametrize("replayed", ["one_partition", "six_partitions"])
def test_training_rows_from_the_logged_vectors(replayed, request):
    """`engage train --logged-features`: the rows are what the consumer served, one per
    applied labelled event, in the order training replays; on one partition they equal the
    replayed rows exactly, on six the user and context columns do."""
    settings, _ = request.getfixturevalue(replayed)
    offline = read_offline_topic(settings)
    online = read_online(settings)
    data, coverage = logged_dataset(offline.events, online)
    replayed_rows = build_dataset(offline.events, offline.meta, settings.feature_params,
                                  admission=settings.admission_policy)  # fmt: skip
    assert coverage.used == len(data) == len(replayed_rows) > 0
    assert list(data.user_ids) == list(replayed_rows.user_ids)
    assert (data.y == replayed_rows.y).all() and (data.ts == replayed_rows.ts).all()
    n_user_context = len(PROPENSITY_FEATURES)
    if offline.partitions == 1:
        assert abs(data.X - replayed_rows.X).max() <= 1e-9
    else:
        assert (data.X[:, :n_user_context] == replayed_rows.X[:, :n_user_context]).all()
    served = list(dict.fromkeys(e.event_id for e in offline.events
                                if e.labelled and e.event_id in online.index))  # fmt: skip
    assert np.array_equal(data.X, online.features[[online.index[i] for i in served]])


def test_train_on_logged_vectors_from_the_cli(six_partitions):
    settings, _ = six_partitions
    done = engage(settings, "train", "--from-topic", "--logged-features", "--no-register",
                  "--bootstrap", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "logged features:" in done.stdout + done.stderr
    no_scores = engage(settings, "train", "--from-topic", "--logged-features", "--no-register",
                       ENGAGE_SCORES_TOPIC=f"{settings.scores_topic}.none")  # fmt: skip
    assert no_scores.returncode == 4, no_scores.stderr[-2000:]
