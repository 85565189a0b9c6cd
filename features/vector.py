"""State to feature vector: the one function the consumer scores with and offline trains on.

Point in time: the interaction vector of an event is built from the state *before* the event
(plus what is known at request time: the event's time, item and context), never from the
event's own outcome. The propensity vector is the user part alone; the consumer serves it on
the state *after* an event as the user's current score.

The contract is declared in features/spec.py: each function returns its block's values in the
order of the names declared there (USER_FEATURES, CONTEXT_FEATURES, ITEM_FEATURES, re-exported
here), with the declared dtypes; tests/test_feature_spec.py checks every function against it.
Changing a formula here means bumping spec.FEATURE_VERSION (see docs/features.md).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from features import aggregates, events, spec
from features.aggregates import (
    ENGAGED_EMAS,
    MS_PER_DAY,
    RATING_EMAS,
    RATING_PRIOR_MEAN,
    RATING_PRIOR_WEIGHT,
    YEAR_CENTER,
    FeatureParams,
    FloatGet,
    State,
    continues_session,
    decay_factor,
    fade,
    user_rating_mean,
)
from features.events import Event
from features.items import GENRES, ItemMeta

# The declared names (features/spec.py), re-exported: `from features.vector import ...` works.
from features.spec import CONTEXT_FEATURES as CONTEXT_FEATURES
from features.spec import INTERACTION_FEATURES as INTERACTION_FEATURES
from features.spec import ITEM_FEATURES as ITEM_FEATURES
from features.spec import PROPENSITY_FEATURES as PROPENSITY_FEATURES
from features.spec import USER_FEATURES as USER_FEATURES

MS_PER_HOUR = 3_600_000.0
MS_PER_YEAR = 365.2425 * MS_PER_DAY
RATE_PRIOR_WEIGHT = 2.0  # pseudo-observations pulling a rate towards its prior
#: Pseudo-ratings at the user's own mean that smooth the short-horizon and genre rating means.
USER_MEAN_PRIOR_WEIGHT = 2.0
#: The moving averages, unpacked once (the hot path spells each out).
(_EE_A, _A_A), (_EE_B, _A_B), (_EE_C, _A_C) = ENGAGED_EMAS
((_ER_A, _R_A),) = RATING_EMAS
#: Ridge on the release-year variance (years^2) of the user's rating-on-year slope.
YEAR_VAR_PRIOR = 25.0

#: Where interaction_vector finds the user's rate and mean in the user block (by name, not by
#: a hand-counted position).
_U_RATE = USER_FEATURES.index("u_engage_rate")
_U_MEAN = USER_FEATURES.index("u_rating_mean")


def _rate(hits: float, trials: float, prior: float) -> float:
    return (hits + prior * RATE_PRIOR_WEIGHT) / (trials + RATE_PRIOR_WEIGHT)


def year_line(user: State) -> tuple[float, float]:
    """The user's rating-on-release-year slope (ridge-shrunk towards flat) and mean year
    (centred on YEAR_CENTER); (0, 0) with fewer than two rated films of known year."""
    g = cast(FloatGet, user.get)
    n = g("y_n", 0.0)
    if n < 2:
        return 0.0, 0.0
    mean_year = g("y_s", 0.0) / n
    var = g("y_ss", 0.0) / n - mean_year * mean_year
    cov = g("y_r", 0.0) / n - mean_year * g("y_rs", 0.0) / n
    return cov / (max(var, 0.0) + YEAR_VAR_PRIOR), mean_year


def user_values(
    user: State, event: Event, params: FeatureParams, year_fit: tuple[float, float] | None = None
) -> list[float]:
    """USER_FEATURES for `user` as of the moment `event` arrives (`year_fit`: `year_line`
    of `user`, if the caller has it already)."""
    ts = float(event.ts)
    # States hold floats (only cs_id is a string); a local lookup is the hot path.
    g = cast(FloatGet, user.get)
    n, lab, eng = g("n", 0.0), g("lab", 0.0), g("eng", 0.0)
    r_n, r_sum, r_sq = g("r_n", 0.0), g("r_sum", 0.0), g("r_sq", 0.0)
    mean = user_rating_mean(user)
    var = r_sq / r_n - (r_sum / r_n) ** 2 if r_n > 1 else 0.0
    dec_ts = g("dec_ts", 0.0)
    faded = decay_factor(dec_ts, ts, params) if dec_ts else 0.0
    dec_e, dec_n = g("dec_e", 0.0) * faded, g("dec_n", 0.0) * faded
    last, first = g("last_ts", 0.0), g("first_ts", 0.0)
    sessions, closed = g("sess", 0.0), g("cl_n", 0.0)
    in_session = continues_session(user, event, params)
    dr_ts = g("dr_ts", 0.0)
    mood = fade(dr_ts, ts, params.mood_half_life_ms) if dr_ts else 0.0
    dr_s, dr_n = g("dr_s", 0.0) * mood, g("dr_n", 0.0) * mood
    s_rn = g("cs_rn", 0.0) if in_session else 0.0
    s_rs = g("cs_rs", 0.0) if in_session else 0.0
    rate = _rate(eng, lab, 0.5)
    last_fade = fade(last, ts, params.day_half_life_ms) if last else 0.0
    return [
        n,
        lab,
        eng,
        rate,
        r_n,
        mean,
        math.sqrt(max(var, 0.0)),
        dec_e,
        _rate(dec_e, dec_n, 0.5),
        (ts - first) / MS_PER_DAY if first else 0.0,
        max(0.0, ts - last) / MS_PER_HOUR if last else -1.0,
        g("items", 0.0),
        sessions,
        (sessions - 1) / sessions if sessions else 0.0,
        g("cl_bounce", 0.0) / closed if closed else 0.0,
        g("cl_dur", 0.0) / closed / aggregates.MS_PER_MIN if closed else 0.0,
        g("n_page_view", 0.0),
        g("n_pricing_view", 0.0),
        g("n_demo_request", 0.0),
        g("n_signup", 0.0),
        g("n_calendar_booking", 0.0),
        g("n_tag", 0.0),
        g("cs_n", 0.0) if in_session else 0.0,
        g("cs_eng", 0.0) if in_session else 0.0,
        g("cs_step", 0.0) if in_session else 0.0,
        max(0.0, ts - g("cs_start", 0.0)) / aggregates.MS_PER_MIN if in_session else 0.0,
        g("r_last", 0.0) if r_n else -1.0,
        (dr_s + mean * USER_MEAN_PRIOR_WEIGHT) / (dr_n + USER_MEAN_PRIOR_WEIGHT),
        dr_n,
        s_rn,
        (s_rs + mean * USER_MEAN_PRIOR_WEIGHT) / (s_rn + USER_MEAN_PRIOR_WEIGHT),
        # Moving averages, the weight not yet filled by events put on the user's rate/mean.
        g(_EE_A, 0.0) + (1.0 - _A_A) ** lab * rate,
        g(_EE_B, 0.0) + (1.0 - _A_B) ** lab * rate,
        g(_EE_C, 0.0) + (1.0 - _A_C) ** lab * rate,
        g(_ER_A, 0.0) + (1.0 - _R_A) ** r_n * mean,
        g("r_half", 0.0) / r_n if r_n else -1.0,
        g("r_top", 0.0) / r_n if r_n else -1.0,
        g("dd_n", 0.0) * last_fade,
        (year_fit or year_line(user))[0],
    ]


def context_values(event: Event) -> list[float]:
    """CONTEXT_FEATURES: request-time facts (event time of day, device, account)."""
    seconds = event.ts // 1000
    hour = (seconds // 3600) % 24
    dow = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    return [float(hour), float(dow), *_context_facts(event.context or {})]


def _context_facts(ctx: dict[str, str | float | int | bool]) -> tuple[float, float, float, float]:
    """The CONTEXT_FEATURES read from an event's `context` (all 0.0 without one)."""
    device = ctx.get("device")
    balance = ctx.get("account_balance")
    depth = ctx.get("browsing_depth")
    return (
        1.0 if device == "mobile" else 0.0,
        1.0 if device == "desktop" else 0.0,
        math.log1p(max(float(balance), 0.0)) if isinstance(balance, int | float) else 0.0,
        float(depth) if isinstance(depth, int | float) else 0.0,
    )


