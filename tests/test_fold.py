"""features.fold against `MemoryState.step`: every value bit for bit, in calls of any size.

Each data set runs once through `MemoryState.step` per event and once through `fold` in calls
of 1, 7 and all events (the state carried in one FoldState between calls), and everything is
compared exactly (float bits, so even -0.0 vs 0.0 would fail): the interaction vectors before
each event, the propensity vectors after, each event's `Applied` (session id, closed session,
item delta, new item), the per-call item delta sums (as consumer/batch.py sums them) and
current sessions, and at the end the user and item dicts (which keys exist, too) and item sets.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engage.settings import PROJECT_ROOT
from features import fold_layout
from features.aggregates import Applied, FeatureParams, State, session_fields
from features.event_reader import read_events
from features.events import Event, EventType
from features.fold import NEUMAIER_SUM, FoldOutput, FoldState, _genre_sum, fold
from features.items import GENRES, ItemMeta
from features.pipeline import MemoryState
from features.spec import ITEM_STATE_FIELDS, USER_STATE_FLOAT_FIELDS
from features.vector import (
    CONTEXT_FEATURES,
    INTERACTION_FEATURES,
    PROPENSITY_FEATURES,
    context_columns,
    context_values,
)
from producer import movielens, synthetic

SHARED_MOVIELENS = PROJECT_ROOT.parent / "shared" / "data" / "ml-latest-small"
DAY, HOUR, MINUTE = 86_400_000, 3_600_000, 60_000


# --------------------------------------------------------------------------- comparing


def exact(value: Any) -> Any:
    """`value` with every number replaced by its float's hex form: equal means same bits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value).hex()
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [exact(v) for v in value]
    if isinstance(value, Applied):
        return exact((value.closed_session, value.item_delta, value.new_item))
    raise TypeError(type(value))


def assert_same_bits(got: np.ndarray, want: np.ndarray, names: Sequence[str], what: str) -> None:
    assert got.dtype == np.float64 and got.shape == want.shape, (what, got.shape, want.shape)
    diff = np.argwhere(got.view(np.uint64) != want.view(np.uint64))
    if len(diff):
        row, col = diff[0]
        raise AssertionError(
            f"{what}: {len(diff)} values differ; first event {row} {names[col]}: "
            f"fold {got[row, col]!r} vs step {want[row, col]!r}"
        )


@dataclass
class Expected:
    """What one fold call must reproduce, from MemoryState.step over the same events."""

    before: np.ndarray
    after: np.ndarray
    applied: list[Applied]
    item_deltas: dict[str, dict[str, float]]
    sessions: dict[tuple[str, str], State]
    users: list[str]


