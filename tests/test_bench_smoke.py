"""The benchmark harness end to end at --quick sizes against the real stack: every figure is
measured once and written to JSON, Markdown and the growth plot; nothing is left behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench.ceilings import redis_benchmark_usable
from bench.common import QUICK
from bench.harness import SCHEMA, label, main
from engage.kafka_clients import admin_client
from engage.settings import Settings

pytestmark = pytest.mark.stack


def expected_figures() -> set[str]:
    names = {
        "produce_only", "consume_only_movielens", "consume_only_synthetic", "redis_pipeline",
        "redis_benchmark_hset", "redis_benchmark_incr", "replay_movielens",
        "consumer_movielens", "consumer_synthetic", "consumer_2proc_synthetic",
        "consumer_2proc_speedup", "api_score_p50", "api_score_p95", "api_score_p99",
        "api_score_achieved", "redis_bytes_per_user", "redis_bytes_per_session",
        "redis_aggregate_bytes_per_user_movielens", "redis_bytes_per_user_movielens",
        "train_movielens", "budget_compute_rules", "budget_compute_model",
        "budget_kafka_server_cpu", "budget_redis_server_cpu", "consumer_movielens_cpu_us",
        "floor_movielens", "floor_movielens_cpu_us", "consumer_movielens_floor_ratio",
        "consumer_movielens_confluent", "consumer_movielens_confluent_cpu_us",
        "cluster_single_movielens", "cluster_movielens", "cluster_single_redis_server_cpu",
        "cluster_redis_server_cpu", "cluster_single_bytes_per_user", "cluster_bytes_per_user",
        "consumer_movielens_thread_cpu_us", "consumer_movielens_thread_ran",
        "consumer_movielens_rules", "consumer_movielens_rules_cpu_us",
        "consumer_movielens_rules_floor_ratio", "budget_machine_cpu", "budget_cores_bound",
    }  # fmt: skip
    cases = [(label(rate), 1) for rate in QUICK.latency_rates]
    cases += [(label(rate), n) for rate, n in QUICK.latency_scaled]
    for rate, n in cases:
        name = f"latency_{rate}" + (f"_{n}proc" if n > 1 else "")
        names |= {f"{name}_{k}" for k in ("p50", "p95", "p99", "offered", "consumed")}
    for n in QUICK.growth_events:
        names |= {f"growth_{label(n)}_rate", f"growth_{label(n)}_rss", f"growth_{label(n)}_cpu_us"}
    names |= {"growth_wall_per_event_ratio", "growth_cpu_per_event_ratio",
              "growth_cpu_tail_head_ratio"}  # fmt: skip
    return names


@pytest.mark.timeout(900)  # ~1-2 min on an idle 2-CPU machine; a smoke, not a timed test
def test_quick_run_writes_every_figure(settings: Settings, tmp_path) -> None:
    assert main(["--quick", "--runs", "1", "--out", str(tmp_path)], settings=settings) == 0

    [json_path] = tmp_path.glob("*.json")
    result = json.loads(json_path.read_text())
    assert result["schema"] == SCHEMA and result["quick"] and result["errors"] == {}
    figures = result["figures"]
    assert set(figures) == expected_figures()
    no_redis_benchmark = not redis_benchmark_usable(settings)
    for name, f in figures.items():
        if no_redis_benchmark and name.startswith("redis_benchmark_"):
            assert f["skipped"] and f["median"] is None
            continue
        if name == "budget_compute_model":  # --quick serves no model
            assert f["skipped"] == "no model registered" and f["median"] is None
            continue
        if name.startswith("consumer_movielens_confluent") and f["median"] is None:
            assert "confluent-kafka not installed" in f["skipped"], f
            continue
        if name.startswith("consumer_movielens_thread_") and f["median"] is None:  # not Linux
            assert "schedstat" in f["skipped"], f
            continue
        if name.endswith("_server_cpu") and f["median"] is None:  # servers someone else runs
            assert "not started by this project" in f["skipped"], f
            continue
        if name in ("budget_machine_cpu", "budget_cores_bound") and f["median"] is None:
            assert "not started by this project" in f["skipped"], f
            continue
        values = (f["median"], f["min"], f["max"])
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), (name, f)
        assert f["min"] <= f["median"] <= f["max"] and f["runs"] == 1, (name, f)
        assert f["unit"] and f["description"], name
    for name in ("replay_movielens", "consumer_movielens", "consumer_synthetic", "floor_movielens"):
        assert figures[name]["ratio_to_ceiling"] > 0, name
    assert figures["consumer_movielens"]["details"][0]["events"] == QUICK.movielens_events
    assert figures["floor_movielens"]["details"][0]["events"] == QUICK.movielens_events
    for name in ("consumer_movielens_cpu_us", "floor_movielens_cpu_us"):
        assert figures[name]["median"] > 0, name
    # The consumer thread's part of the process's CPU, and of its span (Linux schedstat).
    if Path("/proc/thread-self/schedstat").exists():
        thread_cpu = figures["consumer_movielens_thread_cpu_us"]["median"]
        assert 0 < thread_cpu <= figures["consumer_movielens_cpu_us"]["median"] * 1.01
        assert 0 < figures["consumer_movielens_thread_ran"]["median"] <= 1.0
    [ratio] = figures["consumer_movielens_floor_ratio"]["details"]
    assert ratio["transport"] == getattr(settings, "kafka_client", "kafka-python")
    assert "model_version" in ratio
    [rules] = figures["consumer_movielens_rules"]["details"]  # no model: the registry hidden
    assert rules["events"] == QUICK.movielens_events and rules["model_version"] is None
    [rules_ratio] = figures["consumer_movielens_rules_floor_ratio"]["details"]
    assert rules_ratio["model_version"] is None
    assert figures["budget_compute_rules"]["details"][0]["events"] == QUICK.movielens_events
    machine = figures["budget_machine_cpu"]
    if machine["median"] is not None:  # the consumer's, the broker's and Redis's CPU, summed
        [servers] = machine["details"]
        parts = [servers[f"{n}_us_per_event"] for n in ("consumer", "kafka", "redis")]
        assert machine["median"] == pytest.approx(sum(parts))
        assert parts[0] > 0 and min(parts) >= 0  # (a quick run's server share may be < a tick)
        bound = figures["budget_cores_bound"]["median"]
        assert bound == pytest.approx((os.cpu_count() or 1) * 1e6 / machine["median"])
    # One node vs the local 3-master Cluster, same topic, same run (issue 17).
    [single], [many] = (
        figures["cluster_single_movielens"]["details"],
        figures["cluster_movielens"]["details"],
    )
    assert single["events"] == many["events"] == QUICK.movielens_events
    assert many["redis_nodes"] == 3 and many["redis_cpu_us_per_event"] > 0
    assert many["users"] == single["users"] > 0
    assert (
        many["bytes_per_user_by_key"]["guard"] > 0
        and "guard" not in single["bytes_per_user_by_key"]
    )
    assert figures["cluster_movielens"]["ratio_to_ceiling"] > 0

    markdown = json_path.with_suffix(".md").read_text()
    assert "| figure | median | min | max | unit | runs | ratio to ceiling |" in markdown
    assert all(f"| {name} |" in markdown for name in figures)
    assert (tmp_path / result["growth_plot"]).stat().st_size > 0

    prefix = settings.events_topic.removesuffix(".events")
    admin = admin_client(settings)
    try:
        assert not [t for t in admin.list_topics() if t.startswith(prefix)]
    finally:
        admin.close()
