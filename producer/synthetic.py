"""A synthetic product funnel whose users carry a hidden purchase intent.

Intent really drives behaviour (sessions per day, depth, pricing views, demo requests,
signups, bookings), so a score can be judged against the ground truth written alongside.
Bots browse fast and never convert; many humans bounce.

Memory stays flat in the number of events: each user is a few numbers; the next session of
every user waits in one heap, and only the events of sessions already started wait in a
second heap. A session's randomness comes from its own seeded RNG (seed, user, session
number), so the output is identical for a seed whatever the interleaving, and a user's
whole history can be replayed alone (that is how the ground truth is computed).
"""

from __future__ import annotations

import csv
import heapq
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.events import Event, EventType
from features.items import ItemMeta

SOURCE = "synthetic"
DAY_MS = 86_400_000
#: Fixed start of event time (not "now"), so a seed always gives the same bytes.
DEFAULT_START_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
#: Gap after a session ends before the next may start: longer than any inactivity timeout a
#: consumer would use, so inactivity-based sessions agree with the explicit session_id.
MIN_SESSION_GAP_MS = 45 * 60_000

REGIONS = ("na", "eu", "apac", "latam", "mea")
REGION_WEIGHTS = (0.38, 0.30, 0.18, 0.09, 0.05)
DEVICES = ("desktop", "mobile", "tablet")
DEVICE_WEIGHTS = (0.52, 0.40, 0.08)
CONTENT_PAGES = ("/", "/features", "/docs", "/blog", "/customers", "/integrations", "/about")
PAGE = {
    EventType.PRICING_VIEW: "/pricing",
    EventType.DEMO_REQUEST: "/demo",
    EventType.SIGNUP: "/signup",
    EventType.CALENDAR_BOOKING: "/calendar",
}


#: What `SyntheticConfig.drift` can shift in the second half of event time (a drift test for
#: the model's inputs, scoring.drift): the context field, and the model feature it moves.
#: account_balance x 20 (ctx_log_balance + ~3), browsing_depth + 10 (ctx_depth), every device
#: mobile (ctx_mobile, ctx_desktop). Only the context changes: the users behave as before.
DRIFT_FIELDS = {
    "account_balance": "ctx_log_balance",
    "browsing_depth": "ctx_depth",
    "device": "ctx_mobile",
}
#: The model feature names are accepted too (they name the field that moves them).
DRIFT_ALIASES = {feature: field for field, feature in DRIFT_FIELDS.items()} | {
    "ctx_desktop": "device"
}


def drift_field(name: str) -> str:
    """The context field a --drift-feature name shifts (a field or the feature it moves)."""
    field = DRIFT_ALIASES.get(name, name)
    if field not in DRIFT_FIELDS:
        names = ", ".join([*DRIFT_FIELDS, *DRIFT_ALIASES])
        raise ValueError(f"cannot shift {name!r}: one of {names}")
    return field


@dataclass(frozen=True)
class SyntheticConfig:
    users: int = 1000
    days: int = 7
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    bot_fraction: float = 0.01
    #: A context field (DRIFT_FIELDS, or the feature it moves) whose distribution shifts from
    #: the middle of event time on; None: no shift (the same bytes as before the option).
    drift: str | None = None

    def __post_init__(self) -> None:
        if self.users < 1 or self.days < 1:
            raise ValueError("users and days must be at least 1")
        if not 0.0 <= self.bot_fraction <= 1.0:
            raise ValueError("bot_fraction must be between 0 and 1")
        if self.drift is not None:
            drift_field(self.drift)

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.days * DAY_MS

    @property
    def drift_from_ms(self) -> int:
        """Where the shift starts: the middle of event time."""
        return self.start_ms + self.days * DAY_MS // 2


@dataclass(slots=True)
class _User:
    """Everything that survives between one user's sessions (kept small: one per user)."""

    index: int
    user_id: str
    intent: float
    bot: bool
    region: str
    device: str
    balance: float
    sessions: int = 0
    events: int = 0
    signed_up: bool = False
    booked: bool = False