def chunks(events: Sequence[Event], size: int) -> Iterable[Sequence[Event]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def reference_call(memory: MemoryState, chunk: Sequence[Event]) -> Expected:
    steps = [memory.step(event) for event in chunk]
    deltas: dict[str, dict[str, float]] = {}
    for step in steps:  # as consumer/batch.py BatchScorer._writes sums them
        if step.event.item_id is not None:
            delta = deltas.setdefault(step.event.item_id, {})
            for name, amount in step.applied.item_delta.items():
                delta[name] = delta.get(name, 0.0) + amount
    users = list(dict.fromkeys(event.user_id for event in chunk))
    sessions = {
        (user, str(memory.users[user]["cs_id"])): session_fields(memory.users[user])
        for user in users
    }
    width_b, width_a = len(INTERACTION_FEATURES), len(PROPENSITY_FEATURES)
    return Expected(
        before=np.array([s.features for s in steps], dtype=np.float64).reshape(-1, width_b),
        after=np.array([s.after for s in steps], dtype=np.float64).reshape(-1, width_a),
        applied=[s.applied for s in steps],
        item_deltas=deltas,
        sessions=sessions,
        users=users,
    )


def check_call(out: FoldOutput, want: Expected) -> None:
    assert_same_bits(out.before, want.before, INTERACTION_FEATURES, "before")
    assert_same_bits(out.after, want.after, PROPENSITY_FEATURES, "after")
    got_applied = [out.applied(i) for i in range(len(out))]
    for i, (got, ref) in enumerate(zip(got_applied, want.applied, strict=True)):
        assert exact(got) == exact(ref), f"event {i}: {got} != {ref}"
    closed = {}  # as the consumer held them before: a dict, a session id's last close kept
    for i, a in enumerate(want.applied):
        if a.closed_session:
            sid, fields = a.closed_session
            closed[out.user_ids[out.user_loc[i]], sid] = fields
    block = out.closed_block()  # the consumer's one-pass form
    assert list(block) == list(closed)
    assert exact(dict(block.items())) == exact(closed)
    assert exact(out.item_deltas_dict()) == exact(want.item_deltas)
    assert exact(out.sessions_dict()) == exact(want.sessions)
    assert out.user_ids == want.users


def check_state(state: FoldState, memory: MemoryState) -> None:
    assert exact(state.users_dict()) == exact(memory.users)
    assert exact(state.items_dict()) == exact(memory.items)
    assert state.user_items == memory.user_items


def run_both(
    events: Sequence[Event],
    meta: dict[str, ItemMeta],
    size: int,
    params: FeatureParams | None = None,
    memory: MemoryState | None = None,
) -> tuple[MemoryState, FoldState]:
    """Both paths over `events` in calls of `size`, compared call by call and at the end."""
    params = params or FeatureParams()
    if memory is None:
        memory = MemoryState(params=params, meta=dict(meta))
        state = FoldState(meta=meta, capacity=4)  # small: the tables must grow
    else:
        state = FoldState.from_memory(memory)
    for chunk in chunks(events, size):
        want = reference_call(memory, chunk)
        check_call(fold(state, chunk, params), want)
    check_state(state, memory)
    return memory, state


# --------------------------------------------------------------------------- data sets


def synthetic_events() -> list[Event]:
    """The synthetic funnel (explicit session ids, contexts, bounces, repeat sessions), with
    some users' session ids dropped (gap-based sessions) and some dropped on every other event
    (a user mixing both)."""
    events = list(synthetic.events(synthetic.SyntheticConfig(users=400, days=6, seed=7)))
    out = []
    for k, event in enumerate(events):
        index = int(event.user_id.rsplit("u", 1)[1])
        if index % 3 == 0 or (index % 5 == 0 and k % 2):
            event = event.model_copy(update={"session_id": None})
        out.append(event)
    return out


def _rating(user: str, item: str, ts: int, value: float, n: int) -> Event:
    return Event(
        event_id=f"t-r:{user}:{n}", user_id=user, ts=ts, event_type=EventType.RATING,
        item_id=item, value=value, source="test",
    )  # fmt: skip


def movielens_like(seed: int = 5) -> tuple[list[Event], dict[str, ItemMeta]]:
    """Users rating and tagging items with genres and years: same-second bursts, gaps past
    the session gap, out-of-order times within the lateness window, repeated ratings of the
    same item, non-dyadic and extreme ratings, items without metadata or year, a repeated
    genre, a few item-less funnel events with contexts and explicit session ids."""
    rng = random.Random(seed)
    meta: dict[str, ItemMeta] = {}
    for k in range(60):
        if k % 10 == 9:
            continue  # no metadata at all
        genres = tuple(rng.sample(GENRES, rng.randint(0, 4)))
        year = None if k % 7 == 0 else rng.randint(1920, 2018)
        meta[str(k)] = ItemMeta(genres=genres, year=year)
    meta["3"] = ItemMeta(genres=("Drama", "Comedy", "Drama"), year=1999)
    ratings = [0.5 * k for k in range(1, 11)] + [0.0, 3.7, 2.2, 10.0, 4.25, 1.0 / 3.0]
    gaps = [0, 0, 0, 1_000, 30_000, 10 * MINUTE, 3 * HOUR, 5 * DAY, 60 * DAY]
    log: list[tuple[int, int, Event]] = []  # (arrival, user, event)
    for u in range(60):
        user = f"ml{u}"
        arrival = 1_500_000_000_000 + rng.randint(0, 30 * DAY)
        last_item = "1"
        for n in range(rng.randint(1, 150)):
            arrival += rng.choice(gaps)
            ts = arrival - rng.randint(1, 20 * HOUR) if rng.random() < 0.1 else arrival
            item = last_item if rng.random() < 0.1 else str(rng.randrange(60))
            last_item = item
            roll = rng.random()
            if roll < 0.15:
                event = Event(
                    event_id=f"t-t:{user}:{n}", user_id=user, ts=ts, event_type=EventType.TAG,
                    item_id=item, context={"tag": f"tag{rng.randrange(5)}"}, source="test",
                )  # fmt: skip
            elif roll < 0.2:
                event = Event(
                    event_id=f"t-f:{user}:{n}", user_id=user, ts=ts,
                    event_type=rng.choice(list(EventType)[2:]),
                    item_id=None if rng.random() < 0.5 else item,
                    session_id=None if rng.random() < 0.5 else f"s{u}:{n // 5}",
                    context={"device": rng.choice(["mobile", "desktop", "tablet"]),
                             "account_balance": rng.choice([-5.0, 0, 12.5, 1e6, True]),
                             "browsing_depth": rng.choice([1, 3.5, "deep"])},
                    source="test",
                )  # fmt: skip
            else:
                event = _rating(user, item, ts, rng.choice(ratings), n)
            log.append((arrival, u, event))
    # A user rating one film twice, and raters whose smoothed mean * 1024 is exactly x.5 when
    # they rate their fourth film (round() halves to even: 2240.5 -> 2240, 2241.5 -> 2242).
    start = 1_500_000_000_000 + 40 * DAY
    for u, third in (("half-even-a", 0.00390625), ("half-even-b", 0.01171875)):
        for n, (item, value) in enumerate(
            [("1", 0.0), ("2", 0.0), ("4", third), ("5", 4.0), ("5", 2.5)]
        ):
            log.append((start + n * 1000, 100, _rating(u, item, start + n * 1000, value, n)))
    log.sort(key=lambda entry: (entry[0], entry[1]))
    return [event for _, _, event in log], meta


@pytest.fixture(scope="module")
def synthetic_log() -> list[Event]:
    events = synthetic_events()
    assert len(events) > 2000
    assert any(e.session_id is None for e in events) and any(e.session_id for e in events)
    return events


@pytest.fixture(scope="module")
def movielens_log() -> tuple[list[Event], dict[str, ItemMeta]]:
    return movielens_like()


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("size", [1, 7, 1_000_000])
def test_synthetic_funnel_is_bit_identical(synthetic_log: list[Event], size: int) -> None:
    memory, _ = run_both(synthetic_log, {}, size)
    assert sum(u.get("cl_n", 0.0) for u in memory.users.values()) > 100  # by id and by gap


@pytest.mark.parametrize("size", [1, 2, 3, 1_000_000])
def test_a_session_id_that_is_a_time_is_that_session(size: int) -> None:
    """A session started with no session_id is named by its time (`str(ts)`); an event that
    names it explicitly continues it, an all-digit id that is not its name does not. (The
    fold gives the sessions of untimed events codes of their own unless some id is all
    digits: this is that other case, in one call and across calls.)"""
    memory, _ = run_both(time_named_sessions(), {}, size)
    assert memory.users["u"]["cs_id"] == str(T0 + 300_000)  # v's session's name, explicitly
    assert memory.users["v"]["cs_n"] == 3.0  # started untimed, named, continued untimed


T0 = 1_600_000_000_000


def time_named_sessions() -> list[Event]:
    """Sessions started untimed (named `str(ts)`), then named explicitly, and an all-digit id
    that names none of them."""

    def page(k: int, ts: int, session: str | None, user: str = "u") -> Event:
        return Event(event_id=f"p{k}", user_id=user, ts=ts, event_type=EventType.PAGE_VIEW,
                     item_id=f"/{k % 3}", session_id=session, source="test")  # fmt: skip

    return [
        page(0, T0, None), page(1, T0 + 60_000, str(T0)), page(2, T0 + 120_000, None),
        page(3, T0 + 180_000, "12345"), page(4, T0 + 240_000, str(T0)),
        page(5, T0 + 300_000, None, "v"), page(6, T0 + 360_000, str(T0 + 300_000), "v"),
        page(7, T0 + 420_000, str(T0 + 300_000)), page(8, T0 + 480_000, None, "v"),
    ]  # fmt: skip


@pytest.mark.parametrize("size", [1, 7, 1_000_000])
def test_movielens_like_is_bit_identical(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]], size: int
) -> None:
    events, meta = movielens_log
    run_both(events, meta, size)


