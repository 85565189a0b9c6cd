"""The consumer's overlapped commit (`commit_overlap`, consumer/runner.py): a batch's
transaction runs on a thread while the next batch is folded over the local copy. When that
transaction is fenced, or its outcome is unknown, the batch folded over it must go too, and
the consumer must resume from what Redis holds: the end state is still exactly the log's."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from consumer.runner import RunSummary, StreamConsumer
from consumer.state_store import Fenced
from consumer.store import OutcomeUnknown, RedisBatch
from engage.redis_client import connect
from engage.settings import Settings
from tests.eventlog import make_log, publish_log
from tests.reference import diff_against_redis, reference_state


def _fail_one_commit(monkeypatch: pytest.MonkeyPatch, nth: int, how: str) -> list[int]:
    """Make the `nth` transaction fail: `fenced` before it runs, `unknown` after it landed
    (a connection lost during EXEC). Returns the list of commits seen so far (its length)."""
    seen: list[int] = []
    commit = RedisBatch.commit

    def failing(self: RedisBatch, writes: Any, learn: bool = True, **held: Any) -> None:
        seen.append(1)
        if len(seen) == nth and how == "fenced":
            raise Fenced("test: another writer moved the offsets")
        commit(self, writes, learn, **held)
        if len(seen) == nth and how == "unknown":
            raise OutcomeUnknown("test: connection lost during EXEC")

    monkeypatch.setattr(RedisBatch, "commit", failing)
    return seen


def _run_until_idle(settings: Settings, name: str) -> RunSummary:
    """One consumer in a group of its own, until the topic is idle for 3 s."""
    consumer = StreamConsumer(settings, group=f"{name}-{uuid.uuid4().hex[:8]}")
    try:
        return consumer.run(idle_exit_s=3)
    finally:
        consumer.close()


def _assert_the_logs_state(settings: Settings, events: list[dict], genres: dict) -> None:
    """Every event processed once (none dead-lettered as a duplicate), and the state in Redis
    exactly the log's."""
    client = connect(settings)
    stats = client.hgetall(f"engage:stats:{settings.events_topic}")
    assert int(stats[b"processed"]) == len(events)
    assert int(stats.get(b"dead_lettered", 0)) == 0, "an event was applied twice"
    p = settings.feature_params
    reference = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(reference, client) == []
    client.close()


@pytest.mark.parametrize("how", ["fenced", "unknown"])
@pytest.mark.parametrize(
    "recheck_s", [60.0, 0.005], ids=["collected-by-next-batch", "collected-by-recheck"]
)
def test_a_failed_commit_in_flight_drops_the_batch_folded_over_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, how: str, recheck_s: float
) -> None:
    """Whoever waits for the failed commit (the next batch, or the offset re-check that
    settles it first) drops what was folded over it, and a fenced batch counts."""
    events, genres = make_log(n_users=30, events_per_user=40, seed=13)
    publish_log(settings, events, genres)
    overlapped = settings.model_copy(
        update={"batch_max_records": 50, "commit_overlap": True, "offset_recheck_s": recheck_s}
    )
    seen = _fail_one_commit(monkeypatch, nth=4, how=how)
    summary = _run_until_idle(overlapped, "overlap")
    assert len(seen) > 4, "the failure came too late to matter"
    if how == "fenced":
        assert summary.fenced == 1
    _assert_the_logs_state(settings, events, genres)


def test_the_last_batch_is_collected_as_it_lands_not_an_idle_poll_later(
    settings: Settings,
) -> None:
    """The last batch of a burst commits on the thread; the consumer collects it (counts it,
    moves its positions, shows it) within the commit's hold (`COMMIT_HOLD_S`), not when a
    whole idle poll (`poll_timeout_ms`) comes back empty, and dates it by its landing."""
    events, genres = make_log(n_users=10, events_per_user=20, seed=5)
    publish_log(settings, events, genres)
    slow_polls = settings.model_copy(update={"commit_overlap": True, "poll_timeout_ms": 3000})
    counted: list[tuple[float, int]] = []  # (when, events counted) at each batch collected
    consumer = StreamConsumer(slow_polls, group=f"last-{uuid.uuid4().hex[:8]}")
    try:
        summary = consumer.run(
            idle_exit_s=1, on_batch=lambda s: counted.append((time.monotonic(), s.processed))
        )
    finally:
        consumer.close()
    assert summary.processed == len(events)
    when = min(t for t, n in counted if n == len(events))
    assert summary.last_batch_at is not None and summary.last_batch_at <= when
    assert when - summary.last_batch_at < 1.0, "the last batch waited for an idle poll"


