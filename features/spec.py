"""The feature contract, declared: every state field and every feature, with its type and meaning.

Four tables, each an ordered tuple of frozen records:

- `USER_STATE` (`StateField`): the fields of a user's hash `u:{user}` that
  `features.aggregates.apply_event` writes, in a fixed order (`USER_STATE_FIELDS`). The
  per-genre families `gc:` / `ge:` / `gr:` are expanded over `features.items.GENRES` and the
  per-type counters `n_<type>` over `features.events.EventType`. Every field is a float except
  `cs_id`, the current session's id, **the only string field** (`USER_STATE_STRING_FIELDS`);
  `USER_STATE_FLOAT_FIELDS` is the order without it, the layout of a packed float64 state.
- `SESSION_STATE`: the fields of a closed session `s:{user}:<session>` (`session_fields`).
- `ITEM_STATE`: the fields of an item's aggregates (`Applied.item_delta` increments), kept in
  `i:{item}` as one packed shard per partition (`features.item_shards`).
- `FEATURES` (`Feature`): every model/rule input, in vector order, grouped `user`, `context`,
  `item`. `USER_FEATURES`, `CONTEXT_FEATURES`, `ITEM_FEATURES` and their concatenations
  `PROPENSITY_FEATURES` (user + context) and `INTERACTION_FEATURES` (all three) are the names,
  derived from this table; `features.vector` re-exports them.

dtypes. State: `"str"` (only `cs_id`), `"int"` (integer-valued: counts, epoch-ms times and
durations, sums of integers), `"float"`. Features are all float64 in a vector; their dtype
says which values occur: `"flag"` (0.0 or 1.0), `"int"` (integer-valued), `"float"`.
`tests/test_feature_spec.py` checks each vector function against these names (length, and
values by name on a hand-computed example), that `apply_event` writes only declared fields and
that every value has its declared dtype.

The feature hash (`features.vector.feature_hash`, which the model registry uses to refuse a
model trained on other definitions) is taken over `canonical_spec()` (the names, dtypes and
groups of all four tables, in order, and `FEATURE_VERSION`), the numeric constants of the
definitions and the `FeatureParams`, never over source text: comments and formatting do not
change it. The free-text meanings and phrases are left out on purpose: rewording one documents
a feature better without changing a single value, so it must not make registered models
unservable.

A feature's `phrase` is how a model reason on it reads (`scoring.reason_words`, at display
time). A numeric feature's phrase is a `str.format` template of `value` whose value parts are in
square brackets: `"[{value:.0f} ]events so far"` reads "12 events so far" when the value is
known and "events so far" when it is not (a stored reason keeps only the feature and its
contribution); `[<with the value>|<without>]` gives other words for the second case. Besides
the usual format specs, `weekday` names a day (0 = Monday) and `expm1` undoes a log1p. A
trailing `|| <value>: <words>` says what a sentinel value means (`|| -1: no ratings yet`). A
flag's phrase is `<when 1>|<when 0>`, read "whether <when 1>" without a value.

`FEATURE_VERSION` is what makes a changed *formula* change the hash. **Bump it whenever a
definition changes the values** of a state field or feature (an update rule in
`features.aggregates`, a formula in `features.vector`) without a change to these tables or to a
hashed constant. `tests/test_feature_spec.py` pins a fingerprint of the values on a fixed event
log per `FEATURE_VERSION` and fails, asking for the bump, when they move. Adding, removing,
renaming, reordering or retyping an entry changes the hash by itself. How to add a feature:
docs/features.md.

>>> len(INTERACTION_FEATURES) == len(PROPENSITY_FEATURES) + len(ITEM_FEATURES)
True
>>> FEATURE_BY_NAME["u_engage_rate"].group, FEATURE_BY_NAME["ui_seen_item"].dtype
('user', 'flag')
>>> USER_STATE_STRING_FIELDS
('cs_id',)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from features.aggregates import ENGAGED_EMAS, RATING_EMAS
from features.events import EventType
from features.items import GENRES

#: The version of the definitions (see the module docstring: bump it when a formula changes).
FEATURE_VERSION = 1

StateDtype = Literal["str", "int", "float"]
FeatureDtype = Literal["flag", "int", "float"]
FeatureGroup = Literal["user", "context", "item"]
STATE_DTYPES: tuple[str, ...] = ("str", "int", "float")
FEATURE_DTYPES: tuple[str, ...] = ("flag", "int", "float")
#: Feature groups in vector order: a vector is the user block, then context, then item.
FEATURE_GROUPS: tuple[str, ...] = ("user", "context", "item")


@dataclass(frozen=True)
class StateField:
    """One field of a state hash (user, session or item)."""

    name: str
    dtype: StateDtype
    meaning: str
    group: str


@dataclass(frozen=True)
class Feature:
    """One entry of a feature vector. `phrase`: how a model reason on it reads (the module
    docstring gives its grammar); wording only, never hashed."""

    name: str
    dtype: FeatureDtype
    meaning: str
    group: FeatureGroup
    phrase: str = ""


def _s(group: str, dtype: StateDtype, *fields: tuple[str, str]) -> tuple[StateField, ...]:
    return tuple(StateField(name, dtype, meaning, group) for name, meaning in fields)


def _f(
    group: FeatureGroup, dtype: FeatureDtype, *entries: tuple[str, str, str]
) -> tuple[Feature, ...]:
    return tuple(Feature(name, dtype, meaning, group, phrase) for name, meaning, phrase in entries)


# -- state ------------------------------------------------------------------------------------

USER_STATE: tuple[StateField, ...] = (
    # The current session (written to a key of its own when it closes, see SESSION_STATE).
    *_s("session", "str", ("cs_id", "current session id: the event's session_id, else the "
        "first event's ts as text (the only string field)")),
    *_s("session", "int",
        ("cs_start", "current session's first event time (ms)"),
        ("cs_end", "current session's latest event time (ms, a running max)"),
        ("cs_n", "events in the current session"),
        ("cs_eng", "engaged events in the current session"),
        ("cs_step", "furthest funnel step in the current session (0 = none)"),
        ("cs_rn", "ratings in the current session")),
    *_s("session", "float", ("cs_rs", "sum of the current session's ratings")),
    *_s("sessions", "int",
        ("sess", "sessions started"),
        ("cl_n", "sessions closed (all but the current one)"),
        ("cl_bounce", "closed sessions of exactly one event"),
        ("cl_dur", "summed duration of the closed sessions (ms, end - start)")),
    *_s("counts", "int",
        ("n", "events applied"),
        *((f"n_{t.value}", f"{t.value} events") for t in EventType),
        ("lab", "labelled events (all but tags)"),
        ("eng", "engaged labelled events"),
        ("items", "distinct items touched")),
    *_s("ema", "float",
        *((name, f"moving average of the label over labelled events, weight {alpha} on the "
           "newest (log order)") for name, alpha in ENGAGED_EMAS),
        *((name, f"moving average of ratings, weight {alpha} on the newest (log order)")
          for name, alpha in RATING_EMAS)),
    *_s("ratings", "int", ("r_n", "ratings")),
    *_s("ratings", "float",
        ("r_sum", "sum of ratings"),
        ("r_sq", "sum of squared ratings")),
    *_s("ratings", "int",
        ("r_half", "ratings between whole stars"),
        ("r_top", "ratings of 5 or more")),
    *_s("ratings", "float", ("r_last", "latest rating by event time (ties: later in the log)")),
    *_s("year", "int",
        ("y_n", "ratings of films with a known release year"),
        ("y_s", "sum of their release years - YEAR_CENTER"),
        ("y_ss", "sum of squared (release year - YEAR_CENTER)")),
    *_s("year", "float",
        ("y_r", "sum of (release year - YEAR_CENTER) * rating"),
        ("y_rs", "sum of those ratings")),
    *_s("mood", "float",
        ("dr_s", "rating sum decayed with mood_half_life_ms, as of dr_ts"),
        ("dr_n", "rating count decayed with mood_half_life_ms, as of dr_ts")),
    *_s("mood", "int", ("dr_ts", "anchor of dr_s/dr_n: the latest rating's time (ms)")),
    *_s("decay", "float",
        ("dec_e", "engaged labelled events decayed with half_life_ms, as of dec_ts"),
        ("dec_n", "labelled events decayed with half_life_ms, as of dec_ts")),
    *_s("decay", "int", ("dec_ts", "anchor of dec_e/dec_n: the latest labelled event time (ms)")),
    *_s("decay", "float", ("dd_n", "events decayed with day_half_life_ms, as of last_ts")),
    *_s("time", "int",
        ("first_ts", "earliest event time (ms)"),
        ("last_ts", "latest event time (ms, a running max)")),
    *_s("genre", "int", *((f"gc:{g}", f"labelled events on {g} items") for g in GENRES)),
    *_s("genre", "int", *((f"ge:{g}", f"engaged labelled events on {g} items") for g in GENRES)),
    *_s("genre", "float", *((f"gr:{g}", f"sum of ratings of {g} items") for g in GENRES)),
)  # fmt: skip

SESSION_STATE: tuple[StateField, ...] = _s(
    "session", "int",
    ("start", "first event time (ms)"),
    ("end", "latest event time (ms)"),
    ("events", "events"),
    ("engaged", "engaged events"),
    ("furthest_step", "furthest funnel step (0 = none)"),
    ("bounce", "1 if the session has exactly one event, else 0"),
    ("ratings", "ratings"),
) + _s("session", "float", ("rating_sum", "sum of the session's ratings"))  # fmt: skip

ITEM_STATE: tuple[StateField, ...] = (
    *_s("item", "int",
        ("n", "events on the item"),
        ("ts_d", "sum of the events' whole days since the epoch (exact; for the mean age)"),
        ("lab", "labelled events on the item"),
        ("eng", "engaged labelled events on the item"),
        ("r_n", "ratings of the item")),
    *_s("item", "float",
        ("r_sum", "sum of its ratings"),
        ("r_sq", "sum of its squared ratings"),
        ("rater", "sum of the raters' smoothed mean ratings before rating it (1/1024 steps)")),
)  # fmt: skip

USER_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in USER_STATE)
USER_STATE_STRING_FIELDS: tuple[str, ...] = tuple(f.name for f in USER_STATE if f.dtype == "str")
#: The user state without its string field: the column order of a packed float64 state.
USER_STATE_FLOAT_FIELDS: tuple[str, ...] = tuple(f.name for f in USER_STATE if f.dtype != "str")
SESSION_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in SESSION_STATE)
ITEM_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in ITEM_STATE)

# -- features ---------------------------------------------------------------------------------
# "Smoothed" means with pseudo-observations: rates (hits + 2 * prior) / (trials + 2), rating
# means with 5 pseudo-ratings of 3.5, short-horizon means with 2 at the user's own mean.

FEATURES: tuple[Feature, ...] = (
    *_f("user", "int",
        ("u_events", "events so far", "[{value:.0f} ]events so far"),
        ("u_labelled", "labelled events so far", "[{value:.0f} ]events other than tags"),
        ("u_engaged", "engaged labelled events so far", "[{value:.0f} ]engaged events so far")),
    *_f("user", "float", ("u_engage_rate", "engaged / labelled, smoothed towards 0.5",
                          "[engaged on {value:.0%} of events|how often engaged] so far")),
    *_f("user", "int", ("u_rating_count", "ratings so far", "[{value:.0f} ]ratings so far")),
    *_f("user", "float",
        ("u_rating_mean", "mean rating, smoothed towards 3.5",
         "average rating given[ {value:.2f}]"),
        ("u_rating_std", "standard deviation of the ratings (0 with fewer than two)",
         "spread of the ratings given[ ±{value:.2f}]"),
        ("u_decayed_engaged", "engaged labelled events decayed (half_life_ms) to the event time",
         "[{value:.1f} ]recent engaged events (decayed)"),
        ("u_decayed_rate", "decayed engaged / decayed labelled, smoothed towards 0.5",
         "[engaged on {value:.0%} of recent events|how often engaged recently] (decayed)"),
        ("u_days_active", "days since the first event (0 for a new user)",
         "[active for {value:.0f} days|days since the first event]"),
        ("u_hours_since_last", "hours since the latest event (-1 for a new user)",
         "[{value:.1f} ]hours since the previous event || -1: first event")),
    *_f("user", "int",
        ("u_distinct_items", "distinct items touched", "[{value:.0f} ]distinct items so far"),
        ("u_sessions", "sessions started", "[{value:.0f} ]sessions so far")),
    *_f("user", "float",
        ("u_repeat_session_rate", "(sessions - 1) / sessions (0 for a new user)",
         "[came back in {value:.0%} of sessions|how often came back for another session]"),
        ("u_bounce_rate", "share of closed sessions of one event (0 with none closed)",
         "[left after one event in {value:.0%} of past sessions|how often left after one event]"),
        ("u_mean_session_min", "mean closed-session duration, minutes (0 with none closed)",
         "average past session[ of {value:.0f} minutes| length]")),
    *_f("user", "int",
        ("u_n_page_view", "page_view events", "[{value:.0f} ]page views"),
        ("u_n_pricing_view", "pricing_view events", "[{value:.0f} ]pricing page views"),
        ("u_n_demo_request", "demo_request events", "[{value:.0f} ]demo requests"),
        ("u_n_signup", "signup events", "[{value:.0f} ]signups"),
        ("u_n_calendar_booking", "calendar_booking events", "[{value:.0f} ]calls booked"),
        ("u_n_tag", "tag events", "[{value:.0f} ]tags added"),
        ("s_events", "events in the session this event continues (0 if it starts one)",
         "[{value:.0f} ]events in this session"),
        ("s_engaged", "engaged events in that session (0 if it starts one)",
         "[{value:.0f} ]engaged events in this session"),
        ("s_furthest_step", "furthest funnel step in that session (0 if it starts one)",
         "[got to funnel step {value:.0f}|furthest funnel step] in this session")),
    *_f("user", "float",
        ("s_minutes", "minutes since that session started (0 if it starts one)",
         "[{value:.0f} ]minutes into this session"),
        ("u_last_rating", "latest rating (-1 without ratings)",
         "last rating given[ {value:.1f}] || -1: no ratings yet"),
        ("u_mood_rating", "mean rating decayed with mood_half_life_ms, smoothed to u_rating_mean",
         "recent average rating given[ {value:.2f}]"),
        ("u_mood_weight", "rating count decayed with mood_half_life_ms",
         "[{value:.1f} ]recent ratings (decayed)")),
    *_f("user", "int", ("s_ratings", "ratings in that session (0 if it starts one)",
                        "[{value:.0f} ]ratings in this session")),
    *_f("user", "float",
        ("s_rating_mean", "that session's mean rating, smoothed to u_rating_mean",
         "average rating in this session[ {value:.2f}]"),
        *((f"u_ema_engaged_{name[2:]}", f"moving average of the label (weight {alpha}), the "
           "weight not yet filled by events put on u_engage_rate",
           f"[engaged on {{value:.0%}} of|engagement over] about the last {round(1 / alpha)} "
           "events")
          for name, alpha in ENGAGED_EMAS),
        *((f"u_ema_rating_{name[2:]}", f"moving average of ratings (weight {alpha}), the weight "
           "not yet filled by ratings put on u_rating_mean",
           f"average of about the last {round(1 / alpha)} ratings given[ {{value:.2f}}]")
          for name, alpha in RATING_EMAS),
        ("u_half_star_share", "share of ratings between whole stars (-1 without ratings)",
         "[gave half stars in {value:.0%} of ratings|how often rated in half stars] || -1: no "
         "ratings yet"),
        ("u_top_share", "share of ratings of 5 or more (-1 without ratings)",
         "[gave 5 stars or more in {value:.0%} of ratings|how often gave 5 stars or more] || "
         "-1: no ratings yet"),
        ("u_day_events", "events decayed with day_half_life_ms to the event time",
         "[{value:.1f} ]events in about the last day"),
        ("u_year_slope", "ridge slope of the user's rating on release year (0 with < 2 films)",
         "taste for newer films[ ({value:+.3f} stars a year)]")),
    *_f("context", "int",
        ("hour", "hour of day of the event time, UTC", "time of day[ ({value:02.0f}:00 UTC)]"),
        ("dow", "day of week of the event time, UTC, 0 = Monday",
         "day of the week[ ({value:weekday})]")),
    *_f("context", "flag",
        ("ctx_mobile", "context device is mobile", "on a mobile device|not on a mobile device"),
        ("ctx_desktop", "context device is desktop", "on a desktop|not on a desktop")),
    *_f("context", "float",
        ("ctx_log_balance", "log1p of the context account_balance (clipped at 0; 0 if absent)",
         "account balance[ {value:expm1}]"),
        ("ctx_depth", "context browsing_depth (0 if absent)", "browsing depth[ {value:.0f}]")),
    *_f("item", "int", ("i_count", "events on the item", "[{value:.0f} ]events on this item")),
    *_f("item", "float",
        ("i_rating_mean", "item's mean rating, smoothed towards 3.5",
         "this item's average rating[ {value:.2f}]"),
        ("i_engage_rate", "item's engaged / labelled, smoothed towards 0.5",
         "[people engaged with this item {value:.0%} of the time|how often people engage with "
         "this item]")),
    *_f("item", "int",
        ("i_year", "release year (0 if unknown)", "release year[ {value:.0f}] || 0: release "
         "year unknown"),
        ("i_n_genres", "number of the item's genres", "[{value:.0f} ]genres on this item"),
        ("ui_genre_count", "user's labelled events on the item's genres (summed over them)",
         "[{value:.0f} ]events on this item's genres"),
        ("ui_genre_engaged", "user's engaged events on the item's genres (summed over them)",
         "[{value:.0f} ]engaged events on this item's genres")),
    *_f("item", "float",
        ("ui_genre_affinity", "ui_genre_engaged / ui_genre_count, smoothed to u_engage_rate",
         "[engaged with this item's genres {value:.0%} of the time|how often engaged with this "
         "item's genres]"),
        ("ui_genre_share", "ui_genre_count / (labelled events * genres) (0 without either)",
         "share of activity in this item's genres[ ({value:.0%})]")),
    *_f("item", "flag", ("ui_seen_item", "the user touched this item before",
                         "seen this item before|first time on this item")),
    *_f("item", "flag", *((f"g_{g}", f"the item is tagged {g}",
                           f"the item is tagged {g}|the item is not tagged {g}") for g in GENRES)),
    *_f("item", "float",
        ("i_rating_std", "standard deviation of the item's ratings (0 with fewer than two)",
         "spread of this item's ratings[ ±{value:.2f}]"),
        ("i_rater_mean", "mean of its raters' smoothed mean ratings, smoothed towards 3.5",
         "its raters' usual average rating[ {value:.2f}]"),
        ("i_rating_resid", "i_rating_mean - i_rater_mean",
         "[this item rated {value:+.2f} against its raters' usual|this item's rating against its "
         "raters' usual]"),
        ("i_age_years", "years from the release year to the event time (-1 if unknown)",
         "[released {value:.0f} years ago|age of the item] || -1: release year unknown"),
        ("i_days_since_mean", "days from the item's mean event day to the event (-1 if new)",
         "[this item's events are {value:.0f} days old on average|age of this item's events] || "
         "-1: new item"),
        ("ui_genre_rating_mean", "user's mean rating of the item's genres, smoothed to "
         "u_rating_mean", "average rating given to this item's genres[ {value:.2f}]"),
        ("ui_rating_gap", "u_rating_mean - i_rating_mean",
         "gap between the user's and this item's average rating[ ({value:+.2f})]"),
        ("ui_year_rating", "u_rating_mean moved along u_year_slope to the item's release year",
         "expected rating for this item's release year[ {value:.2f}]")),
)  # fmt: skip

FEATURE_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
USER_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.group == "user")
CONTEXT_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.group == "context")
ITEM_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.group == "item")
PROPENSITY_FEATURES: tuple[str, ...] = USER_FEATURES + CONTEXT_FEATURES
INTERACTION_FEATURES: tuple[str, ...] = USER_FEATURES + CONTEXT_FEATURES + ITEM_FEATURES


def tables() -> dict[str, tuple[StateField, ...] | tuple[Feature, ...]]:
    """The four tables by name (read at call time, so a test can patch one)."""
    return {
        "user_state": USER_STATE,
        "session_state": SESSION_STATE,
        "item_state": ITEM_STATE,
        "features": FEATURES,
    }


def canonical_spec() -> bytes:
    """The hashed part of the contract: FEATURE_VERSION and every table's (name, dtype, group)
    in order, as compact JSON. Meanings and phrases are left out (see the module docstring)."""
    doc = {
        "feature_version": FEATURE_VERSION,
        **{key: [[e.name, e.dtype, e.group] for e in table] for key, table in tables().items()},
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _check() -> None:
    """The tables' own invariants, checked at import: a malformed spec does not load."""
    for key, table in tables().items():
        names = [e.name for e in table]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"features.spec {key}: duplicate names {dupes}")
        allowed = FEATURE_DTYPES if key == "features" else STATE_DTYPES
        for e in table:
            if e.dtype not in allowed or not e.meaning:
                raise ValueError(f"features.spec {key}: {e.name} has dtype {e.dtype!r} "
                                 f"(allowed {allowed}) or no meaning")  # fmt: skip
    unworded = [f.name for f in FEATURES if not f.phrase.strip()]
    if unworded:
        raise ValueError(f"features.spec FEATURES: no phrase for {unworded}")
    groups = [f.group for f in FEATURES]
    if groups != sorted(groups, key=FEATURE_GROUPS.index):
        raise ValueError(
            "features.spec FEATURES: groups must come in the order user, context, item"
        )
    for table in (SESSION_STATE, ITEM_STATE):
        if any(f.dtype == "str" for f in table):
            raise ValueError("features.spec: only the user state has a string field")


_check()