def test_half_even_rounding_of_the_rater_delta(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]],
) -> None:
    events, meta = movielens_log
    for user, want in (("half-even-a", 2240.0), ("half-even-b", 2242.0)):  # 2240.5, 2241.5
        out = fold(FoldState(meta=meta), [e for e in events if e.user_id == user])
        assert out.item_delta_dict(3)["rater"] * 1024.0 == want


def test_other_params_are_bit_identical(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]],
) -> None:
    events, meta = movielens_log
    params = FeatureParams(
        session_gap_ms=5 * MINUTE, half_life_ms=HOUR, mood_half_life_ms=600_000.0,
        day_half_life_ms=7_200_000,
    )  # fmt: skip
    run_both(events, meta, 7, params)


def test_continues_from_a_loaded_state(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]], synthetic_log: list[Event]
) -> None:
    """A FoldState loaded from today's dicts (as from Redis) continues exactly as they do."""
    for events, meta in (movielens_log, (synthetic_log, {})):
        half = len(events) // 2
        memory = MemoryState(meta=dict(meta))
        for event in events[:half]:
            memory.step(event)
        loaded = FoldState.from_memory(copy.deepcopy(memory))
        check_state(loaded, memory)  # the round trip keeps every key, 0.0 values included
        run_both(events[half:], meta, 7, memory=memory)