def test_after_a_run_ctrl_c_and_sigterm_are_the_processs_again(settings: Settings) -> None:
    """The consumer handles SIGTERM / SIGINT while it runs (finish the batch, leave the group)
    and gives them back after: a test run or an application that ran it still stops."""
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    consumer = StreamConsumer(settings, group=f"signals-{uuid.uuid4().hex[:8]}")
    try:
        consumer.run(idle_exit_s=0.5)
    finally:
        consumer.close()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_sigterm_while_leaving_the_group_is_still_the_consumers(settings: Settings) -> None:
    """The group is left in `close`, after the loop: a SIGTERM then (an idle exit meeting a
    stop) must reach the consumer's handler, not the default one that kills the process."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    consumer = StreamConsumer(settings, group=f"signals-{uuid.uuid4().hex[:8]}")
    leave = consumer.kafka.close
    seen_while_leaving: list[object] = []

    def close_and_look() -> None:
        seen_while_leaving.append(signal.getsignal(signal.SIGTERM))
        leave()

    consumer.kafka.close = close_and_look  # type: ignore[method-assign]
    try:
        consumer.run(idle_exit_s=0.5)
    finally:
        consumer.close()
    assert seen_while_leaving, "the consumer never left the group"
    assert seen_while_leaving[0] is not before, "SIGTERM was given back before leaving"
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_overlapped_commit_waits_for_the_next_batchs_read(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlapped full batch's EXEC is held until the next batch's Redis read came back (so
    the read does not queue behind it), and the last one goes when the consumer collects it.
    With a hold far longer than the run and every read slowed by 20 ms (an EXEC not held would
    go during it), each batch's EXEC comes after the next batch's read, but for a collect the
    consumer makes between them (an empty poll mid-run: at most two allowed); the state is
    still exactly the log's."""
    from consumer import runner

    events, genres = make_log(n_users=30, events_per_user=40, seed=17)
    publish_log(settings, events, genres)
    overlapped = settings.model_copy(
        update={"batch_max_records": 50, "commit_overlap": True, "offset_recheck_s": 3600.0}
    )  # (a re-check collects the batch in flight: none during the run)
    monkeypatch.setattr(runner, "COMMIT_HOLD_S", 60.0)  # only the read or a collect ends it
    order: list[str] = []
    load, commit = RedisBatch.load, RedisBatch.commit

    def loading(self: RedisBatch, *args: Any) -> Any:
        loaded = load(self, *args)
        time.sleep(0.02)
        order.append("read")
        return loaded

    def committing(self: RedisBatch, writes: Any, learn: bool = True, before_exec: Any = None):
        def held() -> None:
            if before_exec is not None:
                before_exec()
            order.append("exec" if sum(writes.stats.values()) >= 25 else "small exec")

        commit(self, writes, learn, before_exec=held)

    monkeypatch.setattr(RedisBatch, "load", loading)
    monkeypatch.setattr(RedisBatch, "commit", committing)
    _run_until_idle(overlapped, "hold")
    execs = [k for k, what in enumerate(order) if what.endswith("exec")]
    assert order.count("exec") > 10
    # The i-th batch's EXEC comes after the reads of batches 0 .. i + 1 (but the last's, and
    # a batch under half the poll size, which is not held).
    early = [i for i, k in enumerate(execs[:-1])
             if order[k] == "exec" and order[:k].count("read") < i + 2]  # fmt: skip
    assert len(early) <= 2, f"EXECs before the next batch's read: {early} in {order}"
    client = connect(settings)
    p = settings.feature_params
    reference = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(reference, client) == []
    client.close()


def test_a_failed_send_drops_the_batch_and_the_state_stays_the_logs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose score messages cannot be sent (the broker refuses them for now) does not
    commit, while the batch before it may still be committing on the thread: the consumer
    re-reads its positions from Redis and re-applies, and the state is exactly the log's."""
    from consumer.runner import OutputFailed

    events, genres = make_log(n_users=30, events_per_user=40, seed=19)
    publish_log(settings, events, genres)
    overlapped = settings.model_copy(
        update={"batch_max_records": 50, "commit_overlap": True, "offset_recheck_s": 3600.0}
    )
    sends: list[int] = []
    send = StreamConsumer._send

    def sending(self: StreamConsumer, messages: Any, dead: Any) -> int:
        sends.append(len(messages))
        if len(sends) == 4:
            raise OutputFailed("test: the broker refused the batch for now")
        return send(self, messages, dead)

    monkeypatch.setattr(StreamConsumer, "_send", sending)
    _run_until_idle(overlapped, "send")
    assert len(sends) > 10
    assert sum(sends) > len(events), "no batch was sent again"
    _assert_the_logs_state(settings, events, genres)
