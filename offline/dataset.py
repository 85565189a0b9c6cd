"""Point-in-time training rows: the consumer's own `MemoryState.step` run over the whole log.

Order matters and is the consumer's: each partition in offset order (see
`snapshot.consumer_order`); a single logical log such as a MovieLens replay is simply event-time
order. Because the message key is the user id, one partition owns a user, so every user and
session feature is exactly what the consumer computed when the event arrived. Each row is built
from the state *before* its event: the event's own outcome (rating, label) and anything later
cannot leak into it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.events import Event
from features.items import ItemMeta
from features.pipeline import MemoryState
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES

# The propensity model reads the leading columns of the interaction matrix; that only works
# while the feature definitions keep the user+context block first.
N_PROPENSITY = len(PROPENSITY_FEATURES)
if tuple(INTERACTION_FEATURES[:N_PROPENSITY]) != tuple(PROPENSITY_FEATURES):
    raise RuntimeError("PROPENSITY_FEATURES must be the leading columns of INTERACTION_FEATURES")

#: The seed project's feature set, as a subset of our columns (all point-in-time already).
BASELINE_FEATURES: tuple[str, ...] = (
    "u_labelled", "u_rating_mean", "u_engage_rate", "i_count", "i_rating_mean",
    "i_engage_rate", "hour", "dow", *(f for f in INTERACTION_FEATURES if f.startswith("g_")),
)  # fmt: skip


@dataclass
class Dataset:
    """One row per labelled event, in processing order."""

    X: np.ndarray  # (n, len(INTERACTION_FEATURES)) float64
    y: np.ndarray  # (n,) int8, Event.engaged
    user_ids: np.ndarray  # (n,) object
    item_ids: np.ndarray  # (n,) object
    ts: np.ndarray  # (n,) int64, event time ms
    features: tuple[str, ...] = INTERACTION_FEATURES
    n_events: int = 0  # all events processed, labelled or not

    def __len__(self) -> int:
        return len(self.y)

    def columns(self, names: Iterable[str]) -> np.ndarray:
        index = {f: i for i, f in enumerate(self.features)}
        return self.X[:, [index[n] for n in names]]

    @property
    def propensity_X(self) -> np.ndarray:
        return self.X[:, :N_PROPENSITY]


def build_dataset(
    events: Iterable[Event],
    meta: dict[str, ItemMeta],
    params: FeatureParams | None = None,
    progress: Callable[[int], None] | None = None,
    admission: AdmissionPolicy | None = None,
) -> Dataset:
    """Run `events` (already in consumer order) through the pipeline; keep labelled rows.
    Duplicates and late events are refused as the consumer refuses them."""
    state = MemoryState(
        params=params or FeatureParams(), meta=dict(meta), admission=admission or AdmissionPolicy()
    )
    rows: list[list[float]] = []
    labels: list[int] = []
    users: list[str] = []
    items: list[str | None] = []
    times: list[int] = []
    n = 0
    for n, event in enumerate(events, start=1):
        if state.admit(event) is not None:
            continue
        step = state.step(event)
        if event.labelled:
            rows.append(step.features)
            labels.append(1 if event.engaged else 0)
            users.append(event.user_id)
            items.append(event.item_id)
            times.append(event.ts)
        if progress is not None and n % 10_000 == 0:
            progress(n)
    width = len(INTERACTION_FEATURES)
    X = np.array(rows, dtype=np.float64) if rows else np.empty((0, width))
    if X.shape[1] != width:
        raise RuntimeError(f"pipeline returned {X.shape[1]} features, expected {width}")
    return Dataset(
        X=X,
        y=np.array(labels, dtype=np.int8),
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        ts=np.array(times, dtype=np.int64),
        n_events=n,
    )
