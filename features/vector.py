"""State to feature vector: the one function the consumer scores with and offline trains on.

Point in time: the interaction vector of an event is built from the state *before* the event
(plus what is known at request time: the event's time, item and context), never from the
event's own outcome. The propensity vector is the user part alone; the consumer serves it on
the state *after* an event as the user's current score.
"""

from __future__ import annotations

import hashlib
import inspect
import math

from features import aggregates
from features.aggregates import (
    RATING_PRIOR_MEAN,
    RATING_PRIOR_WEIGHT,
    FeatureParams,
    State,
    continues_session,
    decay_factor,
    user_rating_mean,
)
from features.events import Event
from features.items import GENRES, ItemMeta

MS_PER_HOUR = 3_600_000.0
MS_PER_DAY = 24 * MS_PER_HOUR
MS_PER_YEAR = 365.2425 * MS_PER_DAY
RATE_PRIOR_WEIGHT = 2.0  # pseudo-observations pulling a rate towards its prior
#: Pseudo-ratings at the user's own mean that smooth the short-horizon and genre rating means.
USER_MEAN_PRIOR_WEIGHT = 2.0

USER_FEATURES: tuple[str, ...] = (
    "u_events", "u_labelled", "u_engaged", "u_engage_rate", "u_rating_count", "u_rating_mean",
    "u_rating_std", "u_decayed_engaged", "u_decayed_rate", "u_days_active", "u_hours_since_last",
    "u_distinct_items", "u_sessions", "u_repeat_session_rate", "u_bounce_rate",
    "u_mean_session_min", "u_n_page_view", "u_n_pricing_view", "u_n_demo_request", "u_n_signup",
    "u_n_calendar_booking", "u_n_tag", "s_events", "s_engaged", "s_furthest_step", "s_minutes",
    "u_last_rating", "u_mood_rating", "u_mood_weight", "s_ratings", "s_rating_mean",
)  # fmt: skip
CONTEXT_FEATURES: tuple[str, ...] = (
    "hour", "dow", "ctx_mobile", "ctx_desktop", "ctx_log_balance", "ctx_depth",
)  # fmt: skip
ITEM_FEATURES: tuple[str, ...] = (
    "i_count", "i_rating_mean", "i_engage_rate", "i_year", "i_n_genres",
    "ui_genre_count", "ui_genre_engaged", "ui_genre_affinity", "ui_genre_share", "ui_seen_item",
    *(f"g_{g}" for g in GENRES),
    "i_rating_std", "i_rater_mean", "i_rating_resid", "i_age_years", "i_days_since_mean",
    "ui_genre_rating_mean", "ui_rating_gap",
)  # fmt: skip
PROPENSITY_FEATURES: tuple[str, ...] = USER_FEATURES + CONTEXT_FEATURES
INTERACTION_FEATURES: tuple[str, ...] = USER_FEATURES + CONTEXT_FEATURES + ITEM_FEATURES


def _n(state: State, field: str) -> float:
    value = state.get(field, 0.0)
    return float(value) if value != "" else 0.0


def _rate(hits: float, trials: float, prior: float) -> float:
    return (hits + prior * RATE_PRIOR_WEIGHT) / (trials + RATE_PRIOR_WEIGHT)


def user_values(user: State, event: Event, params: FeatureParams) -> list[float]:
    """USER_FEATURES for `user` as of the moment `event` arrives."""
    ts = float(event.ts)
    n, lab, eng = _n(user, "n"), _n(user, "lab"), _n(user, "eng")
    r_n, r_sum, r_sq = _n(user, "r_n"), _n(user, "r_sum"), _n(user, "r_sq")
    mean = user_rating_mean(user)
    var = r_sq / r_n - (r_sum / r_n) ** 2 if r_n > 1 else 0.0
    dec_ts = _n(user, "dec_ts")
    fade = decay_factor(dec_ts, ts, params) if dec_ts else 0.0
    dec_e, dec_n = _n(user, "dec_e") * fade, _n(user, "dec_n") * fade
    last, first = _n(user, "last_ts"), _n(user, "first_ts")
    sessions, closed = _n(user, "sess"), _n(user, "cl_n")
    in_session = continues_session(user, event, params)
    dr_ts = _n(user, "dr_ts")
    mood = 0.5 ** (max(0.0, ts - dr_ts) / params.mood_half_life_ms) if dr_ts else 0.0
    dr_s, dr_n = _n(user, "dr_s") * mood, _n(user, "dr_n") * mood
    s_rn = _n(user, "cs_rn") if in_session else 0.0
    s_rs = _n(user, "cs_rs") if in_session else 0.0
    return [
        n,
        lab,
        eng,
        _rate(eng, lab, 0.5),
        r_n,
        mean,
        math.sqrt(max(var, 0.0)),
        dec_e,
        _rate(dec_e, dec_n, 0.5),
        (ts - first) / MS_PER_DAY if first else 0.0,
        max(0.0, ts - last) / MS_PER_HOUR if last else -1.0,
        _n(user, "items"),
        sessions,
        (sessions - 1) / sessions if sessions else 0.0,
        _n(user, "cl_bounce") / closed if closed else 0.0,
        _n(user, "cl_dur") / closed / aggregates.MS_PER_MIN if closed else 0.0,
        _n(user, "n_page_view"),
        _n(user, "n_pricing_view"),
        _n(user, "n_demo_request"),
        _n(user, "n_signup"),
        _n(user, "n_calendar_booking"),
        _n(user, "n_tag"),
        _n(user, "cs_n") if in_session else 0.0,
        _n(user, "cs_eng") if in_session else 0.0,
        _n(user, "cs_step") if in_session else 0.0,
        max(0.0, ts - _n(user, "cs_start")) / aggregates.MS_PER_MIN if in_session else 0.0,
        _n(user, "r_last") if r_n else -1.0,
        (dr_s + mean * USER_MEAN_PRIOR_WEIGHT) / (dr_n + USER_MEAN_PRIOR_WEIGHT),
        dr_n,
        s_rn,
        (s_rs + mean * USER_MEAN_PRIOR_WEIGHT) / (s_rn + USER_MEAN_PRIOR_WEIGHT),
    ]


