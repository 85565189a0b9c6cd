"""The long fault and load runs (issue 8): `pytest --soak tests/test_soak.py -s`.

- Crash chaos: 200,000 events, the consumer SIGKILLed at least 10 times at random moments and
  restarted; the final Redis state equals the independent reference.
- Load: synthetic funnel events replayed at a steady 5,000 events/s for 5 minutes into
  `SOAK_CONSUMERS` running `engage consume` processes of one group; consumer lag stays bounded
  and every process's memory flat.

Each prints a JSON line of what it measured; the last results are quoted in the README.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from kafka import TopicPartition

from engage import kafka_clients
from offline.dataset import build_dataset
from producer import synthetic
from producer.pacing import throttle
from producer.replay import ReplayOptions, replay
from scoring.registry import ModelRegistry
from tests.eventlog import make_log, publish_log
from tests.offline_synth import fitted_bundle
from tests.reference import diff_against_redis, reference_state
from tests.test_consumer_faults import (
    consumer_env,
    processed_so_far,
    start_consumer,
    wait_for,
)

pytestmark = [pytest.mark.stack, pytest.mark.soak]

SOAK_RATE = 5_000.0
SOAK_SECONDS = 300.0
#: One process does ~5,000-7,000 events/s on a quiet 2-core machine that also runs Kafka,
#: Redis and the replay; two in one group (the deployment the consumer group is for) leave
#: headroom, as a production sizing would.
SOAK_CONSUMERS = 2


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_sigkill_ten_times_during_200k_events(settings, redis_client):
    events, genres = make_log(n_users=2000, events_per_user=100, seed=21)
    publish_log(settings, events, genres)
    env = consumer_env(settings, ENGAGE_BATCH_MAX_RECORDS="500")
    group = f"chaos-{settings.events_topic}"
    rng = random.Random(8)
    kills, started = 0, time.monotonic()
    while kills < 12:
        proc = start_consumer(env, group, idle_exit=5)
        before = processed_so_far(redis_client, settings.events_topic)
        wait_for(lambda b=before: processed_so_far(redis_client, settings.events_topic) > b,
                 120, "the consumer to make progress", proc)  # fmt: skip
        time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 10, f"only {kills} kills before the log ran out"
    final = start_consumer(env, group, idle_exit=5)
    _out, err = final.communicate(timeout=900)
    assert final.returncode == 0, err[-3000:]
    assert processed_so_far(redis_client, settings.events_topic) == len(events)
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, redis_client) == []
    print(json.dumps({"soak": "chaos", "events": len(events), "kills": kills,
                      "seconds": round(time.monotonic() - started, 1)}))  # fmt: skip


def register_funnel_model(settings) -> str:
    """XGBoost interaction and propensity models trained on another synthetic funnel log (a
    different seed from the replayed one), registered where the consumers look: the soak
    serves rules *and* a model with contributions, as production would."""
    config = synthetic.SyntheticConfig(users=2_000, days=14, seed=9)
    data = build_dataset(synthetic.events(config), synthetic.synthetic_item_meta(),
                         settings.feature_params)  # fmt: skip
    bundle = fitted_bundle(data, settings.feature_params, "xgboost", "xgboost")
    return ModelRegistry(settings).register(bundle)


def test_steady_5000_per_second_for_5_minutes(settings, redis_client, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    model_version = register_funnel_model(settings)
    env = consumer_env(settings)
    procs = [start_consumer(env, f"soak-{settings.events_topic}", idle_exit=15)
             for _ in range(SOAK_CONSUMERS)]  # fmt: skip
    config = synthetic.SyntheticConfig(users=200_000, days=30, seed=4)
    total = int(SOAK_RATE * SOAK_SECONDS)
    stop = threading.Event()
    sent: dict[str, object] = {}
    options = ReplayOptions(items=synthetic.synthetic_item_meta(), limit=total, progress=False)
    producer = threading.Thread(
        target=lambda: sent.update(
            r=replay(throttle(synthetic.events(config), SOAK_RATE, stop), settings, options)
        )
    )
    kafka_clients.ensure_topic(settings, settings.events_topic)
    watcher = kafka_clients.consumer(settings)
    partitions = [TopicPartition(settings.events_topic, p)
                  for p in watcher.partitions_for_topic(settings.events_topic)]  # fmt: skip
    t0 = time.monotonic()
    producer.start()
    samples: list[dict[str, float]] = []
    while producer.is_alive():
        time.sleep(5.0)
        elapsed = time.monotonic() - t0
        processed = processed_so_far(redis_client, settings.events_topic)
        in_topic = sum(watcher.end_offsets(partitions).values())  # what has really arrived
        samples.append({"t": round(elapsed, 1), "in_topic": in_topic,
                        "lag": in_topic - processed,
                        "rss_mib": [round(rss_mib(p.pid), 1) for p in procs]})  # fmt: skip
        print(json.dumps(samples[-1]), flush=True)
        for proc in procs:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
    producer.join()
    watcher.close()
    wait_for(lambda: processed_so_far(redis_client, settings.events_topic) >= total, 120,
             "the consumers to catch up")  # fmt: skip
    caught_up_s = time.monotonic() - t0 - SOAK_SECONDS
    input_rate = total / (samples[-1]["t"] if samples else SOAK_SECONDS)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.communicate(timeout=60)

    steady = [s for s in samples if s["t"] >= 60]  # after the first minute's warm-up
    max_lag = max(s["lag"] for s in steady)
    first_rss = [sum(s["rss_mib"][i] for s in steady[:6]) / len(steady[:6])
                 for i in range(SOAK_CONSUMERS)]  # fmt: skip
    last_rss = [sum(s["rss_mib"][i] for s in steady[-6:]) / len(steady[-6:])
                for i in range(SOAK_CONSUMERS)]  # fmt: skip
    result = {"soak": "load", "rate": SOAK_RATE, "achieved_input_rate": round(input_rate),
              "consumers": SOAK_CONSUMERS, "model": model_version,
              "seconds": SOAK_SECONDS, "events": total,
              "max_lag_events": max_lag, "caught_up_after_s": round(caught_up_s, 1),
              "rss_mib_minute_1": [round(r, 1) for r in first_rss],
              "rss_mib_last_30s": [round(r, 1) for r in last_rss]}  # fmt: skip
    print(json.dumps(result))
    assert max_lag < 5 * SOAK_RATE, "lag grew past 5 seconds of input"
    for first, last in zip(first_rss, last_rss, strict=True):
        assert last < first * 1.2 + 20, "consumer memory grew"
