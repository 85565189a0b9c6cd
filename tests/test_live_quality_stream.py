"""Issue 18's acceptance through Kafka and `engage consume`, a model registered in a temporary
data dir: the live prequential figures over the whole log (`engage quality --json`) are what
offline.live_quality computes over the same events in the same order, also with SIGKILLs at
random moments and a restart; a replay whose second half shifts one input names that feature
drifting, an unshifted one does not."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from engage import kafka_clients
from engage.settings import Settings
from features.events import Event
from features.items import ItemMeta
from features.vector import INTERACTION_FEATURES
from offline.dataset import build_dataset
from offline.live_quality import log_quality
from producer import synthetic
from scoring.drift import DriftReference
from scoring.registry import ModelRegistry
from tests.eventlog import engage_env, in_parts, make_log, publish_log
from tests.offline_synth import fitted_bundle, synthetic_log
from tests.test_consumer_faults import consumer_env, processed_so_far, start_consumer, wait_for

pytestmark = pytest.mark.stack


def engage(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip


def close(live: Any, offline: Any, path: str = "") -> list[str]:
    """Where two reports differ beyond floating-point tolerance (1e-9 relative)."""
    if isinstance(live, dict) and isinstance(offline, dict):
        if set(live) != set(offline):
            return [f"{path}: keys {sorted(live)} != {sorted(offline)}"]
        return [d for k in live for d in close(live[k], offline[k], f"{path}.{k}")]
    if isinstance(live, list) and isinstance(offline, list):
        if len(live) != len(offline):
            return [f"{path}: {len(live)} items != {len(offline)}"]
        return [d for i, (a, b) in enumerate(zip(live, offline, strict=True))
                for d in close(a, b, f"{path}[{i}]")]  # fmt: skip
    if isinstance(live, float) or isinstance(offline, float):
        if live is None or offline is None or not math.isclose(live, offline, rel_tol=1e-9,
                                                                abs_tol=1e-12):  # fmt: skip
            return [f"{path}: {live} != {offline}"]
        return []
    return [] if live == offline else [f"{path}: {live!r} != {offline!r}"]


def registered_model(settings: Settings):
    """XGBoost interaction model with its training reference, registered under data_dir."""
    events, meta = synthetic_log(n_users=40, per_user=30)
    data = build_dataset(events, meta, settings.feature_params)
    bundle = fitted_bundle(data, settings.feature_params)
    bundle.metrics["drift_reference"] = DriftReference.fit(
        data.X, data.y, INTERACTION_FEATURES
    ).as_dict()
    registry = ModelRegistry(settings, settings.feature_params)
    return registry.load(registry.register(bundle))


def quality_json(settings: Settings) -> dict[str, Any]:
    done = engage(settings, "quality", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def one_partition(settings: Settings, tmp_path) -> Settings:
    update = {"data_dir": tmp_path, "partitions": 1, "drift_block_vectors": 500,
              "drift_blocks": 4}  # fmt: skip
    settings = settings.model_copy(update=update)
    kafka_clients.ensure_topic(settings, settings.events_topic, 1)
    return settings


def _offline(settings: Settings, bundle, raw: list[dict], genres: dict) -> dict[str, Any]:
    events = [Event(**e) for e in raw]
    meta = {item: ItemMeta(tuple(gs)) for item, gs in genres.items()}
    return log_quality(events, meta, bundle, settings)


def _env(settings: Settings) -> dict[str, str]:
    return consumer_env(settings, ENGAGE_LIVE_QUALITY="true", ENGAGE_BATCH_MAX_RECORDS="150",
                        ENGAGE_PARTITIONS="1", ENGAGE_DRIFT_BLOCK_VECTORS="500",
                        ENGAGE_DRIFT_BLOCKS="4")  # fmt: skip


def _assert_live_is_offline(settings: Settings, offline: dict[str, Any]) -> dict[str, Any]:
    report = quality_json(settings)
    assert report["problems"] == []
    assert close(report["quality"], offline["quality"]) == []
    (drift,) = report["drift"]
    drift = {k: v for k, v in drift.items() if k not in ("model_version", "partitions")}
    assert close(drift, offline["drift"]) == []
    if offline["funnel"] is not None:  # the funnel propensity's delayed labels, counted alike
        assert {k: report["funnel"][k] for k in offline["funnel"]} == offline["funnel"]
    for domain in ("movielens", "funnel"):  # the acceptance's figures, named
        whole = report["quality"][domain]["windows"]["10000"]
        assert whole["n"] == offline["quality"][domain]["labelled"]  # the whole log
        expected = offline["quality"][domain]["windows"]["10000"]
        assert math.isclose(whole["roc_auc"], expected["roc_auc"], rel_tol=1e-9)
        assert math.isclose(whole["ece"], expected["ece"], rel_tol=1e-9)
    return report


def test_live_auc_and_ece_over_the_log_are_the_offline_figures(one_partition, redis_client):
    settings = one_partition
    bundle = registered_model(settings)
    raw, genres = make_log(n_users=60, events_per_user=60, seed=21)  # 3,600 events
    publish_log(settings, raw, genres)
    proc = start_consumer(_env(settings), f"live-{settings.events_topic}", idle_exit=3)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["model_version"] == bundle.version
    report = _assert_live_is_offline(settings, _offline(settings, bundle, raw, genres))
    for domain in ("movielens", "funnel"):
        windows = report["quality"][domain]["windows"]
        print(domain, {w: (f["n"], round(f["roc_auc"], 4), round(f["ece"], 4))
                       for w, f in windows.items()})  # fmt: skip
    stats = engage(settings, "stats", "--json")  # engage stats says it in brief
    assert stats.returncode == 0, stats.stderr
    brief = json.loads(stats.stdout)["quality"]
    assert brief["status"] == report["status"]
    assert brief["funnel_waiting"] == report["funnel"]["waiting"]
    for domain, f in brief["domains"].items():
        assert f["roc_auc"] == report["quality"][domain]["windows"]["10000"]["roc_auc"]


def test_sigkills_at_random_moments_and_a_restart_change_nothing(one_partition, redis_client):
    settings = one_partition
    bundle = registered_model(settings)
    raw, genres = make_log(n_users=120, events_per_user=100, seed=22)  # 12,000 events
    *runs, last = in_parts(raw, 5)  # one part per killed run: the log cannot run out early
    env = _env(settings)
    group = f"live-crashy-{settings.events_topic}"
    rng = random.Random(7)
    for part in runs:
        publish_log(settings, part, genres)
        proc = start_consumer(env, group, idle_exit=3)
        before = processed_so_far(redis_client, settings.events_topic)
        wait_for(lambda b=before: processed_so_far(redis_client, settings.events_topic) > b,
                 60, "the consumer to make progress", proc)  # fmt: skip
        time.sleep(rng.uniform(0.0, 0.5))
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # 3 s idle is its only exit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert processed_so_far(redis_client, settings.events_topic) < len(raw)
    publish_log(settings, last, genres)
    final = start_consumer(env, group, idle_exit=3)
    _out, err = final.communicate(timeout=240)
    assert final.returncode == 0, err
    assert processed_so_far(redis_client, settings.events_topic) == len(raw)
    _assert_live_is_offline(settings, _offline(settings, bundle, raw, genres))


def _synthetic_model(settings: Settings):
    """An interaction model of the synthetic funnel (a week, 1,500 users) with its reference."""
    config = synthetic.SyntheticConfig(users=1500, days=7, seed=1)
    events = list(synthetic.events(config))
    data = build_dataset(events, synthetic.synthetic_item_meta(), settings.feature_params)
    bundle = fitted_bundle(data, settings.feature_params)
    bundle.metrics["drift_reference"] = DriftReference.fit(
        data.X, data.y, INTERACTION_FEATURES
    ).as_dict()
    ModelRegistry(settings, settings.feature_params).register(bundle)
    return bundle


def _replay_and_consume(settings: Settings, *drift: str) -> dict[str, Any]:
    replay = engage(settings, "replay", "synthetic", "--users", "600", "--days", "4",
                    "--seed", "2", "--json", *drift)  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    env = consumer_env(
        settings,
        ENGAGE_LIVE_QUALITY="true",
        ENGAGE_DRIFT_BLOCK_VECTORS="200",
        ENGAGE_DRIFT_BLOCKS="8",
    )
    proc = start_consumer(env, f"drift-{settings.events_topic}", idle_exit=3)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = quality_json(settings)
    (entry,) = report["drift"]
    return entry


def test_a_shifted_feature_is_named_drifting_through_the_consumer(settings, redis_client, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    _synthetic_model(settings)
    feature = synthetic.DRIFT_FIELDS["account_balance"]  # ctx_log_balance
    drifted = _replay_and_consume(settings, "--drift-feature", "account_balance")
    plain_settings = settings.model_copy(update={
        name: getattr(settings, name).replace("test.", "test.plain.")
        for name in ("events_topic", "scores_topic", "dead_letter_topic")
    })  # fmt: skip
    redis_client.flushdb()  # the same users and events again: not duplicates of the first
    plain = _replay_and_consume(plain_settings)
    print("PSI of", feature, "shifted", round(drifted["features"][feature], 3),
          "unshifted", round(plain["features"][feature], 3),
          "unshifted drifting:", plain["drifting"])  # fmt: skip
    assert drifted["status"] == "drifting"
    assert feature in drifted["drifting"] and drifted["features"][feature] > 0.25
    assert feature in [row["feature"] for row in drifted["top"]]  # named in the top five
    assert feature not in plain["drifting"] and plain["features"][feature] < 0.25