def context_values(event: Event) -> list[float]:
    """CONTEXT_FEATURES: request-time facts (event time of day, device, account)."""
    seconds = event.ts // 1000
    hour = (seconds // 3600) % 24
    dow = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    ctx = event.context or {}
    device = ctx.get("device")
    balance = ctx.get("account_balance")
    depth = ctx.get("browsing_depth")
    return [
        float(hour),
        float(dow),
        1.0 if device == "mobile" else 0.0,
        1.0 if device == "desktop" else 0.0,
        math.log1p(max(float(balance), 0.0)) if isinstance(balance, int | float) else 0.0,
        float(depth) if isinstance(depth, int | float) else 0.0,
    ]


def item_values(
    user: State,
    item: State,
    meta: ItemMeta | None,
    seen_item: bool,
    event: Event,
    user_rate: float,
    user_mean: float,
) -> list[float]:
    """ITEM_FEATURES: the item's aggregates and metadata, and the user's taste for it."""
    meta = meta or ItemMeta()
    i_n, i_rn, i_lab = _n(item, "n"), _n(item, "r_n"), _n(item, "lab")
    i_sum = _n(item, "r_sum")
    i_mean = (i_sum + RATING_PRIOR_MEAN * RATING_PRIOR_WEIGHT) / (i_rn + RATING_PRIOR_WEIGHT)
    i_var = _n(item, "r_sq") / i_rn - (i_sum / i_rn) ** 2 if i_rn > 1 else 0.0
    # The mean of the raters' own (smoothed) means: how lenient this item's audience is.
    i_rater = (_n(item, "rater") + RATING_PRIOR_MEAN * RATING_PRIOR_WEIGHT) / (
        i_rn + RATING_PRIOR_WEIGHT
    )
    ts = float(event.ts)
    g_count = sum(_n(user, f"gc:{g}") for g in meta.genres)
    g_eng = sum(_n(user, f"ge:{g}") for g in meta.genres)
    g_rsum = sum(_n(user, f"gr:{g}") for g in meta.genres)
    lab = _n(user, "lab")
    genres = set(meta.genres)
    return [
        i_n,
        i_mean,
        _rate(_n(item, "eng"), i_lab, 0.5),
        float(meta.year or 0),
        float(len(meta.genres)),
        g_count,
        g_eng,
        _rate(g_eng, g_count, user_rate),
        g_count / (lab * len(meta.genres)) if lab and meta.genres else 0.0,
        1.0 if seen_item else 0.0,
        *(1.0 if g in genres else 0.0 for g in GENRES),
        math.sqrt(max(i_var, 0.0)),
        i_rater,
        i_mean - i_rater,
        1970.0 + ts / MS_PER_YEAR - meta.year if meta.year else -1.0,
        ts / MS_PER_DAY - _n(item, "ts_d") / i_n if i_n else -1.0,
        (g_rsum + user_mean * USER_MEAN_PRIOR_WEIGHT) / (g_count + USER_MEAN_PRIOR_WEIGHT),
        user_mean - i_mean,
    ]


def propensity_vector(user: State, event: Event, params: FeatureParams) -> list[float]:
    return user_values(user, event, params) + context_values(event)


def interaction_vector(
    user: State,
    item: State,
    meta: ItemMeta | None,
    seen_item: bool,
    event: Event,
    params: FeatureParams,
) -> list[float]:
    values = user_values(user, event, params)
    items = item_values(user, item, meta, seen_item, event, values[3], values[5])
    return values + context_values(event) + items


def feature_hash(params: FeatureParams) -> str:
    """A fingerprint of the feature definitions: a model trained on other code is refused."""
    digest = hashlib.sha256()
    for module in (aggregates, inspect.getmodule(feature_hash)):
        digest.update(inspect.getsource(module).encode())  # type: ignore[arg-type]
    digest.update(repr(params).encode())
    return digest.hexdigest()[:16]
