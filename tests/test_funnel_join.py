"""scoring.funnel_join: a funnel propensity score waits for its user's conversion within the
horizon (label 1) or expires (label 0); one score waits per user, the oldest; a replayed batch
gives the same bytes; the consumer's monitors carry it exactly once through crashes."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.funnel_join import TRACK, BadState, FunnelJoin, FunnelRows
from scoring.live_monitor import LiveMonitors, samples
from scoring.quality import prequential_quality

H = 1_000  # horizon, ms
T0 = 1_700_000_000_000


def feed(join: FunnelJoin, rows: list[tuple[str, int, float, bool]]):
    """rows: (user, ms after T0, probability, converts); the rule score is 10 x p."""
    users = [r[0] for r in rows]
    ts = np.array([T0 + r[1] for r in rows], dtype=np.int64)
    prob = np.array([r[2] for r in rows])
    return join.observe(users, ts, prob, prob * 10, np.array([r[3] for r in rows]))


def test_a_conversion_inside_the_horizon_is_positive_outside_it_the_score_expired():
    join = FunnelJoin(H, 100, "v1")
    done = feed(join, [("a", 0, 0.25, False), ("b", 10, 0.5, False),
                       ("a", 10 + H - 10, 0.75, True)])  # fmt: skip  # a: at 0 + H, inside
    assert done.label.tolist() == [1.0] and done.prob.tolist() == [0.25]
    assert done.ts.tolist() == [T0] and done.rule.tolist() == [2.5]
    # a's conversion waits too (its own score, at H); b's conversion comes 1 ms too late:
    # b expired (label 0) when the clock passed 10 + H, and b's late conversion now waits.
    done = feed(join, [("b", 11 + H, 0.125, True)])
    assert done.label.tolist() == [0.0] and done.prob.tolist() == [0.5]
    assert join.counts() == {"waiting": 2, "positive": 1, "expired": 1, "skipped": 0,
                             "dropped": 0}  # fmt: skip
    assert list(join.pending) == ["a", "b"]


def test_one_score_waits_per_user_the_oldest_and_the_next_waits_once_it_resolved():
    join = FunnelJoin(H, 100, "v1")
    done = feed(join, [("a", 0, 0.125, False), ("a", 100, 0.25, False),
                       ("a", 200, 0.375, False), ("a", 300, 0.5, True),
                       ("a", 400, 0.625, False)])  # fmt: skip
    assert done.prob.tolist() == [0.125] and done.label.tolist() == [1.0]  # the oldest
    assert join.pending["a"][0] == T0 + 300  # the converting event's own score waits now
    assert join.counts()["skipped"] == 3  # 0.25, 0.375 (a waited), 0.625 (the 0.5 waits)
    done = feed(join, [("z", 300 + H + 1, 0.75, False)])  # the clock passes a's horizon
    assert done.prob.tolist() == [0.5] and done.label.tolist() == [0.0]


def test_the_cap_drops_and_counts_new_scores():
    join = FunnelJoin(H, 2, "v1")
    feed(join, [("a", 0, 0.1, False), ("b", 1, 0.1, False), ("c", 2, 0.1, False)])
    assert join.counts()["dropped"] == 1 and list(join.pending) == ["a", "b"]


def reference(rows, horizon: int, cap: int):
    """A plain loop of the definition (no heap): what resolves, in order, and the counters."""
    pending: dict[str, tuple[int, float]] = {}
    clock, out = None, []
    counts = dict.fromkeys(("positive", "expired", "skipped", "dropped"), 0)
    for user, t, p, converts in rows:
        if clock is None or t > clock:
            clock = t
            due = sorted((tp + horizon, u) for u, (tp, _p) in pending.items()
                         if tp + horizon < clock)  # fmt: skip
            for _d, u in due:
                out.append((pending.pop(u)[1], 0.0))
                counts["expired"] += 1
        if user in pending and converts:
            out.append((pending.pop(user)[1], 1.0))
            counts["positive"] += 1
        elif user in pending:
            counts["skipped"] += 1
            continue
        if len(pending) >= cap:
            counts["dropped"] += 1
        else:
            pending[user] = (t, p)
    return out, {"waiting": len(pending), **counts}


def random_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(0, 60, n)) - rng.integers(0, 30, n)  # a little out of order
    return [(f"u{rng.integers(0, 40)}", int(x), float(rng.integers(0, 65536)) / 65536,
             bool(rng.random() < 0.08)) for x in t]  # fmt: skip


def test_matches_the_definition_whatever_the_batches_and_a_replayed_batch_gives_the_same_bytes():
    rows = random_rows(5_000, 3)
    expected, counts = reference(rows, H, 25)
    one = FunnelJoin(H, 25, "v1")
    done = feed(one, rows)
    assert list(zip(done.prob.tolist(), done.label.tolist(), strict=True)) == expected
    assert one.counts() == counts and counts["expired"] and counts["dropped"]
    rng = np.random.default_rng(4)
    stored = FunnelJoin(H, 25, "v1").to_bytes()
    got = []
    a = 0
    while a < len(rows):
        b = min(a + int(rng.integers(1, 300)), len(rows))
        join = FunnelJoin.restore(stored, H, 25, "v1")
        first = feed(join, rows[a:b])
        replay = FunnelJoin.restore(stored, H, 25, "v1")  # the batch read again
        again = feed(replay, rows[a:b])
        assert replay.to_bytes() == join.to_bytes()
        assert again.prob.tolist() == first.prob.tolist()
        got += list(zip(first.prob.tolist(), first.label.tolist(), strict=True))
        stored = join.to_bytes()
        a = b
    assert got == expected and stored == one.to_bytes()


def test_bytes_of_another_model_or_horizon_start_afresh_damaged_ones_are_refused():
    join = FunnelJoin(H, 10, "v1")
    feed(join, [("a", 0, 0.5, False)])
    data = join.to_bytes()
    assert FunnelJoin.restore(data, H, 10, "v1").pending == join.pending
    assert FunnelJoin.restore(data, H, 10, "v2").pending == {}
    assert FunnelJoin.restore(data, 2 * H, 10, "v1").pending == {}
    with pytest.raises(BadState):
        FunnelJoin.restore(data[:-1], H, 10, "v1")


def test_monitors_carry_the_join_exactly_once_through_rollbacks_and_crashes():
    """The consumer's view: funnel rows of 3 partitions in batches, some rolled back or lost
    to a crash and read again; the stored bytes end as those of one clean run, and the
    propensity track's figures are the offline run of the resolved scores."""
    n = 6_000
    rng = np.random.default_rng(5)
    rows = random_rows(n, 6)
    part = np.array([int(u[1:]) % 3 for u, *_ in rows])
    users = [r[0] for r in rows]
    ts = np.array([T0 + r[1] for r in rows], dtype=np.int64)
    prob = np.array([r[2] for r in rows])
    conv = np.array([r[3] for r in rows])
    label = conv.astype(np.float64)
    topic = "t.events"

    def batch(monitors: LiveMonitors, a: int, b: int) -> dict[str, bytes]:
        funnel = FunnelRows(part[a:b], users[a:b], ts[a:b], prob[a:b], prob[a:b] * 10,
                            conv[a:b])  # fmt: skip
        return monitors.observe(topic, part[a:b], prob[a:b], label[a:b], prob[a:b] * 10,
                                ts[a:b], ["funnel"] * (b - a), np.zeros((b - a, 1)),
                                funnel)  # fmt: skip

    store: dict[str, bytes] = {}

    def started() -> LiveMonitors:
        monitors = LiveMonitors(horizon_ms=H, max_pending=25)
        monitors.set_model("v1", {})
        for p in range(3):
            monitors.load(p, *(store.get(k) for k in monitors.keys(topic, p)))
        return monitors

    monitors = started()
    a = 0
    while a < n:
        b = min(a + int(rng.integers(1, 500)), n)
        writes = batch(monitors, a, b)
        fate = rng.random()
        if fate < 0.15:
            monitors.rollback()
            continue
        if fate < 0.3:
            monitors = started()
            continue
        store.update(writes)
        monitors.commit()
        a = b
    clean = LiveMonitors(horizon_ms=H, max_pending=25)
    clean.set_model("v1", {})
    for p in range(3):
        clean.load(p, None, None)
    assert batch(clean, 0, n) == store
    resolved = {p: reference([r for r, q in zip(rows, part, strict=True) if q == p], H, 25)
                for p in range(3)}  # fmt: skip
    summary = clean.summary()
    assert summary["funnel"] == {k: sum(c[k] for _o, c in resolved.values())
                                 for k in summary["funnel"]}  # fmt: skip
    p_all = [x for p in range(3) for x, _y in resolved[p][0]]
    y_all = [y for p in range(3) for _x, y in resolved[p][0]]
    part_all = [p for p in range(3) for _ in resolved[p][0]]
    offline = prequential_quality(np.array(p_all), np.array(y_all), np.array(p_all) * 10,
                                  np.full(len(p_all), T0), TRACK, np.array(part_all),
                                  "v1")  # fmt: skip
    live = summary["quality"][TRACK]["windows"]
    assert live == offline["domains"][TRACK]["windows"]
    gauges = {labels["state"]: value for name, labels, value in samples(summary)
              if name == "engage_funnel_scores"}  # fmt: skip
    assert gauges == {k: float(v) for k, v in summary["funnel"].items()}
