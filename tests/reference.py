"""An independent reference for the consumer's Redis state, written from the spec, not the code.

It recomputes every user, session and item aggregate from the raw event list with plain loops
and closed-form formulas (e.g. the decayed sums as direct sums of weighted terms), and reads
the consumer's Redis state back for comparison. It deliberately imports nothing from
features.aggregates / features.pipeline (only the storage decoder, features.state_codec).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from urllib.parse import quote

import redis

from features.item_shards import decode_item
from features.state_codec import decode_user

FUNNEL = {"page_view": 1, "pricing_view": 2, "demo_request": 3, "signup": 4, "calendar_booking": 5}
ENGAGED_TYPES = {"demo_request", "signup", "calendar_booking"}


def _tag(raw: str) -> str:
    return quote(raw, safe="!\"#$&'()*+,-./;<=>?@[\\]^_`|~")


def engaged(e: dict) -> bool:
    if e["event_type"] == "rating":
        return e["value"] >= 4.0
    return e["event_type"] in ENGAGED_TYPES


def reference_state(
    events: list[dict],
    genres: dict[str, list[str]],
    gap_ms: int,
    half_life_ms: float,
    mood_half_life_ms: float = 3_600_000.0,
    years: dict[str, int] | None = None,
    day_half_life_ms: float = 86_400_000.0,
) -> dict:
    """users/sessions/items as dicts of floats, from events given in per-user log order.
    `years`: items' release years (items without one add nothing to the year sums)."""
    years = years or {}
    by_user: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    users, sessions, items = {}, {}, defaultdict(lambda: defaultdict(float))
    for uid, evs in by_user.items():
        u: dict[str, float] = defaultdict(float)
        groups: list[list[dict]] = []
        for e in evs:
            sid = e.get("session_id")
            if groups:
                prev = groups[-1]
                same = (
                    (sid == prev[0]["_sid"])
                    if sid is not None
                    else (e["ts"] - max(x["ts"] for x in prev) <= gap_ms)
                )
            else:
                same = False
            if same:
                e["_sid"] = prev[0]["_sid"]
                prev.append(e)
            else:
                e["_sid"] = sid if sid is not None else str(e["ts"])
                groups.append([e])
        labelled = [e for e in evs if e["event_type"] != "tag"]
        u["n"] = len(evs)
        for e in evs:
            u[f"n_{e['event_type']}"] += 1
        u["lab"] = len(labelled)
        u["eng"] = sum(engaged(e) for e in labelled)
        rated = [e for e in evs if e["event_type"] == "rating"]
        ratings = [e["value"] for e in rated]
        if ratings:
            u["r_n"], u["r_sum"], u["r_sq"] = (
                len(ratings),
                sum(ratings),
                sum(r * r for r in ratings),
            )
            # The latest rating by time; of equal times the one later in the log.
            newest = max(e["ts"] for e in rated)
            u["r_last"] = [e["value"] for e in rated if e["ts"] == newest][-1]
            u["dr_ts"] = newest
            u["dr_s"] = sum(
                e["value"] * 0.5 ** ((newest - e["ts"]) / mood_half_life_ms) for e in rated
            )
            u["dr_n"] = sum(0.5 ** ((newest - e["ts"]) / mood_half_life_ms) for e in rated)
            # Moving average with weight 0.2 on the newest rating, as a closed-form sum.
            k = len(ratings)
            u["er20"] = sum(0.2 * 0.8 ** (k - 1 - i) * r for i, r in enumerate(ratings))
            u["r_half"] = sum(1 for r in ratings if r != math.floor(r))
            u["r_top"] = sum(1 for r in ratings if r >= 5.0)
            dated = [(years[e["item_id"]] - 2000, e["value"]) for e in rated
                     if years.get(e.get("item_id") or "")]  # fmt: skip
            if dated:
                u["y_n"] = len(dated)
                u["y_s"] = sum(y for y, _ in dated)
                u["y_ss"] = sum(y * y for y, _ in dated)
                u["y_r"] = sum(y * r for y, r in dated)
                u["y_rs"] = sum(r for _, r in dated)
        u["first_ts"], u["last_ts"] = min(e["ts"] for e in evs), max(e["ts"] for e in evs)
        # All events, decayed with a one-day half-life to the latest one.
        u["dd_n"] = sum(0.5 ** ((u["last_ts"] - e["ts"]) / day_half_life_ms) for e in evs)
        if labelled:
            anchor = max(e["ts"] for e in labelled)
            u["dec_e"] = sum(
                0.5 ** ((anchor - e["ts"]) / half_life_ms) for e in labelled if engaged(e)
            )
            u["dec_n"] = sum(0.5 ** ((anchor - e["ts"]) / half_life_ms) for e in labelled)
            # Moving averages of the label with weight a on the newest labelled event.
            k = len(labelled)
            for name, a in (("ee05", 0.05), ("ee10", 0.1), ("ee20", 0.2)):
                u[name] = sum(
                    a * (1 - a) ** (k - 1 - i) for i, e in enumerate(labelled) if engaged(e)
                )
        u["items"] = len({e["item_id"] for e in evs if e.get("item_id") is not None})
        u["sess"] = len(groups)
        for g in groups[:-1]:
            u["cl_n"] += 1
            u["cl_bounce"] += len(g) == 1
            u["cl_dur"] += max(x["ts"] for x in g) - g[0]["ts"]
        for e in labelled:
            for genre in genres.get(e.get("item_id") or "", []):
                u[f"gc:{genre}"] += 1
                u[f"ge:{genre}"] += engaged(e)
                if e["event_type"] == "rating":
                    u[f"gr:{genre}"] += e["value"]
        for g in groups:
            sessions[(uid, g[0]["_sid"])] = {
                "start": float(g[0]["ts"]),
                "end": float(max(x["ts"] for x in g)),
                "events": float(len(g)),
                "engaged": float(sum(engaged(x) for x in g)),
                "furthest_step": float(max(FUNNEL.get(x["event_type"], 0) for x in g)),
                "bounce": 1.0 if len(g) == 1 else 0.0,
                "ratings": float(sum(x["event_type"] == "rating" for x in g)),
                "rating_sum": float(sum(x["value"] for x in g if x["event_type"] == "rating")),
            }
        users[uid] = {k: float(v) for k, v in u.items()}
        seen_ratings: list[float] = []  # this user's ratings before the current event
        for e in evs:
            if e.get("item_id") is not None:
                it = items[e["item_id"]]
                it["n"] += 1
                it["ts_d"] += e["ts"] // 86_400_000
                if e["event_type"] != "tag":
                    it["lab"] += 1
                    it["eng"] += engaged(e)
                if e["event_type"] == "rating":
                    it["r_n"] += 1
                    it["r_sum"] += e["value"]
                    it["r_sq"] += e["value"] ** 2
                    # The rater's mean so far with 5 pseudo-ratings of 3.5, in 1/1024 steps.
                    prior_mean = (sum(seen_ratings) + 17.5) / (len(seen_ratings) + 5)
                    it["rater"] += round(prior_mean * 1024) / 1024
            if e["event_type"] == "rating":
                seen_ratings.append(e["value"])
    return {"users": users, "sessions": sessions, "items": {k: dict(v) for k, v in items.items()}}