#: The context features read from an event's `context` (after the hour and the weekday).
N_CONTEXT_FACTS = len(CONTEXT_FEATURES) - 2


def context_fact_columns(
    n: int, rows: np.ndarray, key_word: np.ndarray, value_word: np.ndarray,
    numeric: np.ndarray, words: Sequence[str],
) -> np.ndarray:  # fmt: skip
    """`_context_facts` of n contexts given as their entries, an (n, 4) array of the same
    values without a dict per context (the compiled reader's form: a funnel batch's dicts and
    the loop over them were a tenth of the consumer thread). Per entry: its context's row
    (each key at most once a row), its key (an index into `words`, distinct texts), its text
    value (an index into `words`; -1 for a number or a bool) and its number (a bool as 1.0 or
    0.0; NaN for a text)."""
    out = np.zeros((n, N_CONTEXT_FACTS), dtype=np.float64)
    index = {word: k for k, word in enumerate(words)}
    absent = -2  # matches no key and no value

    def keyed(name: str) -> np.ndarray:
        return np.asarray(key_word == index.get(name, absent))

    device = keyed("device")
    for column, text in ((0, "mobile"), (1, "desktop")):
        out[rows[device & (value_word == index.get(text, absent))], column] = 1.0
    number = ~np.isnan(numeric)
    balance = keyed("account_balance") & number
    floored = np.where(numeric[balance] < 0.0, 0.0, numeric[balance])  # max(balance, 0.0)
    out[rows[balance], 2] = [math.log1p(x) for x in floored.tolist()]
    depth = keyed("browsing_depth") & number
    out[rows[depth], 3] = numeric[depth]
    return out


