"""Issue 18 item 4 through Kafka and `engage consume`: a synthetic funnel replayed with a model
registered; the funnel propensity scores wait for their user's conversion (horizon 1 day, at
most 60 waiting per partition), and `engage quality --json` counts the waiting and resolved
ones as a plain loop over the same events, partition by partition, counts them; the
propensity track's figures are offline.live_quality's."""

from __future__ import annotations

import pytest

from engage import kafka_clients
from engage.partitioning import positive_murmur2
from engage.settings import Settings
from offline.live_quality import log_quality
from producer import synthetic
from scoring.funnel_join import TRACK
from tests.test_consumer_faults import consumer_env, start_consumer
from tests.test_funnel_join import reference
from tests.test_live_quality_stream import _synthetic_model, close, engage, quality_json

pytestmark = pytest.mark.stack

PARTITIONS, HORIZON_S, CAP = 3, 86_400, 60


def test_waiting_and_resolved_counts_are_an_independent_count_of_the_replay(
    settings: Settings, redis_client, tmp_path
):
    update = {"data_dir": tmp_path, "partitions": PARTITIONS, "live_quality": True,
              "funnel_label_horizon_s": float(HORIZON_S), "funnel_max_pending": CAP}  # fmt: skip
    settings = settings.model_copy(update=update)
    kafka_clients.ensure_topic(settings, settings.events_topic, PARTITIONS)
    bundle = _synthetic_model(settings)
    config = synthetic.SyntheticConfig(users=600, days=4, seed=2)
    replay = engage(settings, "replay", "synthetic", "--users", "600", "--days", "4",
                    "--seed", "2", "--json", ENGAGE_PARTITIONS=str(PARTITIONS))  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    env = consumer_env(settings, ENGAGE_LIVE_QUALITY="true", ENGAGE_PARTITIONS=str(PARTITIONS),
                       ENGAGE_FUNNEL_LABEL_HORIZON_S=str(HORIZON_S),
                       ENGAGE_FUNNEL_MAX_PENDING=str(CAP),
                       ENGAGE_BATCH_MAX_RECORDS="150")  # fmt: skip
    proc = start_consumer(env, f"funnel-{settings.events_topic}", idle_exit=3)
    _out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = quality_json(settings)
    assert report["problems"] == []

    events = list(synthetic.events(config))  # the independent count: the definition's loop
    expected = dict.fromkeys(("waiting", "positive", "expired", "skipped", "dropped"), 0)
    for p in range(PARTITIONS):
        rows = [(e.user_id, e.ts, 0.5, e.engaged) for e in events
                if positive_murmur2(e.user_id.encode()) % PARTITIONS == p]  # fmt: skip
        _resolved, counts = reference(rows, HORIZON_S * 1000, CAP)
        for name, value in counts.items():
            expected[name] += value
    funnel = report["funnel"]
    print("funnel labels", funnel)
    assert {k: funnel[k] for k in expected} == expected
    assert all(expected.values())  # every outcome happened
    assert funnel["horizon_s"] == [float(HORIZON_S)] and funnel["partitions"] == PARTITIONS
    assert funnel["model_versions"] == [bundle.version]
    shown = engage(settings, "quality")
    assert shown.returncode == 0, shown.stderr
    print("\n".join(line for line in shown.stdout.splitlines() if "funnel prop" in line
                     or line.startswith(("resolved", "not kept"))))  # fmt: skip
    assert f"(horizon 24 h): {expected['waiting']:,} waiting for a conversion" in shown.stdout

    offline = log_quality(events, synthetic.synthetic_item_meta(), bundle, settings)
    assert offline["funnel"] == expected
    track = report["quality"][TRACK]
    assert track["labelled"] == expected["positive"] + expected["expired"]
    assert close(track, offline["quality"][TRACK]) == []
