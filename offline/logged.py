"""Training rows made of the vectors the consumer actually scored with (`engage train
--logged-features`).

Why: with several partitions, the item aggregates an event saw online depend on how the
consumer happened to interleave the partitions, which no log records (`engage parity` measures
that skew). Training on the vectors the consumer logged on the scores topic removes the skew
by construction: the model learns from exactly what it is served. Labels, users, items and
event times come from the events themselves, joined by event id.

An event has a logged vector only if the consumer applied it: whatever it dead-lettered
(undecodable, duplicate, late) never got a score. A duplicate id counts once, as the consumer
applied it: its first copy in consumer order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from features.events import Event
from offline.dataset import Dataset
from offline.parity import OnlineScores


@dataclass(frozen=True)
class LoggedCoverage:
    """How many of the log's labelled events the scores topic had a vector for."""

    labelled: int  # labelled events in the log (first copy of each id)
    used: int  # ... with a logged vector: the training rows
    missing: int  # ... without: dead-lettered, not consumed yet, or logged without features

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NoLoggedFeatures(LookupError):
    """The scores topic holds no feature vectors for these events."""


def logged_dataset(events: list[Event], online: OnlineScores) -> tuple[Dataset, LoggedCoverage]:
    """One row per labelled event with a logged vector, in the events' (consumer) order."""
    rows: list[int] = []
    picked: list[Event] = []
    seen: set[str] = set()
    labelled = 0
    for event in events:
        if event.event_id in seen or not event.labelled:
            continue
        seen.add(event.event_id)
        labelled += 1
        row = online.index.get(event.event_id)
        if row is not None and online.has_features[row]:
            rows.append(row)
            picked.append(event)
    coverage = LoggedCoverage(labelled=labelled, used=len(rows), missing=labelled - len(rows))
    if not rows:
        raise NoLoggedFeatures(
            f"none of the log's {labelled:,} labelled events has a feature vector on the scores "
            "topic (is the consumer running with log_features on, and has it consumed them?)"
        )
    data = Dataset(
        X=online.features[rows],
        y=np.array([1 if e.engaged else 0 for e in picked], dtype=np.int8),
        user_ids=np.array([e.user_id for e in picked], dtype=object),
        item_ids=np.array([e.item_id for e in picked], dtype=object),
        ts=np.array([e.ts for e in picked], dtype=np.int64),
        n_events=len(events),
    )
    return data, coverage
