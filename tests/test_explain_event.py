"""`engage explain --event ID` against the real stack: a log replayed through Kafka and the real
consumer with a registered model, then single events explained from the events topic and
checked against the score messages the consumer emitted for them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import orjson
import pytest
import xgboost as xgb

from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.settings import Settings
from features.digest import vector_digests
from features.fold import FoldState
from features.stream import StreamState
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES
from offline.dataset import build_dataset
from offline.explain_event import EventNotFound, explain_event, fold_to_event, print_report
from offline.export import export_topic
from offline.parity import OfflineEvents
from scoring.registry import ModelNotFound, ModelRegistry
from tests.conftest import fresh_settings
from tests.eventlog import engage_env, make_log, publish_log
from tests.offline_synth import fitted_bundle, synthetic_log
from tests.test_cli_commands import dead_port

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def replayed(stack_settings, test_redis_db, tmp_path_factory) -> tuple[Settings, list[dict]]:
    """400 events on one partition in batches of 60 (each a few users' runs), scored with a
    registered model (XGBoost interaction, logistic propensity); and the score messages."""
    settings = fresh_settings(
        stack_settings, test_redis_db, data_dir=tmp_path_factory.mktemp("explain"),
        batch_max_records=60, partitions=1,
    )  # fmt: skip
    events, meta = synthetic_log(n_users=30, per_user=20)
    data = build_dataset(events, meta, settings.feature_params)
    bundle = fitted_bundle(data, settings.feature_params, "xgboost", "logreg")
    ModelRegistry(settings, settings.feature_params).register(bundle)
    log, genres = make_log(n_users=16, events_per_user=25)
    kafka_clients.ensure_topic(settings, settings.events_topic, 1)
    publish_log(settings, log, genres)
    summary = StreamConsumer(settings, group=f"{settings.events_topic}.explain").run(idle_exit_s=2)
    assert summary.processed == len(log)
    return settings, score_messages(settings)


def score_messages(settings: Settings) -> list[dict]:
    reader = kafka_clients.consumer(settings, settings.scores_topic, consumer_timeout_ms=3000)
    try:
        return [orjson.loads(m.value) for m in reader]
    finally:
        reader.close()


def engage(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def pick(messages: list[dict], with_reasons: bool, source: str = "movielens") -> dict:
    """A rated event's message with (its user's latest of a batch) or without reasons."""
    for msg in messages:
        has = "interaction_reasons" in (msg["model"] or {})
        if has == with_reasons and msg["item_id"].startswith("m") and msg["offset"] > 100:
            return msg
    raise AssertionError(f"no message with_reasons={with_reasons}")


def test_an_event_without_served_reasons_is_explained_exactly(replayed):
    """Not its user's latest in its batch, so its message has probabilities and no reasons:
    the CLI recomputes the same probabilities (to the wire's 6 decimals) from the bit-identical
    features, and exact contributions that add up, with the bias, to the margin."""
    settings, messages = replayed
    msg = pick(messages, with_reasons=False)
    assert "propensity_reasons" not in msg["model"] and "features" not in msg
    done = engage(settings, "explain", "--event", msg["event_id"], "--json", "--top", "1000")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["event"]["event_id"] == msg["event_id"]
    assert (report["event"]["partition"], report["event"]["offset"]) == (0, msg["offset"])
    assert report["model"] == {"version": msg["model"]["version"], "chosen": "its score message"}
    assert report["message"]["carried_reasons"] is False
    assert report["features"]["identical"] is True
    assert report["features"]["digest"] == msg["fd"]

    bundle = ModelRegistry(settings, settings.feature_params).load(msg["model"]["version"])
    for name, model in (("interaction", bundle.interaction), ("propensity", bundle.propensity)):
        t = report["targets"][name]
        assert round(t["probability"], 6) == msg["model"][name] == t["served"], name
        assert t["agrees"] is True and t["exact"] is True
        assert len(t["reasons"]) == len(model.features) and t["rest"]["features"] == 0
        total = t["bias"] + sum(r["contribution"] for r in t["reasons"])
        assert total == pytest.approx(t["margin"], abs=1e-5), name
        values = [r["contribution"] for r in t["reasons"]]
        assert values == sorted(values, key=abs, reverse=True)
    # The bias is the model's own: XGBoost's expected margin, the logistic intercept.
    t = report["targets"]["interaction"]
    assert "TreeSHAP" in t["method"]
    x = np.array([np.nan if r["value"] is None else r["value"] for r in sorted(
        t["reasons"], key=lambda r: INTERACTION_FEATURES.index(r["feature"]))])  # fmt: skip
    assert vector_digests(x[None, :])[0] == msg["fd"]
    native = bundle.interaction.booster.predict(xgb.DMatrix(x[None, :]), pred_contribs=True)
    assert t["bias"] == pytest.approx(float(native[0, -1]), abs=1e-5)
    assert report["targets"]["propensity"]["bias"] == pytest.approx(bundle.propensity.intercept)
    rule = report["rule"]
    assert rule["score"] == msg["rule"]["score"] and rule["agrees"] is True
    assert rule["label"] == msg["rule"]["label"] and rule["reasons"]
    assert all({"signal", "points", "text"} <= set(r) for r in rule["reasons"])


def test_a_users_latest_event_and_the_human_view(replayed, tmp_path):
    """Its message carries reasons (approximate path contributions for XGBoost): probabilities
    still equal; the logistic model's served reasons equal the exact top three. The same
    from a snapshot, and the table view."""
    settings, messages = replayed
    msg = pick(messages, with_reasons=True)
    report = explain_event(settings, msg["event_id"], top=3)
    assert report["features"]["identical"] is True and report["message"]["carried_reasons"]
    for name in ("interaction", "propensity"):
        t = report["targets"][name]
        assert round(t["probability"], 6) == msg["model"][name] and t["agrees"], name
        assert t["served_reasons"] == msg["model"][f"{name}_reasons"]
    assert report["targets"]["interaction"]["served_reasons_method"].startswith("approximate")
    prop = report["targets"]["propensity"]
    assert {r["feature"]: round(r["contribution"], 4) for r in prop["reasons"]} == {
        r["feature"]: r["contribution"] for r in msg["model"]["propensity_reasons"]
    }
    assert len(prop["reasons"]) == 3 and prop["rest"]["features"] == len(PROPENSITY_FEATURES) - 3
    total = prop["bias"] + sum(r["contribution"] for r in prop["reasons"])
    assert total + prop["rest"]["contribution"] == pytest.approx(prop["margin"], abs=1e-9)

    export_topic(settings, tmp_path / "snap")
    again = explain_event(settings, msg["event_id"], snapshot=tmp_path / "snap", top=3)
    assert again["events_source"]["kind"] == "snapshot"
    assert again["features"] == report["features"] and again["targets"] == report["targets"]
    overridden = explain_event(settings, msg["event_id"], model=report["model"]["version"])
    assert overridden["model"]["chosen"] == "--model"
    with pytest.raises(ModelNotFound):
        explain_event(settings, msg["event_id"], model="v-none")

    shown = engage(settings, "explain", "--event", msg["event_id"])
    assert shown.returncode == 0, shown.stderr[-3000:]
    text = shown.stdout
    assert "bit for bit" in text and "exact TreeSHAP" in text and "(equal)" in text, text
    assert "interaction (xgboost)" in text and "propensity (logreg)" in text and "rule (" in text
    assert "served reasons, approximate" in text, text


def test_a_served_digest_that_differs_is_reported(replayed, capsys):
    """A later copy of a message with another item digest (the last copy wins): the
    explanation says the recomputed features are not the served ones, and which half."""
    settings, messages = replayed
    msg = pick(messages, with_reasons=False)
    head, tail = msg["fd"].split(":")
    producer = kafka_clients.producer(settings)
    try:
        forged = {**msg, "fd": f"{head}:{int(tail, 16) ^ 1:016x}"}
        producer.send(settings.scores_topic, key=msg["user_id"].encode(),
                      value=orjson.dumps(forged))  # fmt: skip
        producer.flush()
        report = explain_event(settings, msg["event_id"])
        f = report["features"]
        assert f["identical"] is False and f["user_context_identical"] is True
        assert f["item_identical"] is False and "single partition" in f["note"]
        assert f["served_digest"] == forged["fd"] and f["digest"] == msg["fd"]
        assert report["targets"]["interaction"]["agrees"]  # the probabilities are the same
        print_report(report)
        assert "NOT the served ones" in capsys.readouterr().out
    finally:  # the true copy again, for the other tests
        producer.send(settings.scores_topic, key=msg["user_id"].encode(), value=orjson.dumps(msg))
        producer.flush()
        producer.close()


def test_unknown_event_bad_arguments_and_services_down(replayed):
    settings, _ = replayed
    unknown = engage(settings, "explain", "--event", "no-such-event")
    assert unknown.returncode == 4 and "no-such-event" in unknown.stderr, unknown.stderr
    both = engage(settings, "explain", "--event", "x", "--from-topic")
    assert both.returncode == 2 and "--event" in both.stderr
    stray = engage(settings, "explain", "--top", "3")  # --top goes with --event
    assert stray.returncode == 2 and "--event" in stray.stderr, stray.stderr
    kafka_down = engage(settings, "explain", "--event", "x",
                        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{dead_port()}")  # fmt: skip
    assert kafka_down.returncode == 3 and "Kafka" in kafka_down.stderr, kafka_down.stderr
    redis_down = engage(settings, "explain", "--event", "x",
                        ENGAGE_REDIS_URL=f"redis://127.0.0.1:{dead_port()}/0")  # fmt: skip
    assert redis_down.returncode == 3 and "Redis" in redis_down.stderr, redis_down.stderr


def test_the_fold_stops_at_the_scored_copy():
    """No servers: the event's rows are the full fold's rows; a re-sent copy (duplicate) and
    an event a week late are refused as the consumer refuses them, so never explained."""
    settings = Settings()
    events, meta = synthetic_log(n_users=6, per_user=12)
    target = events[40]
    late = target.model_copy(update={"event_id": "late", "ts": events[-1].ts - 7 * 86_400_000})
    log = [*events, target, late.model_copy(update={"user_id": events[-1].user_id})]
    offline = OfflineEvents(log, [(0, i) for i in range(len(log))], meta, 1, 0, {"topic": "t"})
    whole = StreamState(settings.feature_params, settings.admission_policy,
                        FoldState(meta=dict(meta))).apply(log)  # fmt: skip
    row = whole.admitted.index(40)
    folded = fold_to_event(offline, target.event_id, settings)
    assert folded.position == (0, 40) and folded.refused_copies == []
    assert np.array_equal(folded.interaction, whole.out.before[row], equal_nan=True)
    assert np.array_equal(folded.after, whole.out.after[row], equal_nan=True)
    assert fold_to_event(offline, target.event_id, settings, (0, 12345)).position == (0, 40)
    assert sorted(reason.split(":")[0] for _, reason in whole.refused) == ["duplicate", "late"]
    with pytest.raises(EventNotFound, match="refused"):
        fold_to_event(offline, "late", settings)
    with pytest.raises(EventNotFound, match="no event 'nope'"):
        fold_to_event(offline, "nope", settings)
