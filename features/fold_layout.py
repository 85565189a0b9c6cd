"""The packed layouts `features.fold` works on: which column of a float64 row holds which field.

User state: the columns are `features.spec.USER_STATE_FLOAT_FIELDS` in that order (every numeric
field `features.aggregates.apply_event` writes: the session fields `cs_*`, the counters, one
`n_<type>` per `EventType`, `gc:/ge:/gr:<genre>` per `GENRES`, the moving averages...). `cs_id`,
the only string, is kept beside the table. Item state: `features.spec.ITEM_STATE_FIELDS`.

The compiled kernel never bakes a column number or a definition constant into its code (numba's
cache is keyed on features/fold.py alone and would keep stale ones when spec.py or
aggregates.py change): it receives them at run time as the named tuples built here. Passing the
constants at run time has a second purpose: LLVM rewrites `pow(0.5, x)` with a constant base
into `exp2(-x)`, which differs from CPython's `0.5 ** x` (libm `pow`) in the last bit for about
one x in a thousand; with a run-time base the kernel calls the same `pow` as CPython.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from features.aggregates import (
    ENGAGED_EMAS,
    ITEM_SUM_QUANTUM,
    MS_PER_DAY,
    MS_PER_MIN,
    RATING_EMAS,
    RATING_PRIOR_MEAN,
    RATING_PRIOR_WEIGHT,
    YEAR_CENTER,
    FeatureParams,
    session_fields,
)
from features.events import ENGAGED_FUNNEL_TYPES, ENGAGED_RATING, FUNNEL_STEP, EventType
from features.items import GENRES
from features.spec import ITEM_STATE_FIELDS, USER_STATE_FLOAT_FIELDS, USER_STATE_STRING_FIELDS
from features.vector import (
    CONTEXT_FEATURES,
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    MS_PER_HOUR,
    MS_PER_YEAR,
    PROPENSITY_FEATURES,
    RATE_PRIOR_WEIGHT,
    USER_FEATURES,
    USER_MEAN_PRIOR_WEIGHT,
    YEAR_VAR_PRIOR,
)

#: Column order of the user table (float64) and of the item table.
USER_FIELDS: tuple[str, ...] = tuple(USER_STATE_FLOAT_FIELDS)
ITEM_FIELDS: tuple[str, ...] = tuple(ITEM_STATE_FIELDS)
#: The one string field of a user state, kept outside the table.
SESSION_ID_FIELD = "cs_id"
#: The fields of a session, in `aggregates.session_fields` order (the closed-session rows).
SESSION_FIELDS: tuple[str, ...] = tuple(session_fields({}))
#: Event types in code order (the kernel's `type` column).
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
TYPE_CODE: dict[EventType, int] = {t: i for i, t in enumerate(EVENT_TYPES)}
RATING_CODE = TYPE_CODE[EventType.RATING]
TAG_CODE = TYPE_CODE[EventType.TAG]
#: The codes of the funnel types that count as engagement (events.ENGAGED_FUNNEL_TYPES).
ENGAGED_FUNNEL_CODES = np.array(sorted(TYPE_CODE[t] for t in ENGAGED_FUNNEL_TYPES))


def engaged_column(kind: np.ndarray, value: np.ndarray) -> np.ndarray:
    """`Event.engaged` of many events as 1.0 / 0.0, from their type codes and values (0.0
    for events that are not ratings; a rating always has one)."""
    rated = (kind == RATING_CODE) & (value >= ENGAGED_RATING)
    engaged: np.ndarray = (rated | np.isin(kind, ENGAGED_FUNNEL_CODES)).astype(np.float64)
    return engaged


def labelled_column(kind: np.ndarray) -> np.ndarray:
    """`Event.labelled` of many events: every type but tags."""
    labelled: np.ndarray = kind != TAG_CODE
    return labelled


GENRE_CODE: dict[str, int] = {g: i for i, g in enumerate(GENRES)}

N_USER_FEATURES = len(USER_FEATURES)
N_CONTEXT_FEATURES = len(CONTEXT_FEATURES)
N_ITEM_FEATURES = len(ITEM_FEATURES)
N_PROPENSITY = len(PROPENSITY_FEATURES)
N_INTERACTION = len(INTERACTION_FEATURES)

#: The scalar user fields the kernel reads or writes by name (plus the per-type, per-genre and
#: moving-average families, passed as column arrays).
_USER_SCALARS = (
    "cs_start", "cs_end", "cs_n", "cs_eng", "cs_step", "cs_rn", "cs_rs",
    "sess", "cl_n", "cl_bounce", "cl_dur",
    "n", "lab", "eng", "items",
    "r_n", "r_sum", "r_sq", "r_half", "r_top", "r_last",
    "y_n", "y_s", "y_ss", "y_r", "y_rs",
    "dr_s", "dr_n", "dr_ts", "dec_e", "dec_n", "dec_ts", "dd_n", "first_ts", "last_ts",
)  # fmt: skip
UserCols = namedtuple("UserCols", _USER_SCALARS)  # type: ignore[misc]
ItemCols = namedtuple("ItemCols", ITEM_FIELDS)  # type: ignore[misc]
#: The per-type counters the user vector shows, in USER_FEATURES order (u_n_page_view, ...).
COUNT_FEATURE_FIELDS: tuple[str, ...] = tuple(
    name[2:] for name in USER_FEATURES if name.startswith("u_n_")
)

#: Definition constants and parameters, as run-time values of the kernel (see module docstring).
Consts = namedtuple(
    "Consts",
    [
        "half",  # the base of every `0.5 ** x`
        "two",  # the exponent of every `x ** 2`
        "session_gap",
        "half_life",
        "mood_half_life",
        "day_half_life",
        "prior_mean",
        "prior_weight",
        "quantum",
        "year_center",
        "ms_per_min",
        "ms_per_hour",
        "ms_per_day",
        "ms_per_year",
        "rate_prior_weight",
        "rate_prior",  # the 0.5 prior of the engage rates
        "user_mean_prior_weight",
        "year_var_prior",
        "neumaier",  # 1.0 when sum() of floats is compensated (CPython >= 3.12)
    ],
)


def _check_layout() -> None:
    if USER_STATE_STRING_FIELDS != (SESSION_ID_FIELD,):
        raise RuntimeError(f"features.fold expects cs_id as the only string field, not "
                           f"{USER_STATE_STRING_FIELDS}")  # fmt: skip
    needed = [
        *_USER_SCALARS,
        *(f"n_{t.value}" for t in EVENT_TYPES),
        *(f"{p}:{g}" for p in ("gc", "ge", "gr") for g in GENRES),
        *(name for name, _ in ENGAGED_EMAS),
        *(name for name, _ in RATING_EMAS),
        *COUNT_FEATURE_FIELDS,
    ]
    missing = [name for name in needed if name not in USER_FIELDS]
    if missing:
        raise RuntimeError(f"features.spec USER_STATE lacks fields the fold writes: {missing}")
    if len(set(USER_FIELDS)) != len(USER_FIELDS):
        raise RuntimeError("features.spec USER_STATE has duplicate fields")
    if set(ITEM_FIELDS) != {"n", "ts_d", "lab", "eng", "r_n", "r_sum", "r_sq", "rater"}:
        raise RuntimeError(f"features.fold does not know the item layout {ITEM_FIELDS}")
    if len(COUNT_FEATURE_FIELDS) != 6:
        raise RuntimeError(f"features.fold writes 6 u_n_* features, not {COUNT_FEATURE_FIELDS}")


_check_layout()
USER_COLUMN: dict[str, int] = {name: i for i, name in enumerate(USER_FIELDS)}
ITEM_COLUMN: dict[str, int] = {name: i for i, name in enumerate(ITEM_FIELDS)}


def _ints(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


#: Everything the kernel needs to know about the layout, as run-time arguments.
USER_COLS = UserCols(*(USER_COLUMN[name] for name in _USER_SCALARS))
ITEM_COLS = ItemCols(*(ITEM_COLUMN[name] for name in ITEM_FIELDS))
TYPE_COLS = _ints([USER_COLUMN[f"n_{t.value}"] for t in EVENT_TYPES])
TYPE_STEP = np.array([float(FUNNEL_STEP.get(t, 0)) for t in EVENT_TYPES], dtype=np.float64)
COUNT_COLS = _ints([USER_COLUMN[name] for name in COUNT_FEATURE_FIELDS])
GC_COLS = _ints([USER_COLUMN[f"gc:{g}"] for g in GENRES])
GE_COLS = _ints([USER_COLUMN[f"ge:{g}"] for g in GENRES])
GR_COLS = _ints([USER_COLUMN[f"gr:{g}"] for g in GENRES])
EE_COLS = _ints([USER_COLUMN[name] for name, _ in ENGAGED_EMAS])
EE_ALPHA = np.array([alpha for _, alpha in ENGAGED_EMAS], dtype=np.float64)
ER_COLS = _ints([USER_COLUMN[name] for name, _ in RATING_EMAS])
ER_ALPHA = np.array([alpha for _, alpha in RATING_EMAS], dtype=np.float64)


def consts(params: FeatureParams, neumaier: bool) -> tuple[float, ...]:
    """The run-time constants for `params`."""
    return Consts(
        half=0.5,
        two=2.0,
        session_gap=float(params.session_gap_ms),
        half_life=float(params.half_life_ms),
        mood_half_life=float(params.mood_half_life_ms),
        day_half_life=float(params.day_half_life_ms),
        prior_mean=float(RATING_PRIOR_MEAN),
        prior_weight=float(RATING_PRIOR_WEIGHT),
        quantum=float(ITEM_SUM_QUANTUM),
        year_center=float(YEAR_CENTER),
        ms_per_min=float(MS_PER_MIN),
        ms_per_hour=float(MS_PER_HOUR),
        ms_per_day=float(MS_PER_DAY),
        ms_per_year=float(MS_PER_YEAR),
        rate_prior_weight=float(RATE_PRIOR_WEIGHT),
        rate_prior=0.5,
        user_mean_prior_weight=float(USER_MEAN_PRIOR_WEIGHT),
        year_var_prior=float(YEAR_VAR_PRIOR),
        neumaier=1.0 if neumaier else 0.0,
    )
