"""The aggregate definitions: how one event changes a user's, a session's and an item's state.

This is the single definition used by the streaming consumer (state held in Redis hashes) and
by the offline module (state held in dicts). States are flat `dict[str, float | str]` so they
map 1:1 onto Redis hash fields. All time arithmetic is in event time (epoch ms).

Out-of-order events of one user: counts always apply; time-based state never goes backwards
(`last_ts` is a running maximum, decay uses a non-negative elapsed time) and an older event
never reopens a finished session: it joins the current one.

Every state field written here is declared, with its type and meaning, in features/spec.py
(USER_STATE, SESSION_STATE, ITEM_STATE); tests/test_feature_spec.py checks that nothing
undeclared is written. A change to an update rule here needs a FEATURE_VERSION bump there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from features.events import FUNNEL_STEP, Event, EventType
from features.items import ItemMeta

#: A state hash. Every value is a float except the current session id `cs_id` (a string), so
#: readers use `state.get(field, 0.0)` directly: this is the consumer's hottest code.
State = dict[str, float | str]
#: `state.get` for the float fields (every one but `cs_id`), as the hot path binds it:
#: `g = cast(FloatGet, user.get)` types the reads without a wrapper.
FloatGet = Callable[[str, float], float]
MS_PER_MIN = 60_000.0


@dataclass(frozen=True)
class FeatureParams:
    """Knobs that change feature values; part of the feature-definition hash."""

    session_gap_ms: int = 30 * 60_000
    half_life_ms: float = 14 * 24 * 3_600_000.0
    mood_half_life_ms: float = 3_600_000.0  # the short-horizon ("mood") decayed rating mean
    day_half_life_ms: float = 86_400_000.0  # the decayed event count ("events today")


#: Smoothing of a user's mean rating towards the global prior (pseudo-ratings).
RATING_PRIOR_MEAN, RATING_PRIOR_WEIGHT = 3.5, 5.0
#: Item sums of non-dyadic values are rounded to multiples of 1/1024 first, so that the
#: HINCRBYFLOAT sums are exact whatever order the partitions' deltas arrive in.
ITEM_SUM_QUANTUM = 1024.0
MS_PER_DAY = 86_400_000  #: an int: `event.ts // MS_PER_DAY` is whole days (item `ts_d`)
#: Per-event exponential moving averages, in the user's log order (not decayed by time: a
#: MovieLens user rates dozens of films within the same minute, and what they rated just before
#: still says how they rate now). (state field, weight of the newest event): of the label over
#: labelled events, and of the rating over ratings.
ENGAGED_EMAS: tuple[tuple[str, float], ...] = (("ee05", 0.05), ("ee10", 0.1), ("ee20", 0.2))
RATING_EMAS: tuple[tuple[str, float], ...] = (("er20", 0.2),)
#: Release years enter the user's rating-on-year regression sums centred on this year.
YEAR_CENTER = 2000


@dataclass
class Applied:
    """What applying one event produced besides the mutated user state."""

    closed_session: tuple[str, State] | None  # the session this event closed, if any
    item_delta: dict[str, float]  # atomic increments for the shared item hash
    new_item: bool


def decay_factor(anchor_ts: float, ts: float, params: FeatureParams) -> float:
    """How much a decayed sum anchored at `anchor_ts` has faded by `ts` (1.0 if ts is older).

    >>> params = FeatureParams(half_life_ms=1000.0)
    >>> decay_factor(5000.0, 6000.0, params)  # one half-life later
    0.5
    >>> decay_factor(5000.0, 7000.0, params)  # two
    0.25
    >>> decay_factor(5000.0, 4000.0, params)  # an older event does not rewind the decay
    1.0
    """
    return fade(anchor_ts, ts, params.half_life_ms)


def fade(anchor_ts: float, ts: float, half_life_ms: float) -> float:
    """The one decay formula: 0.5 ** (elapsed / half-life), elapsed never negative (the fold's
    kernel computes the same expression, bit for bit: tests/test_fold.py).

    >>> fade(0.0, 3_600_000.0, 3_600_000.0)
    0.5
    """
    factor: float = 0.5 ** (max(0.0, ts - anchor_ts) / half_life_ms)  # float ** float
    return factor


def continues_session(user: State, event: Event, params: FeatureParams) -> bool:
    """Does this event belong to the user's current session (before applying it)?"""
    current = user.get("cs_id")
    if not current:
        return False
    if event.session_id is not None:
        return event.session_id == current
    g = cast(FloatGet, user.get)
    return event.ts - g("cs_end", 0.0) <= params.session_gap_ms


