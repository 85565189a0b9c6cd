"""Point-in-time training rows: nothing from the event itself or later leaks into its row."""

from __future__ import annotations

import math

import numpy as np

from features.events import EventType
from features.pipeline import MemoryState
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES, USER_FEATURES
from offline.dataset import BASELINE_FEATURES, N_PROPENSITY, build_dataset
from tests.offline_synth import synthetic_log
from tests.reference import reference_state


def test_one_row_per_labelled_event_in_order():
    events, meta = synthetic_log()
    data = build_dataset(events, meta)
    labelled = [e for e in events if e.labelled]
    assert len(data) == len(labelled) and data.n_events == len(events)
    assert data.X.shape == (len(labelled), len(INTERACTION_FEATURES))
    assert data.X.dtype == np.float64
    assert data.y.tolist() == [int(e.engaged) for e in labelled]
    assert data.ts.tolist() == [e.ts for e in labelled]
    assert list(data.user_ids) == [e.user_id for e in labelled]


def test_propensity_columns_lead_and_baseline_is_a_subset():
    assert tuple(INTERACTION_FEATURES[:N_PROPENSITY]) == PROPENSITY_FEATURES
    assert set(BASELINE_FEATURES) <= set(INTERACTION_FEATURES)
    events, meta = synthetic_log(n_users=3, per_user=5)
    data = build_dataset(events, meta)
    assert np.array_equal(data.propensity_X, data.X[:, : len(PROPENSITY_FEATURES)])