@dataclass
class UserTruth:
    """The hidden ground truth for one user."""

    user_id: str
    intent: float
    intent_level: str
    bot: bool
    signed_up: bool
    booked: bool
    converted: bool
    sessions: int
    events: int


def intent_level(intent: float) -> str:
    return "high" if intent >= 0.66 else "medium" if intent >= 0.33 else "low"


def user_id(seed: int, index: int) -> str:
    return f"syn{seed}-u{index}"


def _new_user(config: SyntheticConfig, index: int) -> _User:
    rng = random.Random(f"synthetic:{config.seed}:user:{index}")
    bot = rng.random() < config.bot_fraction
    # Skewed towards low intent, as real traffic is: most visitors never buy.
    intent = 0.0 if bot else round(rng.betavariate(1.3, 2.6), 4)
    region = rng.choices(REGIONS, REGION_WEIGHTS)[0]
    device = "desktop" if bot else rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
    # Balance is a weak, noisy signal of intent (buyers tend to have budget).
    balance = round(rng.lognormvariate(5.0 + 2.0 * intent, 1.0), 2)
    return _User(index, user_id(config.seed, index), intent, bot, region, device, balance)


def _first_session_ms(config: SyntheticConfig, user: _User) -> int:
    rng = random.Random(f"synthetic:{config.seed}:arrival:{user.index}")
    return config.start_ms + int(rng.random() * config.days * DAY_MS * 0.8)


def _mean_gap_ms(user: _User) -> float:
    """Bots come back daily; keen humans about daily, idle ones every week or two."""
    if user.bot:
        return DAY_MS
    return DAY_MS / (0.08 + 1.2 * user.intent**1.5)


# A session is a list of (ts, event type, item, depth); the user's state is updated in place.
_Step = tuple[int, EventType, str, int]


def _bot_session(rng: random.Random, start: int) -> list[_Step]:
    steps, ts = [], start
    for depth in range(1, rng.randint(20, 60) + 1):
        steps.append((ts, EventType.PAGE_VIEW, rng.choice(CONTENT_PAGES), depth))
        ts += rng.randint(150, 1500)
    return steps


def _human_session(rng: random.Random, user: _User, start: int) -> list[_Step]:
    q = user.intent
    steps: list[_Step] = [(start, EventType.PAGE_VIEW, rng.choice(CONTENT_PAGES), 1)]
    if rng.random() < 0.6 - 0.45 * q:  # a bounce: one page view, then gone
        return steps
    ts, depth, saw_pricing = start, 1, False

    def step(kind: EventType, item: str) -> None:
        nonlocal ts, depth
        ts += 1000 + int(rng.expovariate(1 / 45_000))
        depth += 1
        steps.append((ts, kind, item, depth))

    for _ in range(int(rng.expovariate(1 / (1.5 + 6.0 * q)))):
        if rng.random() < 0.05 + 0.45 * q:
            step(EventType.PRICING_VIEW, PAGE[EventType.PRICING_VIEW])
            saw_pricing = True
        else:
            step(EventType.PAGE_VIEW, rng.choice(CONTENT_PAGES))
    demo = saw_pricing and rng.random() < 0.02 + 0.5 * q * q
    if demo:
        step(EventType.DEMO_REQUEST, PAGE[EventType.DEMO_REQUEST])
    if not user.signed_up and saw_pricing and rng.random() < 0.01 + (0.5 if demo else 0.2) * q:
        step(EventType.SIGNUP, PAGE[EventType.SIGNUP])
        user.signed_up = True
    if user.signed_up and not user.booked and rng.random() < 0.05 + 0.6 * q**1.5:
        step(EventType.CALENDAR_BOOKING, PAGE[EventType.CALENDAR_BOOKING])
        user.booked = True
    return steps


def _session(config: SyntheticConfig, user: _User, start: int) -> tuple[list[_Step], int]:
    """One session's steps and the start of the user's next session (may be past the end)."""
    rng = random.Random(f"synthetic:{config.seed}:session:{user.index}:{user.sessions}")
    steps = _bot_session(rng, start) if user.bot else _human_session(rng, user, start)
    user.sessions += 1
    next_start = steps[-1][0] + MIN_SESSION_GAP_MS + int(rng.expovariate(1 / _mean_gap_ms(user)))
    return steps, next_start


