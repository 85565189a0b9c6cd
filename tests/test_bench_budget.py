"""The budget's machine figures: one event's CPU on every process of the job, and the rate the
cores allow at that cost (bench/budget.py)."""

from __future__ import annotations

import pytest

from bench.budget import cores_bound, machine_cpu


def test_the_machine_cpu_sums_the_three_processes_and_bounds_the_rate() -> None:
    servers = {"consumer_us_per_event": 10.5, "kafka_us_per_event": 2.5,
               "redis_us_per_event": 2.0}  # fmt: skip
    assert machine_cpu(servers) == pytest.approx(15.0)
    assert cores_bound(15.0, cores=2) == pytest.approx(133_333.33, rel=1e-6)
    assert machine_cpu({**servers, "kafka_us_per_event": None}) is None  # not our broker
    assert cores_bound(None) is None
