"""Point-in-time training rows: nothing from the event itself or later leaks into its row."""

from __future__ import annotations

import numpy as np

from features.events import EventType
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES, USER_FEATURES
from offline.dataset import BASELINE_FEATURES, N_PROPENSITY, build_dataset
from tests.offline_synth import synthetic_log


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
        assert np.all(row[:n_user][[idx[f] for f in USER_FEATURES if f.startswith("s_")]] == 0)


def test_builds_fast():
    import time

    events, meta = synthetic_log(n_users=200, per_user=100)
    start = time.perf_counter()
    data = build_dataset(events, meta)
    seconds = time.perf_counter() - start
    assert len(data) == 20_000
    assert seconds < 5.0, f"{seconds:.1f}s for 20k events"
