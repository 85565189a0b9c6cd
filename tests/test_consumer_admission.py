"""Duplicates and disorder at the source: applied once, late events dead-lettered with a reason.

The policy (features/admission.py): an event_id among the user's recent ids is a duplicate;
an event more than `max_lateness_s` behind the user's latest event is late. Both go to the
dead-letter topic and are counted; the state equals the reference over the admitted events.
"""

from __future__ import annotations

import numpy as np
import pytest

from consumer.deadletter import reason_of
from consumer.runner import StreamConsumer
from engage import kafka_clients
from features.admission import AdmissionPolicy
from features.events import Event
from features.pipeline import MemoryState
from offline.dataset import build_dataset
from tests.eventlog import make_log, publish_log
from tests.reference import diff_against_redis, reference_state

DAY_MS = 86_400_000


def _with_duplicates_and_late(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """The log with copies of some events re-sent later and late events mixed in.

    Returns (the published log, the copies and late events that must be refused)."""
    published: list[dict] = []
    refused: list[dict] = []
    by_user: dict[str, list[dict]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    for user_events in by_user.values():
        for n, e in enumerate(user_events):
            published.append(e)
            if n % 7 == 3:  # the same event again, right away (often in the same batch)
                published.append(dict(e))
                refused.append(e)
            if n % 11 == 8:  # an earlier event again, a few events later
                published.append(dict(user_events[n - 4]))
                refused.append(user_events[n - 4])
            if n == 30:  # two days behind this user's latest event: late
                late = dict(e, event_id=f"{e['event_id']}:late", ts=e["ts"] - 2 * DAY_MS)
                published.append(late)
                refused.append(late)
    return published, refused


@pytest.mark.stack
def test_duplicates_applied_once_and_late_events_dead_lettered(settings, redis_client):
    events, genres = make_log(n_users=12, events_per_user=40)
    published, refused = _with_duplicates_and_late(events)
    produced = publish_log(settings, published, genres)
    summary = StreamConsumer(settings, group="g-admission").run(idle_exit_s=3.0)

    assert summary.processed == len(events)
    assert summary.dead_lettered == len(refused)
    assert summary.processed + summary.dead_lettered == produced
    p = settings.feature_params
    ref = reference_state(events, genres, p.session_gap_ms, p.half_life_ms)
    assert diff_against_redis(ref, redis_client) == []

    dlq = kafka_clients.consumer(settings, settings.dead_letter_topic, consumer_timeout_ms=5000)
    reasons: list[str] = []
    for msg in dlq:
        reasons.append(reason_of(msg.headers)["reason"])
        if len(reasons) == len(refused):
            break
    dlq.close()
    late = sum(e["event_id"].endswith(":late") for e in refused)
    assert sum(r.startswith("late:") for r in reasons) == late > 0
    assert sum(r.startswith("duplicate:") for r in reasons) == len(refused) - late


def _event(i: int, user: str = "u", ts: int | None = None, eid: str | None = None) -> Event:
    return Event.model_validate(
        {
            "event_id": eid or f"e{i}",
            "user_id": user,
            "event_type": "rating",
            "value": 4.0,
            "item_id": f"m{i % 3}",
            "ts": ts if ts is not None else 1_700_000_000_000 + i * 60_000,
            "source": "movielens",
        }
    )


def test_offline_refuses_what_the_consumer_refuses() -> None:
    events = [_event(i) for i in range(10)]
    log = [*events[:5], events[2], *events[5:], _event(99, ts=events[0].ts - 2 * DAY_MS)]
    data = build_dataset(log, {})
    assert data.n_events == len(log) and len(data) == len(events)  # one row per admitted
    memory = MemoryState()
    verdicts = []
    for e in log:
        reason = memory.admit(e)
        verdicts.append(reason)
        if reason is None:
            memory.step(e)
    assert [v is None for v in verdicts].count(False) == 2
    assert verdicts[5].startswith("duplicate") and verdicts[-1].startswith("late")
    assert memory.users["u"]["n"] == 10


def test_the_duplicate_guard_is_bounded_by_count() -> None:
    """The documented limit: a copy arriving after 2 x recent_ids newer events may apply again."""
    policy = AdmissionPolicy(recent_ids=4, max_lateness_ms=None)
    memory = MemoryState(admission=policy)
    for i in range(20):
        assert memory.admit(_event(i)) is None
        memory.step(_event(i))
    assert len(memory.recent["u"]) <= 2 * policy.recent_ids
    assert memory.admit(_event(19)) is not None  # recent: refused
    assert memory.admit(_event(0)) is None  # long forgotten: applied again (the bound)


def test_lateness_zero_means_never_late() -> None:
    memory = MemoryState(admission=AdmissionPolicy(max_lateness_ms=None))
    memory.step(_event(0, ts=1_700_000_000_000))
    assert memory.admit(_event(1, ts=1_600_000_000_000)) is None


@pytest.mark.parametrize("lateness_ms", [None, 0.0, 2 * DAY_MS])
def test_batch_admission_refuses_exactly_what_one_by_one_admission_refuses(lateness_ms) -> None:
    """The consumer's admission (`StreamState.apply`, `admit_all` over a batch) against the
    offline module's (`MemoryState.admit`, one event at a time): copies, events from days
    back, a small duplicate bound; the log cut into random batches."""
    import random

    from features.stream import StreamState

    rng = random.Random(5)
    policy = AdmissionPolicy(recent_ids=3, max_lateness_ms=lateness_ms)
    log = []
    for i in range(600):
        user = f"u{rng.randint(0, 5)}"
        ts = 1_700_000_000_000 + i * 3_600_000 - rng.choice([0, 0, 0, 3 * DAY_MS, DAY_MS])
        event = _event(rng.randint(0, 400), ts=ts).model_copy(update={"user_id": user})
        log.append(event)
        if rng.random() < 0.2:
            log.append(rng.choice(log))  # a copy of an earlier event
    memory, stream = MemoryState(admission=policy), StreamState(admission=policy)
    expected = []
    for e in log:
        reason = memory.admit(e)
        expected.append(reason)
        if reason is None:
            memory.step(e)
    got: list[str | None] = []
    start = 0
    while start < len(log):
        batch = log[start : start + rng.randint(1, 60)]
        folded = stream.apply(batch)
        verdicts: list[str | None] = [None] * len(batch)
        for i, reason in folded.refused:
            verdicts[i] = reason
        assert sorted([*folded.admitted, *(i for i, _ in folded.refused)]) == list(
            range(len(batch))
        )
        got += verdicts
        start += len(batch)
    assert got == expected
    assert sum(v is not None and v.startswith("duplicate") for v in got) > 20
    assert any(v and v.startswith("late") for v in got) == (lateness_ms is not None)


@pytest.mark.parametrize(("recent_ids", "lateness_ms"), [(3, None), (3, DAY_MS), (32, DAY_MS)])
@pytest.mark.parametrize("columns", [True, False])
def test_batch_admission_leaves_what_one_by_one_admission_leaves(
    recent_ids: int, lateness_ms: float | None, columns: bool
) -> None:
    """`admit_all` (compiled, over a batch from the reader's columns or a list of events): its
    verdicts, and every user's remembered ids with their order (what is stored), equal
    admitting one event at a time in the plain form; with trims, copies and late events."""
    import random

    from features import recent_ids as codec
    from features.event_reader import read_events

    rng = random.Random(recent_ids)
    policy = AdmissionPolicy(recent_ids=recent_ids, max_lateness_ms=lateness_ms)
    log: list[Event] = []
    for i in range(3000):
        late = 2 * DAY_MS if rng.random() < 0.002 else 0
        ts = 1_700_000_000_000 + i * 60_000 - late + rng.choice([0, 0, 30_000])  # disorder
        log.append(_event(i, user=f"u{rng.randint(0, 4)}", ts=ts))
        if rng.random() < 0.01:
            log.append(rng.choice(log[-4:]))  # a copy of a recent event: a duplicate
        if rng.random() < 0.01:  # an event at the same time as the last: trims break ties
            log.append(_event(10_000 + i, user=log[-1].user_id, ts=log[-1].ts))
    expected_recents: dict[str, dict[int, float]] = {}
    last: dict[str, float] = {}
    expected = []
    for e in log:
        reason = policy.admit(
            last.get(e.user_id, 0.0), expected_recents.setdefault(e.user_id, {}), e
        )
        expected.append(reason)
        if reason is None:
            last[e.user_id] = max(last.get(e.user_id, 0.0), float(e.ts))
    recents: dict[str, bytes] = {}
    applied_last: dict[str, float] = {}
    got: list[str | None] = []
    start = 0
    while start < len(log):
        events = log[start : start + rng.randint(40, 400)]
        batch, _, errors = read_events([e.to_json() for e in events])
        assert errors == [] and batch.codes is not None
        admitted, refused = policy.admit_all(
            batch if columns else events,
            lambda users: np.array([applied_last.get(u, 0.0) for u in users]),
            recents,
        )
        verdicts: list[str | None] = [None] * len(events)
        for i, reason in refused:
            verdicts[i] = reason
        for i in admitted:
            user = events[i].user_id
            applied_last[user] = max(applied_last.get(user, 0.0), float(events[i].ts))
        got += verdicts
        start += len(events)
    assert got == expected
    assert {u: list(codec.as_dict(r).items()) for u, r in recents.items()} == {
        u: list(r.items()) for u, r in expected_recents.items()
    }
    assert sum(v is not None and v.startswith("duplicate") for v in got) >= 10
    assert any(v and v.startswith("late") for v in got) == (lateness_ms is not None)
