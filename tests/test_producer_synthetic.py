"""The synthetic funnel: seeded, ordered, lazy, and intent really drives behaviour."""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

from features.events import EventType, decode_event
from producer import synthetic
from producer.synthetic import SyntheticConfig

SMALL = SyntheticConfig(users=300, days=5, seed=7)


def wire(config: SyntheticConfig) -> list[bytes]:
    return [e.to_json() for e in synthetic.events(config)]


def test_same_seed_gives_byte_identical_events() -> None:
    first, second = wire(SMALL), wire(SMALL)
    assert first == second
    assert len(first) > 1000


def test_other_seed_gives_other_events() -> None:
    other = SyntheticConfig(users=300, days=5, seed=8)
    a, b = wire(SMALL), wire(other)
    assert a != b
    assert not {decode_event(x).event_id for x in a} & {decode_event(x).event_id for x in b}


def test_events_are_valid_unique_and_in_event_time_order() -> None:
    events = list(synthetic.events(SMALL))
    assert all(decode_event(e.to_json()) == e for e in events)
    keys = [(e.ts, int(e.user_id.rsplit("u", 1)[1])) for e in events]
    assert keys == sorted(keys)
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.event_id.startswith("syn:7:") and e.session_id for e in events)
    assert events[0].ts >= SMALL.start_ms and events[-1].ts < SMALL.end_ms + 86_400_000


def test_event_ids_number_each_users_events_in_order() -> None:
    per_user: dict[str, list[int]] = defaultdict(list)
    for event in synthetic.events(SMALL):
        per_user[event.user_id].append(int(event.event_id.rsplit(":", 1)[1]))
    assert all(numbers == list(range(len(numbers))) for numbers in per_user.values())


def test_context_carries_the_user_attributes() -> None:
    for event in itertools.islice(synthetic.events(SMALL), 500):
        ctx = event.context or {}
        assert ctx["region"] in synthetic.REGIONS
        assert ctx["device"] in {"mobile", "desktop", "tablet"}
        assert isinstance(ctx["account_balance"], float) and ctx["account_balance"] > 0
        assert isinstance(ctx["browsing_depth"], int) and ctx["browsing_depth"] >= 1


def test_the_funnel_has_every_kind_of_behaviour() -> None:
    config = SyntheticConfig(users=1500, days=14, seed=3)
    events = list(synthetic.events(config))
    kinds = Counter(e.event_type for e in events)
    assert set(kinds) == {
        EventType.PAGE_VIEW,
        EventType.PRICING_VIEW,
        EventType.DEMO_REQUEST,
        EventType.SIGNUP,
        EventType.CALENDAR_BOOKING,
    }
    sessions = Counter((e.user_id, e.session_id) for e in events)
    assert sum(1 for n in sessions.values() if n == 1) > 100  # bounces
    per_user = Counter(user for user, _ in sessions)
    assert sum(1 for n in per_user.values() if n > 1) > 100  # repeat sessions


def test_truth_agrees_with_the_events() -> None:
    config = SyntheticConfig(users=400, days=10, seed=11)
    truth = {t.user_id: t for t in synthetic.truth(config)}
    seen: dict[str, set[EventType]] = defaultdict(set)
    counts: Counter[str] = Counter()
    for event in synthetic.events(config):
        seen[event.user_id].add(event.event_type)
        counts[event.user_id] += 1
    for user, t in truth.items():
        assert t.events == counts[user]
        assert t.signed_up == (EventType.SIGNUP in seen[user])
        assert t.booked == (EventType.CALENDAR_BOOKING in seen[user])
        assert t.converted == (t.signed_up and t.booked)


def test_intent_drives_behaviour_and_bots_never_convert() -> None:
    config = SyntheticConfig(users=3000, days=14, seed=5, bot_fraction=0.02)
    truth = list(synthetic.truth(config))
    by_level: dict[str, list[synthetic.UserTruth]] = defaultdict(list)
    for t in truth:
        by_level[t.intent_level].append(t)

    def rate(level: str) -> float:
        rows = by_level[level]
        return sum(t.converted for t in rows) / len(rows)

    def depth(level: str) -> float:
        rows = by_level[level]
        return sum(t.events for t in rows) / len(rows)

    assert rate("high") > rate("medium") > rate("low")
    assert rate("high") > 0.2 and rate("low") < 0.05
    assert depth("high") > depth("medium") > depth("low")
    assert by_level["bot"] and not any(t.signed_up for t in by_level["bot"])
    bots = {t.user_id for t in by_level["bot"]}
    pricing: Counter[str] = Counter()
    for event in synthetic.events(config):
        if event.event_type is EventType.PRICING_VIEW:
            pricing[event.user_id] += 1
    assert not bots & set(pricing)
    intent = {t.user_id: t.intent for t in truth}
    high = [pricing[u] for u, q in intent.items() if q >= 0.66]
    low = [pricing[u] for u, q in intent.items() if q < 0.33 and u not in bots]
    assert sum(high) / len(high) > 5 * sum(low) / len(low)


def test_generation_is_lazy() -> None:
    """The first events come out before the rest are made (a huge config costs nothing)."""
    huge = SyntheticConfig(users=2_000, days=100_000, seed=1)
    first = list(itertools.islice(synthetic.events(huge), 50))
    assert len(first) == 50


def test_truth_files(tmp_path: Path) -> None:
    config = SyntheticConfig(users=20, days=3, seed=2)
    assert synthetic.write_truth(config, tmp_path / "t.csv") == 20
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows[0]["user_id"] == "syn2-u0" and {"intent", "converted"} <= set(rows[0])
    synthetic.write_truth(config, tmp_path / "t.json")
    as_json = json.loads((tmp_path / "t.json").read_text())
    assert [r["user_id"] for r in as_json] == [r["user_id"] for r in rows]
    synthetic.write_truth(config, tmp_path / "t.jsonl")
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == as_json


def test_pages_have_no_item_metadata() -> None:
    assert synthetic.synthetic_item_meta() == {}