def session_fields(user: State) -> State:
    """The current session's fields (what `s:{user}:<session>` holds once it closes)."""
    g = cast(FloatGet, user.get)
    n = g("cs_n", 0.0)
    return {
        "start": g("cs_start", 0.0),
        "end": g("cs_end", 0.0),
        "events": n,
        "engaged": g("cs_eng", 0.0),
        "furthest_step": g("cs_step", 0.0),
        "bounce": 1.0 if n == 1 else 0.0,
        "ratings": g("cs_rn", 0.0),
        "rating_sum": g("cs_rs", 0.0),
    }


def user_rating_mean(user: State) -> float:
    """The user's mean rating so far, smoothed towards the global prior."""
    g = cast(FloatGet, user.get)
    return (g("r_sum", 0.0) + RATING_PRIOR_MEAN * RATING_PRIOR_WEIGHT) / (
        g("r_n", 0.0) + RATING_PRIOR_WEIGHT
    )


def apply_event(
    user: State, event: Event, meta: ItemMeta | None, new_item: bool, params: FeatureParams
) -> Applied:
    """Fold one event into `user` (in place); return the session and item effects."""
    g = cast(FloatGet, user.get)
    ts = float(event.ts)
    engaged = 1.0 if event.engaged else 0.0
    labelled = event.labelled

    # Sessions: a new one starts on a new session_id, or after the inactivity gap.
    closed: tuple[str, State] | None = None
    if not continues_session(user, event, params):
        if user.get("cs_id"):
            closed = (str(user["cs_id"]), session_fields(user))
            user["cl_n"] = g("cl_n", 0.0) + 1
            user["cl_bounce"] = g("cl_bounce", 0.0) + (1.0 if g("cs_n", 0.0) == 1 else 0.0)
            user["cl_dur"] = g("cl_dur", 0.0) + (g("cs_end", 0.0) - g("cs_start", 0.0))
        user["cs_id"] = event.session_id if event.session_id is not None else str(event.ts)
        user["cs_start"] = ts
        user["cs_end"] = ts
        user["cs_n"] = 0.0
        user["cs_eng"] = 0.0
        user["cs_step"] = 0.0
        user["cs_rn"] = 0.0
        user["cs_rs"] = 0.0
        user["sess"] = g("sess", 0.0) + 1
    user["cs_n"] = g("cs_n", 0.0) + 1
    user["cs_eng"] = g("cs_eng", 0.0) + engaged
    user["cs_end"] = max(g("cs_end", 0.0), ts)
    user["cs_step"] = max(g("cs_step", 0.0), float(FUNNEL_STEP.get(event.event_type, 0)))

    rating = event.value if event.event_type is EventType.RATING else None
    if rating is not None:
        user["cs_rn"] = g("cs_rn", 0.0) + 1
        user["cs_rs"] = g("cs_rs", 0.0) + rating
    # The rater's smoothed mean *before* this rating, for the item's rater-mean sum.
    rater_mean = user_rating_mean(user)

    # Counts and rates.
    user["n"] = g("n", 0.0) + 1
    type_field = f"n_{event.event_type.value}"
    user[type_field] = g(type_field, 0.0) + 1
    if labelled:
        user["lab"] = g("lab", 0.0) + 1
        user["eng"] = g("eng", 0.0) + engaged
        for name, alpha in ENGAGED_EMAS:
            user[name] = g(name, 0.0) * (1.0 - alpha) + alpha * engaged
    if rating is not None:
        user["r_n"] = g("r_n", 0.0) + 1
        user["r_sum"] = g("r_sum", 0.0) + rating
        user["r_sq"] = g("r_sq", 0.0) + rating * rating
        for name, alpha in RATING_EMAS:
            user[name] = g(name, 0.0) * (1.0 - alpha) + alpha * rating
        # How the user uses the scale: ratings between whole stars, ratings at 5 or more.
        if rating % 1.0:
            user["r_half"] = g("r_half", 0.0) + 1
        if rating >= 5.0:
            user["r_top"] = g("r_top", 0.0) + 1
        # Sums for the user's least-squares line of rating on the film's release year.
        if meta is not None and meta.year:
            year = float(meta.year - YEAR_CENTER)
            user["y_n"] = g("y_n", 0.0) + 1
            user["y_s"] = g("y_s", 0.0) + year
            user["y_ss"] = g("y_ss", 0.0) + year * year
            user["y_r"] = g("y_r", 0.0) + year * rating
            user["y_rs"] = g("y_rs", 0.0) + rating
        # Short-horizon decayed rating sum/count ("mood"), anchored at dr_ts, the latest
        # rating's time; r_last is the latest rating by event time (ties: later in the log).
        anchor = g("dr_ts", 0.0)
        if ts >= anchor:
            user["r_last"] = rating
        factor = fade(anchor, ts, params.mood_half_life_ms) if anchor else 1.0
        user["dr_s"] = g("dr_s", 0.0) * factor + rating
        user["dr_n"] = g("dr_n", 0.0) * factor + 1.0
        user["dr_ts"] = max(anchor, ts)

    # Exponentially decayed engagement, anchored at dec_ts (which never moves backwards).
    last = g("last_ts", 0.0)
    if labelled:
        anchor = g("dec_ts", 0.0)
        factor = decay_factor(anchor, ts, params) if anchor else 1.0
        user["dec_e"] = g("dec_e", 0.0) * factor + engaged
        user["dec_n"] = g("dec_n", 0.0) * factor + 1.0
        user["dec_ts"] = max(anchor, ts)
    # Events "today": a count decayed with a one-day half-life, anchored at last_ts.
    day_fade = fade(last, ts, params.day_half_life_ms) if last else 1.0
    user["dd_n"] = g("dd_n", 0.0) * day_fade + 1.0
    user["first_ts"] = min(g("first_ts", 0.0) or ts, ts)
    user["last_ts"] = max(last, ts)

    # Taste: per-genre counts and engaged counts of labelled events, rating sums of ratings.
    if labelled and meta is not None:
        for genre in meta.genres:
            user[f"gc:{genre}"] = g(f"gc:{genre}", 0.0) + 1
            user[f"ge:{genre}"] = g(f"ge:{genre}", 0.0) + engaged
            if rating is not None:
                user[f"gr:{genre}"] = g(f"gr:{genre}", 0.0) + rating
    if new_item:
        user["items"] = g("items", 0.0) + 1

    item_delta: dict[str, float] = {}
    if event.item_id is not None:
        item_delta["n"] = 1.0
        item_delta["ts_d"] = float(event.ts // MS_PER_DAY)  # whole days: exact sums
        if labelled:
            item_delta["lab"] = 1.0
            item_delta["eng"] = engaged
        if rating is not None:
            item_delta["r_n"] = 1.0
            item_delta["r_sum"] = rating
            item_delta["r_sq"] = rating * rating
            item_delta["rater"] = round(rater_mean * ITEM_SUM_QUANTUM) / ITEM_SUM_QUANTUM
    return Applied(closed, item_delta, new_item)


def apply_item_delta(item: State, delta: dict[str, float]) -> None:
    """What HINCRBYFLOAT does to the item hash, for in-memory state."""
    get = cast(FloatGet, item.get)
    for field, amount in delta.items():
        item[field] = get(field, 0.0) + amount
