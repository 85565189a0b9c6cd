"""The declared feature contract (features/spec.py) against the code that computes it.

No servers. (a) every vector function returns exactly its declared names; (b) on a hand-built
state every feature has, *by name*, the value derived by hand below, so two features swapped in
the declaration or in a returned list fail; (c) apply_event writes only declared state fields,
of their declared dtypes; (d) the feature hash is a function of the spec, the constants and the
params, not of source text; (e) a pinned fingerprint of the values on a fixed log, so a changed
formula cannot keep the old hash; (f) the doctests of features/.
"""

from __future__ import annotations

import dataclasses
import doctest
import hashlib
import importlib
import inspect
import itertools
import math
import pkgutil
import re
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

import features
from features import spec, vector
from features.aggregates import FeatureParams, State, apply_event, apply_item_delta, session_fields
from features.events import Event, EventType
from features.items import GENRES, ItemMeta
from features.spec import (
    CONTEXT_FEATURES,
    FEATURE_BY_NAME,
    FEATURES,
    INTERACTION_FEATURES,
    ITEM_FEATURES,
    ITEM_STATE,
    ITEM_STATE_FIELDS,
    PROPENSITY_FEATURES,
    SESSION_STATE,
    SESSION_STATE_FIELDS,
    USER_FEATURES,
    USER_STATE,
    USER_STATE_FIELDS,
)
from features.vector import (
    context_values,
    feature_hash,
    interaction_vector,
    item_values,
    propensity_vector,
    user_values,
    year_line,
)

PARAMS = FeatureParams()
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
# Wednesday 2024-03-06, 14:30 UTC.
T = int(datetime(2024, 3, 6, 14, 30, tzinfo=UTC).timestamp() * 1000)


def event(ts: int, kind: str, user: str = "u", **kw: object) -> Event:
    return Event(event_id=f"{user}-{ts}-{kind}", user_id=user, ts=ts, event_type=kind,
                 source="test", **kw)  # type: ignore[arg-type]  # fmt: skip


# -- (a) + (c): a varied log, every function and every write checked against the spec ---------

METAS = {
    "all": ItemMeta(genres=GENRES, year=1995),  # every genre: every gc:/ge:/gr: field written
    "drama": ItemMeta(genres=("Drama",), year=None),
    "bare": ItemMeta(),
}  # "nometa" has none at all


def varied_log() -> list[Event]:
    """Ratings (whole, half, top, low), every funnel type, tags, events without an item, with
    and without session ids, session gaps, an out-of-order event."""
    a = [
        event(T, "rating", "a", item_id="all", session_id="s1", value=4.0),
        event(T + MIN, "rating", "a", item_id="drama", session_id="s1", value=3.5),
        event(T + 2 * MIN, "rating", "a", item_id="nometa", session_id="s1", value=5.0),
        event(T + 3 * MIN, "tag", "a", item_id="all", session_id="s1"),
        event(T + 4 * MIN, "page_view", "a", session_id="s1"),
        event(T + 5 * MIN, "pricing_view", "a", session_id="s2"),
        event(T + 6 * MIN, "demo_request", "a", session_id="s2", context={"device": "mobile"}),
        event(T + 7 * MIN, "signup", "a", item_id="bare", session_id="s2"),
        event(T + 9 * HOUR, "calendar_booking", "a", session_id="s3"),
        event(T + 8 * HOUR, "rating", "a", item_id="all", session_id="s3", value=2.0),
    ]
    b = [
        event(T, "page_view", "b", context={"device": "desktop", "account_balance": 12.5}),
        event(T + 10 * MIN, "rating", "b", item_id="all", value=4.5),
        event(T + 2 * HOUR, "rating", "b", item_id="drama", value=1.0),
        event(T + 5 * HOUR, "tag", "b", item_id="nometa"),
        event(T + 5 * HOUR + MIN, "signup", "b", context={"browsing_depth": 3}),
        event(T + 5 * HOUR + 2 * MIN, "rating", "b", item_id="all", value=0.5),
    ]
    return [*a, *b, event(T, "tag", "c", item_id="bare")]


@dataclasses.dataclass
class Run:
    users: dict[str, State]
    items: dict[str, State]
    vectors: list[tuple[list[float], list[float]]]  # (interaction before, propensity after)
    closed: list[State]
    deltas: list[dict[str, float]]


