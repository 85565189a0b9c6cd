"""Point-in-time training rows: the consumer's own batch step run over the whole log.

Order matters and is the consumer's: each partition in offset order (see
`snapshot.consumer_order`); a single logical log such as a MovieLens replay is simply event-time
order. Because the message key is the user id, one partition owns a user, so every user and
session feature is exactly what the consumer computed when the event arrived. Each row is built
from the state *before* its event: the event's own outcome (rating, label) and anything later
cannot leak into it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.events import Event
from features.fold import FoldState
from features.items import ItemMeta
from features.stream import StreamState
from features.vector import INTERACTION_FEATURES, PROPENSITY_FEATURES
from scoring.rules import domain_of

# The propensity model reads the leading columns of the interaction matrix; that only works
# while the feature definitions keep the user+context block first.
N_PROPENSITY = len(PROPENSITY_FEATURES)
if tuple(INTERACTION_FEATURES[:N_PROPENSITY]) != tuple(PROPENSITY_FEATURES):
    raise RuntimeError("PROPENSITY_FEATURES must be the leading columns of INTERACTION_FEATURES")

#: Events per fold call: bounds the memory of the before/after matrices on long logs.
CHUNK = 50_000
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
    #: Labelled rows per domain (scoring.rules.domain_of of the event's source): what a model
    #: fit on these rows can score. Empty: not recorded (`training_domains` reads the events).
    domain_rows: dict[str, int] = field(default_factory=dict)

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
    """Run `events` (already in consumer order) through the consumer's batch step (admission
    and the compiled fold, `features.stream`); keep labelled rows. Duplicates and late events
    are refused as the consumer refuses them."""
    state = StreamState(
        params or FeatureParams(), admission or AdmissionPolicy(), FoldState(meta=dict(meta))
    )
    width = len(INTERACTION_FEATURES)
    blocks: list[np.ndarray] = []
    labels: list[int] = []
    users: list[str] = []
    items: list[str | None] = []
    times: list[int] = []
    domains: Counter[str] = Counter()
    n = 0
    for chunk in _chunks(events, CHUNK):
        folded = state.apply(chunk)
        applied = [chunk[i] for i in folded.admitted]
        keep = np.array([e.labelled for e in applied], dtype=bool)
        blocks.append(folded.out.before[keep] if len(applied) else np.empty((0, width)))
        for event in applied:
            if event.labelled:
                labels.append(1 if event.engaged else 0)
                users.append(event.user_id)
                items.append(event.item_id)
                times.append(event.ts)
                domains[domain_of(event.source)] += 1
        n += len(chunk)
        if progress is not None:
            progress(n)
    X = np.vstack(blocks) if blocks else np.empty((0, width))
    if X.shape[1] != width:
        raise RuntimeError(f"pipeline returned {X.shape[1]} features, expected {width}")
    return Dataset(
        X=X,
        y=np.array(labels, dtype=np.int8),
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        ts=np.array(times, dtype=np.int64),
        n_events=n,
        domain_rows=dict(sorted(domains.items())),
    )


def _chunks(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    """The log in pieces: one fold call each, so memory stays bounded on long logs."""
    chunk: list[Event] = []
    for event in events:
        chunk.append(event)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