def _context(
    user: _User, device: str, depth: int, shift: str | None = None
) -> dict[str, str | float | int]:
    """An event's context; `shift`: the DRIFT_FIELDS field moved (second half of a drift run)."""
    balance = user.balance
    if shift == "account_balance":
        balance = round(balance * 20.0, 2)
    elif shift == "browsing_depth":
        depth += 10
    elif shift == "device":
        device = "mobile"
    return {
        "region": user.region,
        "device": device,
        "account_balance": balance,
        "browsing_depth": depth,
    }


def events(config: SyntheticConfig) -> Iterator[Event]:
    """All users' events merged in (ts, user, per-user number) order, generated lazily; with
    `config.drift`, one context field shifted from the middle of event time on."""
    users = [_new_user(config, i) for i in range(config.users)]
    sessions = [(_first_session_ms(config, u), u.index) for u in users]
    heapq.heapify(sessions)
    pending: list[tuple[int, int, int, EventType, str, str, str, int]] = []
    end, seed = config.end_ms, config.seed
    shift = drift_field(config.drift) if config.drift is not None else None
    shift_from = config.drift_from_ms
    while sessions or pending:
        while sessions and (not pending or sessions[0][0] <= pending[0][0]):
            start, index = heapq.heappop(sessions)
            user = users[index]
            session_id = f"syn:{seed}:{index}:s{user.sessions}"
            device = user.device if user.bot or user.sessions % 5 else "mobile"
            steps, next_start = _session(config, user, start)
            for ts, kind, item, depth in steps:
                n = user.events
                user.events += 1
                heapq.heappush(pending, (ts, index, n, kind, item, session_id, device, depth))
            if next_start < end:
                heapq.heappush(sessions, (next_start, index))
        if pending:
            ts, index, n, kind, item, session_id, device, depth = heapq.heappop(pending)
            user = users[index]
            yield Event(
                event_id=f"syn:{seed}:{index}:{n}",
                user_id=user.user_id,
                ts=ts,
                event_type=kind,
                item_id=item,
                session_id=session_id,
                context=_context(user, device, depth, shift if ts >= shift_from else None),
                source=SOURCE,
            )


def truth(config: SyntheticConfig) -> Iterator[UserTruth]:
    """Each user's hidden intent and outcome, by simulating that user alone (O(1) memory)."""
    for index in range(config.users):
        user = _new_user(config, index)
        start = _first_session_ms(config, user)
        while start < config.end_ms:
            steps, start = _session(config, user, start)
            user.events += len(steps)
        yield UserTruth(
            user_id=user.user_id,
            intent=user.intent,
            intent_level="bot" if user.bot else intent_level(user.intent),
            bot=user.bot,
            signed_up=user.signed_up,
            booked=user.booked,
            converted=user.signed_up and user.booked,
            sessions=user.sessions,
            events=user.events,
        )


def write_truth(config: SyntheticConfig, path: Path) -> int:
    """Write the ground truth: CSV, a JSON array (.json) or JSON lines (.jsonl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with path.open("w", newline="") as out:
        if path.suffix == ".csv" or path.suffix not in {".json", ".jsonl"}:
            writer = csv.DictWriter(out, fieldnames=list(UserTruth.__dataclass_fields__))
            writer.writeheader()
            for row in truth(config):
                writer.writerow(asdict(row))
                rows += 1
            return rows
        lines = path.suffix == ".jsonl"
        out.write("" if lines else "[\n")
        for row in truth(config):
            separator = "" if lines or rows == 0 else ",\n"
            out.write(separator + json.dumps(asdict(row)) + ("\n" if lines else ""))
            rows += 1
        out.write("" if lines else "\n]\n")
    return rows


def synthetic_item_meta() -> dict[str, ItemMeta]:
    """Items here are site pages, which have no genres or year: nothing to write."""
    return {}