#: User fields the reference compares as the open session (`session_fields`), not as the user.
USER_SKIP = ("cs_id", "cs_start", "cs_end", "cs_n", "cs_eng", "cs_step", "cs_rn", "cs_rs", "dec_ts")


def _open_session(user: dict) -> dict[str, float]:
    """The open session's fields as the user's state holds them (the spec's cs_* names)."""
    n = user.get("cs_n", 0.0)
    return {
        "start": user.get("cs_start", 0.0), "end": user.get("cs_end", 0.0), "events": n,
        "engaged": user.get("cs_eng", 0.0), "furthest_step": user.get("cs_step", 0.0),
        "bounce": 1.0 if n == 1 else 0.0, "ratings": user.get("cs_rn", 0.0),
        "rating_sum": user.get("cs_rs", 0.0),
    }  # fmt: skip


def diff_against_redis(ref: dict, client: redis.Redis) -> list[str]:
    """Every disagreement between the reference and Redis, as readable lines (empty = equal)."""
    problems: list[str] = []

    def compare(where: str, want: dict[str, float], got: dict[str, float]) -> None:
        for field in sorted(set(want) | set(got)):
            a, b = want.get(field, 0.0), got.get(field, 0.0)
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                problems.append(f"{where} {field}: reference {a!r} != redis {b!r}")

    for uid, want in ref["users"].items():
        # The stored state is packed (features.state_codec): the one decoder this oracle uses.
        stored = decode_user(client.hgetall(f"u:{{{_tag(uid)}}}"))
        got = {k: float(v) for k, v in stored.items() if k not in USER_SKIP}
        compare(f"user {uid}", {k: v for k, v in want.items() if k != "items"}, {
            k: v for k, v in got.items() if k != "items"})  # fmt: skip
        scard = client.scard(f"u:{{{_tag(uid)}}}:items")
        if scard != want.get("items", 0) or got.get("items", 0) != want.get("items", 0):
            problems.append(f"user {uid} items: reference {want.get('items')} redis {scard}")
    for (uid, sid), want in ref["sessions"].items():
        # A closed session has a key of its own (a JSON object); the open one lives in the
        # user's state (cs_*).
        key = f"s:{{{_tag(uid)}}}:{_tag(sid)}"
        raw = client.get(key)
        got = {k: float(v) for k, v in json.loads(raw).items()} if raw else {}
        if raw and client.ttl(key) <= 0:
            problems.append(f"session {uid}/{sid}: stored without an expiry")
        if not got:
            user = decode_user(client.hgetall(f"u:{{{_tag(uid)}}}"))
            got = _open_session(user) if user.get("cs_id") == sid else {}
        compare(f"session {uid}/{sid}", want, got)
    for iid, want in ref["items"].items():
        # Item aggregates are per-partition shards (features.item_shards): summed by its decoder.
        compare(f"item {iid}", want, decode_item(client.hgetall(f"i:{{{_tag(iid)}}}")))
    n_users = sum(1 for k in client.scan_iter(match="u:*", count=1000) if k.endswith(b"}"))
    if n_users != len(ref["users"]):
        problems.append(f"{n_users} user hashes in redis, reference has {len(ref['users'])}")
    return problems
