"""The per-event feature step: the 'after' vector of each event is the state after that event.

A batch holds several events of one user; each score message must describe the user right
after *its* event, not after the batch's last one.
"""

from __future__ import annotations

from features.events import Event
from features.pipeline import MemoryState
from features.vector import PROPENSITY_FEATURES, propensity_vector

T0 = 1_700_000_000_000


def _events() -> list[Event]:
    kinds = ["page_view", "pricing_view", "page_view", "demo_request", "signup"]
    return [
        Event.model_validate(
            {
                "event_id": f"e{i}",
                "user_id": "u:1" if i % 3 else "u{2}",
                "event_type": kinds[i % len(kinds)],
                "ts": T0 + i * 90_000,
                "source": "funnel",
            }
        )
        for i in range(12)
    ]


def test_after_vector_is_the_state_right_after_each_event() -> None:
    events = _events()
    batch = MemoryState()
    steps = [batch.step(e) for e in events]
    for i, event in enumerate(events):
        prefix = MemoryState()
        for earlier in events[: i + 1]:
            prefix.step(earlier)
        expected = propensity_vector(prefix.users[event.user_id], event, prefix.params)
        assert steps[i].after == expected, f"event {i}"
    counts = [
        s.after[PROPENSITY_FEATURES.index("u_events")] for s in steps if s.event.user_id == "u:1"
    ]
    assert counts == list(range(1, len(counts) + 1))


def test_features_before_do_not_see_the_event() -> None:
    events = _events()
    memory = MemoryState()
    steps = [memory.step(e) for e in events]
    u_events = PROPENSITY_FEATURES.index("u_events")
    for step in steps:
        assert step.features[u_events] == step.after[u_events] - 1