def run(log: list[Event]) -> Run:
    """The pipeline's step, spelled out so that each vector function is called on its own."""
    users: dict[str, State] = {}
    items: dict[str, State] = {}
    seen: dict[str, set[str]] = {}
    out = Run(users, items, [], [], [])
    for ev in log:
        user = users.setdefault(ev.user_id, {})
        item = items.setdefault(ev.item_id, {}) if ev.item_id else {}
        meta = METAS.get(ev.item_id or "")
        seen_item = ev.item_id in seen.setdefault(ev.user_id, set())
        u = user_values(user, ev, PARAMS)
        c = context_values(ev)
        fit = year_line(user)
        rate, mean = (
            u[USER_FEATURES.index("u_engage_rate")],
            u[USER_FEATURES.index("u_rating_mean")],
        )
        i = item_values(user, item, meta, seen_item, ev, rate, mean, fit)
        assert (len(u), len(c), len(i)) == (
            len(USER_FEATURES), len(CONTEXT_FEATURES), len(ITEM_FEATURES))  # fmt: skip
        before = interaction_vector(user, item, meta, seen_item, ev, PARAMS)
        assert len(before) == len(INTERACTION_FEATURES)
        assert before == u + c + i
        assert propensity_vector(user, ev, PARAMS) == u + c
        applied = apply_event(user, ev, meta, ev.item_id is not None and not seen_item, PARAMS)
        if ev.item_id:
            seen[ev.user_id].add(ev.item_id)
            apply_item_delta(item, applied.item_delta)
            out.deltas.append(applied.item_delta)
        if applied.closed_session:
            out.closed.append(applied.closed_session[1])
        after = propensity_vector(user, ev, PARAMS)
        assert len(after) == len(PROPENSITY_FEATURES)
        out.vectors.append((before, after))
    return out


def test_vector_functions_return_their_declared_names_on_empty_state() -> None:
    ev = event(T, "page_view")
    assert len(user_values({}, ev, PARAMS)) == len(USER_FEATURES)
    assert len(context_values(ev)) == len(CONTEXT_FEATURES)
    assert len(item_values({}, {}, None, False, ev, 0.5, 3.5, (0.0, 0.0))) == len(ITEM_FEATURES)
    assert len(propensity_vector({}, ev, PARAMS)) == len(PROPENSITY_FEATURES)
    assert len(interaction_vector({}, {}, None, False, ev, PARAMS)) == len(INTERACTION_FEATURES)


def test_declared_names_are_the_tables_and_vector_reexports_them() -> None:
    assert PROPENSITY_FEATURES == USER_FEATURES + CONTEXT_FEATURES
    assert INTERACTION_FEATURES == PROPENSITY_FEATURES + ITEM_FEATURES
    assert tuple(f.name for f in FEATURES) == INTERACTION_FEATURES
    for name in ("USER_FEATURES", "CONTEXT_FEATURES", "ITEM_FEATURES", "PROPENSITY_FEATURES",
                 "INTERACTION_FEATURES"):  # fmt: skip
        assert getattr(vector, name) is getattr(spec, name)
    assert spec.USER_STATE_STRING_FIELDS == ("cs_id",)
    assert tuple(f for f in USER_STATE_FIELDS if f != "cs_id") == spec.USER_STATE_FLOAT_FIELDS
    families = {f"{p}:{g}" for p in ("gc", "ge", "gr") for g in GENRES}
    assert families <= set(USER_STATE_FIELDS)
    assert {f"n_{t.value}" for t in EventType} <= set(USER_STATE_FIELDS)


def test_apply_event_writes_only_declared_fields_of_declared_dtypes() -> None:
    out = run(varied_log())
    written = set().union(*(u.keys() for u in out.users.values()))
    assert written <= set(USER_STATE_FIELDS), written - set(USER_STATE_FIELDS)
    # and the log is varied enough that every declared field is written (none is dead)
    assert written == set(USER_STATE_FIELDS), set(USER_STATE_FIELDS) - written
    for user in out.users.values():
        check_dtypes(user, USER_STATE)
        assert tuple(session_fields(user)) == SESSION_STATE_FIELDS
        check_dtypes(session_fields(user), SESSION_STATE)
    assert len(out.closed) >= 3
    for closed in out.closed:
        assert tuple(closed) == SESSION_STATE_FIELDS
        check_dtypes(closed, SESSION_STATE)
    for delta in out.deltas:
        assert set(delta) <= set(ITEM_STATE_FIELDS)
    assert set().union(*out.deltas) == set(ITEM_STATE_FIELDS)
    for item in out.items.values():
        check_dtypes(item, ITEM_STATE)