def context_columns(
    contexts: Sequence[dict[str, Any] | None], ts: np.ndarray, facts: np.ndarray | None = None
) -> np.ndarray:
    """`context_values` of many events (their contexts; `ts`: their times, int64) as an
    (n, 6) array, the same values: the clock features in one integer pass (event times are
    positive, so numpy's floor division is Python's), the context facts from `facts` when
    given (`context_fact_columns`), else only for events that have a context."""
    seconds = ts // 1000
    out = np.zeros((len(contexts), len(CONTEXT_FEATURES)), dtype=np.float64)
    out[:, 0] = (seconds // 3600) % 24
    out[:, 1] = (seconds // 86400 + 3) % 7
    if facts is not None:
        out[:, 2:] = facts
    elif any(contexts):  # (a batch of events with no context: no loop)
        for k, context in enumerate(contexts):
            if context:
                out[k, 2:] = _context_facts(context)
    return out


def item_values(
    user: State,
    item: State,
    meta: ItemMeta | None,
    seen_item: bool,
    event: Event,
    user_rate: float,
    user_mean: float,
    year_fit: tuple[float, float],
) -> list[float]:
    """ITEM_FEATURES: the item's aggregates and metadata, and the user's taste for it."""
    meta = meta or ItemMeta()
    gi, gu = cast(FloatGet, item.get), cast(FloatGet, user.get)
    i_n, i_rn, i_lab = gi("n", 0.0), gi("r_n", 0.0), gi("lab", 0.0)
    i_sum = gi("r_sum", 0.0)
    i_mean = (i_sum + RATING_PRIOR_MEAN * RATING_PRIOR_WEIGHT) / (i_rn + RATING_PRIOR_WEIGHT)
    i_var = gi("r_sq", 0.0) / i_rn - (i_sum / i_rn) ** 2 if i_rn > 1 else 0.0
    # The mean of the raters' own (smoothed) means: how lenient this item's audience is.
    i_rater = (gi("rater", 0.0) + RATING_PRIOR_MEAN * RATING_PRIOR_WEIGHT) / (
        i_rn + RATING_PRIOR_WEIGHT
    )
    ts = float(event.ts)
    g_count = sum(gu(f"gc:{g}", 0.0) for g in meta.genres)
    g_eng = sum(gu(f"ge:{g}", 0.0) for g in meta.genres)
    g_rsum = sum(gu(f"gr:{g}", 0.0) for g in meta.genres)
    lab = gu("lab", 0.0)
    genres = set(meta.genres)
    slope, mean_year = year_fit
    return [
        i_n,
        i_mean,
        _rate(gi("eng", 0.0), i_lab, 0.5),
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
        ts / MS_PER_DAY - gi("ts_d", 0.0) / i_n if i_n else -1.0,
        (g_rsum + user_mean * USER_MEAN_PRIOR_WEIGHT) / (g_count + USER_MEAN_PRIOR_WEIGHT),
        user_mean - i_mean,
        user_mean + slope * (meta.year - YEAR_CENTER - mean_year) if meta.year else user_mean,
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
    year_fit = year_line(user)
    values = user_values(user, event, params, year_fit)
    items = item_values(
        user, item, meta, seen_item, event, values[_U_RATE], values[_U_MEAN], year_fit
    )
    return values + context_values(event) + items


def definition_constants() -> dict[str, object]:
    """The numeric constants of the definitions (aggregates and vectors), hashed with the spec:
    changing one changes the values, so it changes the hash without a FEATURE_VERSION bump."""
    return {
        "RATING_PRIOR_MEAN": RATING_PRIOR_MEAN,
        "RATING_PRIOR_WEIGHT": RATING_PRIOR_WEIGHT,
        "ITEM_SUM_QUANTUM": aggregates.ITEM_SUM_QUANTUM,
        "ENGAGED_EMAS": [list(e) for e in ENGAGED_EMAS],
        "RATING_EMAS": [list(e) for e in RATING_EMAS],
        "YEAR_CENTER": YEAR_CENTER,
        "RATE_PRIOR_WEIGHT": RATE_PRIOR_WEIGHT,
        "USER_MEAN_PRIOR_WEIGHT": USER_MEAN_PRIOR_WEIGHT,
        "YEAR_VAR_PRIOR": YEAR_VAR_PRIOR,
        "ENGAGED_RATING": events.ENGAGED_RATING,
        "ENGAGED_FUNNEL_TYPES": sorted(t.value for t in events.ENGAGED_FUNNEL_TYPES),
        "FUNNEL_STEP": {t.value: step for t, step in events.FUNNEL_STEP.items()},
        "GENRES": list(GENRES),
    }


def feature_hash(params: FeatureParams) -> str:
    """A fingerprint of the feature definitions: a model trained on other ones is refused.

    SHA-256 over the declared contract (`features.spec.canonical_spec`: the tables' names,
    dtypes and groups and FEATURE_VERSION), `definition_constants()` and `repr(params)`; the
    first 16 hex digits. No source text: comments and formatting do not change it; a changed
    formula changes it through the FEATURE_VERSION bump that tests/test_feature_spec.py demands.
    """
    digest = hashlib.sha256()
    digest.update(spec.canonical_spec())
    digest.update(json.dumps(definition_constants(), sort_keys=True).encode())
    digest.update(repr(params).encode())
    return digest.hexdigest()[:16]
