"""`engage quality` reads the per-partition quality and drift states from a real Redis (the
states written here with the modules the consumer uses), merges them and prints them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engage.output import plain
from scoring.drift import DriftMonitor, DriftReference
from scoring.funnel_join import FunnelJoin
from scoring.quality import LiveQuality, merged_summary
from scoring.quality_keys import drift_key, funnel_key, quality_key
from scoring.registry import MANIFEST_FILE
from tests.eventlog import engage_env

pytestmark = pytest.mark.stack
VERSION = "v20260101-000000-test"
FEATURES = ["a", "b", "c", "d"]


def engage(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def _register_reference(settings, reference: DriftReference) -> None:
    """A registered model as `engage quality` reads it: the manifest, with the reference."""
    folder = settings.data_dir / "models" / VERSION
    folder.mkdir(parents=True)
    manifest = {"version": VERSION, "feature_hash": "x", "metrics": {
        "drift_reference": reference.as_dict()}}  # fmt: skip
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _states(seed: int, shift: float) -> tuple[LiveQuality, DriftMonitor, DriftReference]:
    rng = np.random.default_rng(seed)
    n = 4000
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.float64)
    rule = np.clip(p * 100 + rng.normal(0, 20, n), 0, 100)
    ts = 1_700_000_000_000 + np.arange(n) * 600_000  # 10 minutes apart: ~28 days
    quality = LiveQuality()
    for a in range(0, n, 700):  # in batches, as the consumer feeds it
        quality.observe(p[a : a + 700], y[a : a + 700], rule[a : a + 700], ts[a : a + 700],
                        "movielens", VERSION)  # fmt: skip
    X_train = np.random.default_rng(0).normal(size=(5000, len(FEATURES)))
    reference = DriftReference.fit(X_train, (X_train[:, 0] > 0).astype(float), FEATURES)
    X = rng.normal(size=(n, len(FEATURES)))
    X[:, 0] += shift
    drift = DriftMonitor(reference, VERSION, block=500, blocks=4)
    drift.observe(X, y)
    return quality, drift, reference


def test_quality_merges_the_partitions_and_names_the_drifting_feature(settings, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    from engage.redis_client import connect

    client = connect(settings)
    topic = settings.events_topic
    states = [_states(seed=1, shift=0.0), _states(seed=2, shift=1.5)]
    _register_reference(settings, states[0][2])
    for partition, (quality, drift, _) in enumerate(states):
        client.set(quality_key(topic, partition), quality.to_bytes())
        client.set(drift_key(topic, partition), drift.to_bytes())
        # an hour's horizon: b converts (its conversion waits again); a's second event, past
        # the hour, expires a, b, c and d, then waits itself
        join = FunnelJoin(3_600_000, 10, VERSION)
        t = 1_700_000_000_000
        join.observe(["a", "b", "b", "c", "d", "a"], np.array([0, 0, 5, 6, 7, 3_600_008]) + t,
                     np.full(6, 0.5), np.full(6, 50.0),
                     np.array([0, 0, 1, 0, 0, 0], dtype=bool))  # fmt: skip
        client.set(funnel_key(topic, partition), join.to_bytes())
    client.set(quality_key(topic + "x", 0), b"another topic's state")  # not read

    result = engage(settings, "quality", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["partitions"] == {"quality": [0, 1], "drift": [0, 1]}
    expected = plain(merged_summary([q for q, _, _ in states])["domains"])
    assert report["quality"] == expected
    movielens = report["quality"]["movielens"]
    assert movielens["windows"]["1000"]["n"] == 2000  # the last 1,000 of each partition
    assert movielens["labelled"] == 8000 and len(movielens["days"]) == 7
    assert report["drift"][0]["model_version"] == VERSION
    assert report["drift"][0]["drifting"] == ["a"] and report["status"] == "drifting"
    assert report["problems"] == []
    assert report["funnel"] == {"model_versions": [VERSION], "horizon_s": [3600.0],
                                "partitions": 2, "waiting": 2, "positive": 2, "expired": 8,
                                "skipped": 0, "dropped": 0}  # fmt: skip

    shown = engage(settings, "quality", "--top", "3")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "status: drifting" in shown.stdout and "last 10,000" in shown.stdout
    assert "labels (horizon 1 h): 2 waiting for a conversion" in shown.stdout
    assert "resolved 10: 2 converted, 8 expired (label 0)\nnot kept: 0 skipped" in shown.stdout
    assert any(line.split()[:1] == ["a"] and "drifting" in line for line in lines)

    client.set(quality_key(topic, 1), b"LQ\x01garbage")  # a damaged state is named, not fatal
    damaged = engage(settings, "quality", "--json")
    assert damaged.returncode == 0, damaged.stderr
    assert json.loads(damaged.stdout)["problems"][0].startswith("quality state of partition 1")


def test_quality_without_states_is_exit_4_and_without_redis_exit_3(settings, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    empty = engage(settings, "quality")
    assert empty.returncode == 4 and "no quality or drift state" in empty.stderr
    down = engage(settings, "quality", ENGAGE_REDIS_URL="redis://127.0.0.1:1/0")
    assert down.returncode == 3 and "cannot reach Redis" in down.stderr