def check_dtypes(state: State, table: tuple[spec.StateField, ...]) -> None:
    dtypes = {f.name: f.dtype for f in table}
    for name, value in state.items():
        if dtypes[name] == "str":
            assert isinstance(value, str), name
        else:
            assert isinstance(value, float), name
            assert dtypes[name] != "int" or value.is_integer(), (name, value)


def test_feature_values_have_their_declared_dtypes() -> None:
    out = run(varied_log())
    for before, after in out.vectors:
        for names, values in ((INTERACTION_FEATURES, before), (PROPENSITY_FEATURES, after)):
            for name, value in zip(names, values, strict=True):
                # (a sum over no genres is the int 0: a number all the same)
                assert isinstance(value, float | int) and math.isfinite(value), name
                value = float(value)
                dtype = FEATURE_BY_NAME[name].dtype
                if dtype == "flag":
                    assert value in (0.0, 1.0), (name, value)
                elif dtype == "int":
                    assert value.is_integer(), (name, value)


# -- (b) the golden example: every feature's value by name, derived by hand --------------------

ALT_GENRES = GENRES[::2]  # every other genre: adjacent g_* flags differ


def golden_inputs() -> tuple[State, State, ItemMeta, Event]:
    """A user in the middle of session s1, rating item m1 (10 alternate genres, from 1995)."""
    user: State = {
        "n": 10.0, "lab": 8.0, "eng": 3.0, "items": 7.0,
        "n_rating": 4.0, "n_tag": 2.0, "n_page_view": 2.0, "n_pricing_view": 1.0,
        "n_signup": 1.0,
        # ratings 3.5, 5, 4.5, 2: two half stars, one top
        "r_n": 4.0, "r_sum": 15.0, "r_sq": 61.5, "r_half": 2.0, "r_top": 1.0, "r_last": 4.5,
        "dec_e": 3.0, "dec_n": 5.0, "dec_ts": float(T - 7 * DAY),
        "first_ts": float(T - 30 * DAY), "last_ts": float(T - 5 * MIN), "dd_n": 3.0,
        "sess": 4.0, "cl_n": 3.0, "cl_bounce": 1.0, "cl_dur": float(3 * 20 * MIN),
        "cs_id": "s1", "cs_start": float(T - 45 * MIN), "cs_end": float(T - 5 * MIN),
        "cs_n": 3.0, "cs_eng": 1.0, "cs_step": 4.0, "cs_rn": 2.0, "cs_rs": 9.5,
        "dr_s": 8.0, "dr_n": 2.0, "dr_ts": float(T - HOUR),
        "ee05": 0.1, "ee10": 0.3, "ee20": 0.5, "er20": 3.0,
        # films of 1990, 2005, 2010 rated 3.5, 5, 2: centred years -10, 5, 10
        "y_n": 3.0, "y_s": 5.0, "y_ss": 225.0, "y_r": 10.0, "y_rs": 10.5,
        "gc:Action": 4.0, "ge:Action": 2.0, "gr:Action": 7.0,
        "gc:Comedy": 2.0, "ge:Comedy": 1.0, "gr:Comedy": 5.0,
        "gc:Drama": 3.0, "ge:Drama": 3.0, "gr:Drama": 9.0,  # not a genre of m1
    }  # fmt: skip
    item: State = {
        "n": 20.0, "lab": 16.0, "eng": 9.0, "r_n": 8.0, "r_sum": 30.0, "r_sq": 120.0,
        "rater": 28.0, "ts_d": float(20 * (T // DAY - 100)),  # a mean event day 100 days ago
    }  # fmt: skip
    meta = ItemMeta(genres=ALT_GENRES, year=1995)
    context = {"device": "mobile", "account_balance": 99.0, "browsing_depth": 7}
    ev = event(T, "rating", item_id="m1", session_id="s1", value=4.0, context=context)
    return user, item, meta, ev


def golden_expected() -> dict[str, float]:
    """Each feature of golden_inputs() worked out by hand from its declared meaning."""
    mean = (15.0 + 5 * 3.5) / (4 + 5)  # 5 pseudo-ratings of 3.5
    rate = (3 + 2 * 0.5) / (8 + 2)  # 2 pseudo-observations at 0.5
    fade = 0.5 ** (7 / 14)  # 7 days into a 14-day half-life
    mean_year, n = 5 / 3, 3
    slope = (10 / n - mean_year * 10.5 / n) / ((225 / n - mean_year**2) + 25)
    i_mean = (30.0 + 5 * 3.5) / (8 + 5)
    i_rater = (28.0 + 5 * 3.5) / (8 + 5)
    when = datetime.fromtimestamp(T / 1000, UTC)
    user = {
        "u_events": 10, "u_labelled": 8, "u_engaged": 3, "u_engage_rate": rate,
        "u_rating_count": 4, "u_rating_mean": mean,
        "u_rating_std": math.sqrt((3.5**2 + 5**2 + 4.5**2 + 2**2) / 4 - (15 / 4) ** 2),
        "u_decayed_engaged": 3 * fade, "u_decayed_rate": (3 * fade + 1) / (5 * fade + 2),
        "u_days_active": 30.0, "u_hours_since_last": 5 / 60, "u_distinct_items": 7,
        "u_sessions": 4, "u_repeat_session_rate": 3 / 4, "u_bounce_rate": 1 / 3,
        "u_mean_session_min": 20.0,
        "u_n_page_view": 2, "u_n_pricing_view": 1, "u_n_demo_request": 0, "u_n_signup": 1,
        "u_n_calendar_booking": 0, "u_n_tag": 2,
        "s_events": 3, "s_engaged": 1, "s_furthest_step": 4, "s_minutes": 45.0,
        "u_last_rating": 4.5,
        "u_mood_rating": (8 * 0.5 + 2 * mean) / (2 * 0.5 + 2),  # one mood half-life ago
        "u_mood_weight": 1.0,
        "s_ratings": 2, "s_rating_mean": (9.5 + 2 * mean) / (2 + 2),
        "u_ema_engaged_05": 0.1 + 0.95**8 * rate,  # 8 labelled events filled 1 - 0.95^8
        "u_ema_engaged_10": 0.3 + 0.9**8 * rate,
        "u_ema_engaged_20": 0.5 + 0.8**8 * rate,
        "u_ema_rating_20": 3.0 + 0.8**4 * mean,
        "u_half_star_share": 2 / 4, "u_top_share": 1 / 4,
        "u_day_events": 3 * 0.5 ** (5 / (24 * 60)),  # 5 minutes into a one-day half-life
        "u_year_slope": slope,
    }  # fmt: skip
    context = {
        "hour": when.hour, "dow": when.weekday(), "ctx_mobile": 1, "ctx_desktop": 0,
        "ctx_log_balance": math.log(100.0), "ctx_depth": 7,
    }  # fmt: skip
    item = {
        "i_count": 20, "i_rating_mean": i_mean, "i_engage_rate": (9 + 1) / (16 + 2),
        "i_year": 1995, "i_n_genres": 10,
        "ui_genre_count": 4 + 2, "ui_genre_engaged": 2 + 1,  # Action and Comedy; not Drama
        "ui_genre_affinity": (3 + 2 * rate) / (6 + 2), "ui_genre_share": 6 / (8 * 10),
        "ui_seen_item": 0,
        **{f"g_{g}": (1 if g in ALT_GENRES else 0) for g in GENRES},
        "i_rating_std": math.sqrt(120 / 8 - (30 / 8) ** 2),
        "i_rater_mean": i_rater, "i_rating_resid": i_mean - i_rater,
        "i_age_years": (when.year + (when - datetime(2024, 1, 1, tzinfo=UTC)).days / 366
                        - 1995),  # about 29.2: checked loosely below
        "i_days_since_mean": 100 + 14.5 / 24,
        "ui_genre_rating_mean": (7.0 + 5.0 + 2 * mean) / (6 + 2),
        "ui_rating_gap": mean - i_mean,
        "ui_year_rating": mean + slope * (1995 - 2000 - mean_year),
    }  # fmt: skip
    assert set(user) == set(USER_FEATURES) and set(context) == set(CONTEXT_FEATURES)
    assert set(item) == set(ITEM_FEATURES)
    return {k: float(v) for k, v in {**user, **context, **item}.items()}


LOOSE = {"i_age_years": 0.01}  # the hand value uses calendar days; the code a 365.2425-day year


def by_name_mismatches(names: tuple[str, ...] | list[str], values: list[float]) -> list[str]:
    """The names whose value is not the hand-derived one (the check is by name only)."""
    want = golden_expected()
    return [
        n
        for n, v in zip(names, values, strict=True)
        if not math.isclose(v, want[n], rel_tol=LOOSE.get(n, 1e-12), abs_tol=1e-12)
    ]


def golden_vector() -> list[float]:
    user, item, meta, ev = golden_inputs()
    return interaction_vector(user, item, meta, False, ev, PARAMS)


def test_every_feature_has_its_hand_derived_value_by_name() -> None:
    assert by_name_mismatches(INTERACTION_FEATURES, golden_vector()) == []
    user, _, _, ev = golden_inputs()
    assert by_name_mismatches(PROPENSITY_FEATURES, propensity_vector(user, ev, PARAMS)) == []


def test_golden_values_differ_between_neighbours() -> None:
    """What makes any adjacent swap detectable: neighbours never share a value."""
    want = golden_expected()
    for a, b in itertools.pairwise(INTERACTION_FEATURES):
        assert not math.isclose(want[a], want[b], rel_tol=0.02), (a, b)


@pytest.mark.parametrize("i", range(len(INTERACTION_FEATURES) - 1))
def test_swapping_two_adjacent_features_fails_the_by_name_check(i: int) -> None:
    names, values = list(INTERACTION_FEATURES), golden_vector()
    swapped_names = [*names[:i], names[i + 1], names[i], *names[i + 2 :]]
    assert set(by_name_mismatches(swapped_names, values)) == {names[i], names[i + 1]}
    swapped_values = [*values[:i], values[i + 1], values[i], *values[i + 2 :]]
    assert set(by_name_mismatches(names, swapped_values)) == {names[i], names[i + 1]}


# -- (d) the hash ------------------------------------------------------------------------------


def test_hash_is_sixteen_hex_digits_and_deterministic() -> None:
    h = feature_hash(PARAMS)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert feature_hash(FeatureParams()) == h


def test_hash_reads_no_source_text(monkeypatch: pytest.MonkeyPatch) -> None:
    h = feature_hash(PARAMS)

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the feature hash must not read source text")

    for name in ("getsource", "getsourcelines", "getsourcefile", "getfile"):
        monkeypatch.setattr(inspect, name, refuse)
    assert feature_hash(PARAMS) == h


def _load_commented(module: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """`module` re-executed from its source with comments and blank lines added everywhere."""
    source = Path(module.__file__ or "").read_text()
    edited = "# an added comment\n\n" + source.replace(
        "\ndef ", "\n# a comment about the next function\n\n\ndef "
    ).replace("\n)  # fmt: skip", "\n    # a comment inside a table\n)  # fmt: skip")
    edited += "\n\n# a trailing comment\n"
    assert edited != source
    copy = types.ModuleType(module.__name__ + "_commented")
    copy.__file__ = module.__file__
    monkeypatch.setitem(sys.modules, copy.__name__, copy)
    exec(compile(edited, copy.__name__, "exec"), copy.__dict__)
    return copy


def test_comments_in_features_do_not_change_the_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    import features.aggregates as aggregates

    h = feature_hash(PARAMS)
    commented_spec = _load_commented(spec, monkeypatch)
    assert commented_spec.canonical_spec() == spec.canonical_spec()
    commented_vector = _load_commented(vector, monkeypatch)
    commented_vector.spec = commented_spec  # type: ignore[attr-defined]
    commented_vector.aggregates = _load_commented(aggregates, monkeypatch)  # type: ignore[attr-defined]
    assert commented_vector.feature_hash(PARAMS) == h


def _edit(table: tuple, i: int, **change: str) -> tuple:
    return (*table[:i], dataclasses.replace(table[i], **change), *table[i + 1 :])


SPEC_CHANGES = {
    "feature renamed": ("FEATURES", lambda t: _edit(t, 0, name="u_events_total")),
    "feature dtype": ("FEATURES", lambda t: _edit(t, 0, dtype="float")),
    "feature group": ("FEATURES", lambda t: _edit(t, len(t) - 1, group="context")),
    "features swapped": ("FEATURES", lambda t: (t[1], t[0], *t[2:])),
    "feature added": ("FEATURES", lambda t: (*t, spec.Feature("i_new", "float", "new", "item"))),
    "user field renamed": ("USER_STATE", lambda t: _edit(t, 1, name="cs_begin")),
    "user field dtype": ("USER_STATE", lambda t: _edit(t, 1, dtype="float")),
    "user fields swapped": ("USER_STATE", lambda t: (t[1], t[0], *t[2:])),
    "session field renamed": ("SESSION_STATE", lambda t: _edit(t, 0, name="begin")),
    "item field dtype": ("ITEM_STATE", lambda t: _edit(t, 0, dtype="float")),
}


@pytest.mark.parametrize("change", SPEC_CHANGES)
def test_hash_changes_with_a_spec_entry(change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    h = feature_hash(PARAMS)
    table, edit = SPEC_CHANGES[change]
    monkeypatch.setattr(spec, table, edit(getattr(spec, table)))
    assert feature_hash(PARAMS) != h


def test_hash_ignores_the_free_text_meanings(monkeypatch: pytest.MonkeyPatch) -> None:
    h = feature_hash(PARAMS)
    monkeypatch.setattr(spec, "FEATURES", _edit(spec.FEATURES, 0, meaning="reworded"))
    monkeypatch.setattr(spec, "USER_STATE", _edit(spec.USER_STATE, 0, meaning="reworded"))
    assert feature_hash(PARAMS) == h


def test_hash_changes_with_feature_version(monkeypatch: pytest.MonkeyPatch) -> None:
    h = feature_hash(PARAMS)
    monkeypatch.setattr(spec, "FEATURE_VERSION", spec.FEATURE_VERSION + 1)
    assert feature_hash(PARAMS) != h


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(FeatureParams)])
def test_hash_changes_with_each_param(field: str) -> None:
    changed = dataclasses.replace(PARAMS, **{field: getattr(PARAMS, field) * 2})
    assert feature_hash(changed) != feature_hash(PARAMS)


def test_hash_changes_with_a_definition_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    h = feature_hash(PARAMS)
    monkeypatch.setattr(vector, "YEAR_VAR_PRIOR", vector.YEAR_VAR_PRIOR + 1)
    assert feature_hash(PARAMS) != h


# -- (e) values pinned to the hash: a changed formula must change the hash ---------------------

#: (feature_hash(FeatureParams()), fingerprint of the values on varied_log()). A formula change
#: moves the fingerprint: bump spec.FEATURE_VERSION (so the hash moves too) and re-pin both.
PINNED = ("67d51481d34bc6e1", "79c12386c6879dc8")


def values_fingerprint() -> str:
    out = run(varied_log())
    digest = hashlib.sha256()
    for before, after in out.vectors:
        digest.update(",".join(f"{v:.10g}" for v in before + after).encode())
    for states in (out.users, out.items):
        for key in sorted(states):
            digest.update(repr(sorted((k, f"{v:.10g}" if isinstance(v, float) else v)
                                      for k, v in states[key].items())).encode())  # fmt: skip
    return digest.hexdigest()[:16]


def test_values_are_pinned_to_the_feature_hash() -> None:
    h, fingerprint = feature_hash(FeatureParams()), values_fingerprint()
    pinned_hash, pinned_fingerprint = PINNED
    if h == pinned_hash:
        assert fingerprint == pinned_fingerprint, (
            "the feature values changed but the feature hash did not: bump FEATURE_VERSION in "
            f"features/spec.py and re-pin PINNED = (<new hash>, {fingerprint!r}) here"
        )
    else:
        pytest.fail(
            f"the feature hash is now {h} (a definition changed; registered models need "
            f"`engage train`): re-pin PINNED = ({h!r}, {fingerprint!r}) here"
        )


# -- (f) doctests ------------------------------------------------------------------------------


def test_doctests_of_features() -> None:
    attempted = {}
    for info in pkgutil.iter_modules(features.__path__, "features."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, info.name
        attempted[info.name] = result.attempted
    for name in ("features.aggregates", "features.keys", "features.spec"):
        assert attempted[name] > 0, name


def test_escape_id_fast_path_equals_quote() -> None:
    """`escape_id` skips `quote` for ids it would leave unchanged and escapes other ASCII ids
    by a table: same result on random ids over printable, reserved and non-ASCII characters,
    and on every single character."""
    import random
    import string
    from urllib.parse import quote

    from features.keys import _SAFE, escape_id, escape_ids

    rng = random.Random(0)
    alphabet = string.printable + "é{}%:\x00 ü漢"
    samples = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20_000)
    ]
    samples += [chr(c) for c in range(0x3000)]
    assert [escape_id(s) for s in samples] == [quote(s, safe=_SAFE) for s in samples]
    ascii_ids = [s for s in samples if s.isascii() and "\x00" not in s]  # escaped at once
    assert escape_ids(ascii_ids) == [quote(s, safe=_SAFE) for s in ascii_ids]