def test_metadata_that_arrives_later(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]],
) -> None:
    events, meta = movielens_log
    memory, state = MemoryState(meta={}), FoldState()
    for k, chunk in enumerate(chunks(events, 50)):
        if k == 3:  # metadata shows up (and one item's changes) between two calls
            memory.meta.update(meta)
            state.meta.update(meta)
        if k == 5:
            memory.meta["3"] = state.meta["3"] = ItemMeta(genres=("War",), year=1950)
        check_call(fold(state, chunk), reference_call(memory, chunk))
    check_state(state, memory)


@pytest.mark.skipif(not SHARED_MOVIELENS.is_dir(), reason=f"no {SHARED_MOVIELENS}")
def test_real_movielens_is_bit_identical(tmp_path: Path) -> None:
    """All of ml-latest-small (ratings and tags) in calls of 2,000 events."""
    data = movielens.load(SHARED_MOVIELENS, tmp_path / "cache")
    events = list(data.events())
    assert len(events) == 104_519
    run_both(events, data.items, 2_000)


# --------------------------------------------------------------------------- state and layout


def test_layout_is_the_spec_order() -> None:
    assert fold_layout.USER_FIELDS == USER_STATE_FLOAT_FIELDS
    assert fold_layout.ITEM_FIELDS == ITEM_STATE_FIELDS
    assert tuple(session_fields({})) == fold_layout.SESSION_FIELDS
    assert len(INTERACTION_FEATURES) == fold_layout.N_INTERACTION


def test_dict_round_trip_keeps_exactly_the_keys_that_exist() -> None:
    state = FoldState(capacity=1)
    fields: State = {"cs_id": "s1", "n": 3.0, "eng": 0.0, "gr:Drama": 0.0, "cs_rs": -0.0}
    state.load_user("a", fields, {"i1"})
    state.load_item("i1", {"n": 2.0, "eng": 0.0})
    state.load_user("b", {})
    assert exact(state.export_user("a")) == exact(fields)
    assert state.export_user("b") == {} and state.export_user("nobody") == {}
    assert state.export_item("i1") == {"n": 2.0, "eng": 0.0}
    assert state.user_items == {"a": {"i1"}}
    with pytest.raises(ValueError, match="not in the layout"):
        state.load_user("c", {"no_such_field": 1.0})
    with pytest.raises(ValueError, match="not in GENRES"):
        FoldState(meta={"x": ItemMeta(genres=("Space Opera",))}).item_row("x")


def test_an_empty_call() -> None:
    out = fold(FoldState(), [])
    assert out.before.shape == (0, len(INTERACTION_FEATURES))
    assert out.after.shape == (0, len(PROPENSITY_FEATURES)) and out.user_ids == []


def _sum_cpython312(values: list[float]) -> float:
    """builtins.sum(values) as CPython >= 3.12 computes it for floats (Neumaier)."""
    total = 0 + values[0]
    comp = 0.0
    for x in values[1:]:
        t = total + x
        comp += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
        total = t
    return total + comp if comp and math.isfinite(comp) else total


