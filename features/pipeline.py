"""One step of the feature pipeline over an in-memory view of the state.

The consumer fills a `MemoryState` with the Redis state a batch touches, runs `step` per event
and writes back what changed; the offline module runs the same `step` over the whole log. So
the features a model trains on are, by construction, the features it is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from features.admission import AdmissionPolicy, PlainRecentIds
from features.aggregates import Applied, FeatureParams, State, apply_event, apply_item_delta
from features.events import Event
from features.items import ItemMeta
from features.vector import interaction_vector, propensity_vector


@dataclass
class Step:
    """The point-in-time interaction features of one event, and the user's features after it."""

    event: Event
    features: list[float]  # INTERACTION_FEATURES from the state before the event
    applied: Applied
    after: list[float]  # PROPENSITY_FEATURES right after the event: the user's current score


@dataclass
class MemoryState:
    """Users, their item sets, items and metadata, held in dicts."""

    params: FeatureParams = field(default_factory=FeatureParams)
    users: dict[str, State] = field(default_factory=dict)
    user_items: dict[str, set[str]] = field(default_factory=dict)
    items: dict[str, State] = field(default_factory=dict)
    meta: dict[str, ItemMeta] = field(default_factory=dict)
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    recent: dict[str, PlainRecentIds] = field(default_factory=dict)  # user -> recent ids

    def admit(self, event: Event) -> str | None:
        """None if `event` is to be applied (and remember its id), else why it is refused."""
        recent = self.recent.setdefault(event.user_id, {})
        reason = self.admission.refusal(self.users.get(event.user_id, {}), recent, event)
        if reason is None:
            self.admission.remember(recent, event)
        return reason

    def step(self, event: Event) -> Step:
        """Features from the state before `event`, then fold `event` into the state."""
        user = self.users.setdefault(event.user_id, {})
        item_id = event.item_id
        item = self.items.setdefault(item_id, {}) if item_id is not None else {}
        meta = self.meta.get(item_id) if item_id is not None else None
        seen = self.user_items.setdefault(event.user_id, set())
        seen_item = item_id is not None and item_id in seen
        features = interaction_vector(user, item, meta, seen_item, event, self.params)
        applied = apply_event(user, event, meta, item_id is not None and not seen_item, self.params)
        if item_id is not None:
            seen.add(item_id)
            apply_item_delta(item, applied.item_delta)
        # Taken now, not at the end of the batch: later events of the user mutate `user`.
        after = propensity_vector(user, event, self.params)
        return Step(event, features, applied, after)
