"""A tiny synthetic event log for the offline tests (no files, no servers)."""

from __future__ import annotations

import numpy as np

from features.aggregates import FeatureParams
from features.events import Event, EventType
from features.items import GENRES, ItemMeta
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES, feature_hash
from offline.dataset import Dataset
from offline.learners import fit_logreg, fit_xgboost
from offline.splits import temporal_split
from scoring.model import ModelBundle

LEARNERS = {"xgboost": fit_xgboost, "logreg": fit_logreg}

T0 = 1_500_000_000_000  # 2017-07-14, epoch ms


def synthetic_log(
    n_users: int = 30, n_items: int = 40, per_user: int = 25, seed: int = 0
) -> tuple[list[Event], dict[str, ItemMeta]]:
    """Ratings (plus a few tags) in event-time order; users differ in how much they like
    things and items in how good they are, so models have something to learn."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(0, 0.8, n_users)
    quality = rng.normal(0, 0.8, n_items)
    meta = {
        f"m{i}": ItemMeta(genres=tuple(rng.choice(GENRES, 2, replace=False)), year=1990 + i % 30)
        for i in range(n_items)
    }
    events: list[Event] = []
    for u in range(n_users):
        ts = T0 + int(rng.integers(0, 50)) * 86_400_000
        for k in range(per_user):
            ts += int(rng.integers(1, 120)) * 60_000
            item = int(rng.integers(0, n_items))
            raw = 3.0 + taste[u] + quality[item] + rng.normal(0, 0.7)
            rating = float(np.clip(np.round(raw * 2) / 2, 0.5, 5.0))
            common = {"user_id": f"u{u}", "ts": ts, "item_id": f"m{item}", "source": "test"}
            events.append(
                Event(event_id=f"r{u}:{k}", event_type=EventType.RATING, value=rating, **common)
            )
            if k % 10 == 3:
                events.append(
                    Event(
                        event_id=f"t{u}:{k}",
                        event_type=EventType.TAG,
                        context={"tag": "fun"},
                        **common,
                    )
                )
    events.sort(key=lambda e: (e.ts, e.user_id, e.item_id or ""))
    return events, meta


def fitted_bundle(
    data: Dataset,
    params: FeatureParams,
    interaction: str = "xgboost",
    propensity: str = "logreg",
    feature_hash_: str | None = None,
) -> ModelBundle:
    """Both targets fit on `data`'s temporal split with the chosen learners, as a bundle the
    registry accepts (or refuses, given another `feature_hash_`)."""
    split, n = temporal_split(data), len(PROPENSITY_FEATURES)
    train, val = split.train, split.val
    X, y = data.X, data.y
    i_model, _ = LEARNERS[interaction]("interaction", INTERACTION_FEATURES, X[train], y[train],
                                       X[val], y[val])  # fmt: skip
    p_model, _ = LEARNERS[propensity]("propensity", PROPENSITY_FEATURES, X[train, :n],
                                      y[train], X[val, :n], y[val])  # fmt: skip
    return ModelBundle(version="", feature_hash=feature_hash_ or feature_hash(params),
                       interaction=i_model, propensity=p_model)  # fmt: skip
