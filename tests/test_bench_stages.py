"""bench/stages.py at --quick size against the real stack: every stage is clocked, and the
clocks add up (a stage inside another takes no more than it)."""

from __future__ import annotations

import pytest

from bench.stages import STAGES, main
from engage.settings import Settings

pytestmark = pytest.mark.stack


@pytest.mark.timeout(600)
@pytest.mark.parametrize("source", [[], ["--synthetic", "3000"]], ids=["movielens", "funnel"])
def test_quick_run_clocks_every_stage(settings: Settings, source: list[str]) -> None:
    """MovieLens (the model's reasons in the shown rows' messages, when one is registered)
    and the funnel (no model scores it: the shown messages are made as shown)."""
    [run] = main(["--quick", "--runs", "1", *source], settings=settings)

    assert run["events"] == 3_000 and run["events_per_s"] > 0
    stages = run["stages"]
    assert set(stages) == {"poll", *(stage for _, _, stage in STAGES)}
    for name, clock in stages.items():
        assert clock["wall_us"] >= 0 and clock["cpu_us"] >= 0, name
    handle = stages["handle"]["wall_us"]
    assert 0 < handle <= run["span_us"]
    inside = [s for s in stages if s.startswith("handle: ")]
    assert sum(stages[s]["wall_us"] for s in inside) <= handle
    compute = stages["handle: compute (BatchScorer.run)"]["wall_us"]
    assert 0 < stages["compute: admit + fold"]["wall_us"] <= compute
    assert 0 < run["thread_cpu_us"] <= run["span_us"] * 1.05
    assert 0 < run["users_shown_per_event"] <= 1  # each user's latest of a batch
    assert stages["compute: shown rows (score hash, leaderboard, live view)"]["wall_us"] > 0