def test_changing_an_events_outcome_changes_only_later_rows():
    events, meta = synthetic_log()
    base = build_dataset(events, meta)
    # Flip the outcome of one mid-log rating of some user.
    ratings = [i for i, e in enumerate(events) if e.event_type is EventType.RATING]
    target = ratings[len(ratings) // 2]
    old = events[target]
    new_value = 0.5 if old.engaged else 5.0
    changed = list(events)
    changed[target] = old.model_copy(update={"value": new_value})
    assert changed[target].engaged != old.engaged
    flipped = build_dataset(changed, meta)

    row = next(i for i, e in enumerate(e for e in events if e.labelled) if e is old)
    assert flipped.y[row] != base.y[row]  # the label did change...
    assert np.array_equal(flipped.X[: row + 1], base.X[: row + 1])  # ...its row and earlier not
    later_same_user = [i for i in range(row + 1, len(base)) if base.user_ids[i] == old.user_id]
    assert later_same_user, "the user needs a later event for this test"
    assert not np.array_equal(flipped.X[later_same_user], base.X[later_same_user])


def test_first_event_of_a_user_sees_an_empty_user_state():
    events, meta = synthetic_log()
    data = build_dataset(events, meta)
    first_rows = {}
    for i, user in enumerate(data.user_ids):
        first_rows.setdefault(user, i)
    n_user = len(USER_FEATURES)
    idx = {f: i for i, f in enumerate(INTERACTION_FEATURES)}
    for i in first_rows.values():
        row = data.X[i]
        assert row[idx["u_events"]] == 0 and row[idx["u_labelled"]] == 0
        assert row[idx["u_engaged"]] == 0 and row[idx["u_rating_count"]] == 0
        assert row[idx["u_hours_since_last"]] == -1.0  # "never seen before"
        assert row[idx["ui_genre_count"]] == 0 and row[idx["ui_seen_item"]] == 0
        counts = [idx[f] for f in USER_FEATURES if f.startswith("s_") and f != "s_rating_mean"]
        assert np.all(row[:n_user][counts] == 0)
        # Rating means with no history fall back to the prior; "no last rating" is -1.
        assert row[idx["s_rating_mean"]] == row[idx["u_mood_rating"]] == 3.5
        assert row[idx["u_last_rating"]] == -1.0 and row[idx["u_mood_weight"]] == 0


def test_builds_fast():
    import time

    events, meta = synthetic_log(n_users=200, per_user=100)
    start = time.perf_counter()
    data = build_dataset(events, meta)
    seconds = time.perf_counter() - start
    assert len(data) == 20_000
    assert seconds < 5.0, f"{seconds:.1f}s for 20k events"


#: Features whose value depends on past ratings (user, session, genre and item rating state).
RATING_STATE_FEATURES = (
    "u_rating_mean", "u_last_rating", "u_mood_rating", "s_rating_mean", "ui_genre_rating_mean",
    "ui_rating_gap", "i_rating_mean", "i_rating_std", "i_rater_mean", "i_rating_resid",
    "u_ema_engaged_05", "u_ema_engaged_10", "u_ema_engaged_20", "u_ema_rating_20",
    "u_half_star_share", "u_top_share", "u_year_slope", "ui_year_rating",
)  # fmt: skip


def test_rating_state_features_see_past_ratings_but_never_their_own():
    """Each rating-derived feature: unchanged on the flipped event's own row and every earlier
    row, and it does react on some later row (so the check above is not vacuous for it)."""
    events, meta = synthetic_log()
    base = build_dataset(events, meta)
    idx = {f: i for i, f in enumerate(INTERACTION_FEATURES)}
    labelled = [e for e in events if e.labelled]
    reacted = set()
    for target in range(len(labelled) // 3, len(labelled) // 3 + 40):
        old = labelled[target]
        changed = [e.model_copy(update={"value": 0.5 if old.value >= 3 else 5.0})
                   if e is old else e for e in events]  # fmt: skip
        flipped = build_dataset(changed, meta)
        assert np.array_equal(flipped.X[: target + 1], base.X[: target + 1])
        for name in RATING_STATE_FEATURES:
            col = idx[name]
            if not np.array_equal(flipped.X[target + 1 :, col], base.X[target + 1 :, col]):
                reacted.add(name)
    assert reacted == set(RATING_STATE_FEATURES)


def test_new_item_and_time_features_are_request_time_facts():
    events, meta = synthetic_log()
    data = build_dataset(events, meta)
    idx = {f: i for i, f in enumerate(INTERACTION_FEATURES)}
    labelled = [e for e in events if e.labelled]
    for row in range(0, len(labelled), 97):
        e = labelled[row]
        year = meta[e.item_id].year
        age = data.X[row, idx["i_age_years"]]
        assert year is not None and abs(age - (1970 + e.ts / 31_556_952_000 - year)) < 1e-9
    first_of_item: dict[str, int] = {}
    for row, e in enumerate(labelled):
        first_of_item.setdefault(e.item_id, row)
    for row in first_of_item.values():  # the item's first event: no item state yet
        assert data.X[row, idx["i_days_since_mean"]] == -1.0 or labelled[row].item_id in {
            e.item_id for e in events[: events.index(labelled[row])] if not e.labelled
        }
        assert data.X[row, idx["i_rating_std"]] == 0.0


def test_memory_state_equals_the_independent_reference():
    """The offline state (what `build_dataset` runs) against tests/reference.py, with release
    years, which the consumer tests' items lack (so the year sums are checked here)."""
    events, meta = synthetic_log()
    state = MemoryState(meta=dict(meta))
    for event in events:
        state.step(event)
    dicts = [e.model_dump(mode="json", exclude_none=True) for e in events]
    genres = {item: list(m.genres) for item, m in meta.items()}
    years = {item: m.year for item, m in meta.items() if m.year}
    p = state.params
    ref = reference_state(dicts, genres, p.session_gap_ms, p.half_life_ms, years=years)
    skip = {"cs_id", "cs_start", "cs_end", "cs_n", "cs_eng", "cs_step", "cs_rn", "cs_rs", "dec_ts"}
    assert {f for u in state.users.values() for f in u} >= {"ee10", "er20", "y_r", "dd_n"}
    for uid, want in ref["users"].items():
        got = {k: v for k, v in state.users[uid].items() if k not in skip}
        for field in set(got) | set(want):  # absent = 0, as in a Redis hash
            a, b = got.get(field, 0.0), want.get(field, 0.0)
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (uid, field, a, b)
    for iid, want in ref["items"].items():
        got = state.items[iid]
        for field in set(got) | set(want):
            a, b = got.get(field, 0.0), want.get(field, 0.0)
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (iid, field, a, b)