@pytest.mark.parametrize("neumaier", [False, True])
def test_genre_sums_add_like_this_python(neumaier: bool) -> None:
    rng = random.Random(3)
    consts = fold_layout.consts(FeatureParams(), neumaier)
    for _ in range(300):
        values = [rng.choice([0.1, 1e16, -1e16, 3.7, 2.0 / 3.0, 0.0]) for _ in range(5)]
        m = rng.randint(1, 5)
        table = np.array([values])
        genres = np.array([list(range(m))], dtype=np.int64)
        got = _genre_sum(table, 0, np.arange(5, dtype=np.int64), genres, 0, m, consts)
        if neumaier:
            want = _sum_cpython312(values[:m])
        else:
            want = 0.0 + values[0]
            for x in values[1:m]:
                want += x
        assert float(got).hex() == float(want).hex(), (values[:m], got, want)
        if neumaier == NEUMAIER_SUM:  # the running interpreter's own sum()
            assert float(got).hex() == float(sum(values[:m])).hex()


def test_the_pre_pass_columns_equal_the_per_event_definitions(
    synthetic_log: list[Event], movielens_log: tuple[list[Event], dict[str, ItemMeta]]
) -> None:
    """`context_columns`, `engaged_column` and `labelled_column` (the fold's pre-pass over a
    batch) give, value for value, what `context_values`, `Event.engaged` and `Event.labelled`
    give per event: every event type, contexts with and without each fact, odd balances."""
    odd = [
        Event(event_id=f"x{k}", user_id="u", ts=946_684_800_000 + k * 3_599_999,
              event_type=EventType.PAGE_VIEW, source="web", context=ctx)
        for k, ctx in enumerate([
            {}, {"device": "tablet"}, {"account_balance": -5}, {"account_balance": 1e300},
            {"account_balance": True}, {"browsing_depth": 2.5, "device": "mobile"},
            {"account_balance": "12"}, {"browsing_depth": 0},
        ])
    ]  # fmt: skip
    events = [*synthetic_log, *movielens_log[0], *odd]
    ts = np.array([e.ts for e in events], dtype=np.int64)
    want = np.array([context_values(e) for e in events], dtype=np.float64)
    contexts = [e.context for e in events]
    assert_same_bits(context_columns(contexts, ts), want, CONTEXT_FEATURES, "context")
    kind = np.array([fold_layout.TYPE_CODE[e.event_type] for e in events], dtype=np.int64)
    value = np.array([e.value if e.event_type is EventType.RATING else 0.0 for e in events])
    assert {e.event_type for e in events} == set(EventType)
    engaged = fold_layout.engaged_column(kind, value)
    assert engaged.tolist() == [float(e.engaged) for e in events]
    assert fold_layout.labelled_column(kind).tolist() == [e.labelled for e in events]


@pytest.mark.parametrize(
    ("data", "size"),
    [("movielens", 31), ("synthetic", 31), ("time-named sessions", 1), ("time-named sessions", 4)],
)
def test_batches_from_the_reader_fold_as_the_reference(data: str, size: int) -> None:
    """A batch the compiled reader made carries its ids as codes (`CodedColumns`: users, items,
    sessions), which the fold takes instead of making its own: the same outputs and tables as
    the reference."""
    events, meta = {
        "movielens": movielens_like, "synthetic": lambda: (synthetic_events(), {}),
        "time-named sessions": lambda: (time_named_sessions(), {}),
    }[data]()  # fmt: skip
    params = FeatureParams()
    memory = MemoryState(params=params, meta=dict(meta))
    state = FoldState(meta=meta, capacity=4)
    coded = 0  # (a batch with a message the reader declined has no codes: folded without)
    for chunk in chunks(events, size):
        batch, _, errors = read_events([event.to_json() for event in chunk])
        assert errors == []
        coded += batch.codes is not None
        want = reference_call(memory, chunk)
        check_call(fold(state, batch, params), want)
    check_state(state, memory)
    assert coded >= min(20, len(events) // size)


def test_new_items_by_user_groups_each_rows_new_item(
    movielens_log: tuple[list[Event], dict[str, ItemMeta]], synthetic_log: list[Event]
) -> None:
    events, meta = movielens_log
    for log in (events[:3000], synthetic_log[:3000]):  # (the funnel has events with no item)
        out = fold(FoldState(meta=meta), log)
        expected: dict[str, set[str]] = {}
        for i, event in enumerate(log):
            if out.applied(i).new_item:
                assert event.item_id is not None
                expected.setdefault(event.user_id, set()).add(event.item_id)
        assert expected and out.new_items_by_user() == expected
    assert fold(FoldState(), []).new_items_by_user() == {}
