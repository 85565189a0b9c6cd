"""The model's work and the compiled writer on a worker thread (consumer.model_job) give every
score message and score hash exactly what the inline run gives: same calls on the same rows,
another thread."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from consumer.batch import BatchScorer
from consumer.model_job import ModelWorker
from features.aggregates import FeatureParams
from offline.dataset import build_dataset
from scoring.rules import load_scorers
from tests.eventlog import make_log
from tests.offline_synth import fitted_bundle, synthetic_log
from tests.test_model_domains import _run, as_events, movielens_bundle


def _scored(worker: ModelWorker, bundle: Any, events: list, params: FeatureParams) -> tuple:
    scorer = BatchScorer(load_scorers(None), log_features=False, model_worker=worker)
    scorer.model = bundle
    scored = _run(scorer, events, params)
    messages = [orjson.loads(value) for _, value in scored.messages]  # type: ignore[attr-defined]
    for message in messages:
        message.pop("scored_at")
    hashes = {user: {k: v for k, v in fields.items() if k != "updated_at"}
              for user, fields in scored.writes.scores.items()}  # type: ignore[attr-defined]  # fmt: skip
    return messages, hashes, scored.writes.leaderboard  # type: ignore[attr-defined]


@pytest.mark.parametrize("domains", ["one", "mixed"])
def test_the_worker_thread_gives_what_the_inline_run_gives(domains: str) -> None:
    params = FeatureParams()
    if domains == "one":  # XGBoost for both targets: its predictor runs without the GIL
        events, meta = synthetic_log(n_users=40, per_user=25)
        bundle = fitted_bundle(build_dataset(events, meta, params), params, "xgboost", "xgboost")
        bundle.set_threads(1)
    else:  # MovieLens and funnel rows in one batch: the model scores only the first
        rows, _ = make_log(n_users=12, events_per_user=15)
        events = sorted(as_events(rows), key=lambda e: e.ts)
        bundle = movielens_bundle(params)
    inline = _scored(ModelWorker(0), bundle, events, params)
    worker = ModelWorker(1)
    threaded = _scored(worker, bundle, events, params)
    assert worker._pool is not None  # it ran on the thread
    worker.close()
    assert len(inline[0]) == len(events)
    assert any("propensity" in m["model"] for m in inline[0])
    assert any("interaction_reasons" in m["model"] for m in inline[0])
    assert threaded == inline


def test_the_writer_beside_the_state_writes_gives_what_the_inline_run_gives() -> None:
    """Rules only: the compiled writer runs on the worker while the state writes are built."""
    params = FeatureParams()
    events, _ = synthetic_log(n_users=40, per_user=25)
    inline = _scored(ModelWorker(0), None, events, params)
    worker = ModelWorker(1)
    threaded = _scored(worker, None, events, params)
    assert worker._pool is not None  # it ran on the thread
    worker.close()
    assert len(inline[0]) == len(events) == len({m["event_id"] for m in inline[0]})
    assert all(m["model"] is None and "score" in m["rule"] for m in inline[0])
    assert threaded == inline


def test_small_batches_run_inline_and_the_pool_starts_only_when_needed() -> None:
    worker = ModelWorker(100)
    params = FeatureParams()
    rows, _ = make_log(n_users=3, events_per_user=5)
    _scored(worker, movielens_bundle(params), as_events(rows), params)
    assert worker._pool is None  # 15 rows < 100: inline
    worker.close()


def test_a_batch_with_many_shown_rows_keeps_the_writer_inline() -> None:
    """Rules only, 40 users in 1,000 rows (4% shown): over a 1% share the writer stays on this
    thread (no pool), at 5% it goes to the worker; the messages are the same either way."""
    params = FeatureParams()
    events, _ = synthetic_log(n_users=40, per_user=25)
    inline_worker = ModelWorker(1, max_shown_share=0.01)
    inline = _scored(inline_worker, None, events, params)
    assert inline_worker._pool is None
    beside_worker = ModelWorker(1, max_shown_share=0.05)
    beside = _scored(beside_worker, None, events, params)
    assert beside_worker._pool is not None
    beside_worker.close()
    assert beside == inline
