"""Train/validation/test splits over dataset rows (index arrays, no copying).

Per-user: each user's last labelled interaction is test, the one before validation (the classic
leave-last-out for "what will this user do next"). Global temporal: the last 20% of event time
is test and the 10% before it validation: the honest "train on the past, serve the future".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline.dataset import Dataset


@dataclass(frozen=True)
class Split:
    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def per_user_split(data: Dataset) -> Split:
    """Rank each user's rows from the end (by time, ties by processing order)."""
    n = len(data)
    order = np.lexsort((np.arange(n), data.ts, data.user_ids.astype(str)))
    users_sorted = data.user_ids[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = users_sorted[1:] != users_sorted[:-1]
    group = np.cumsum(starts) - 1  # user run number of each sorted row
    last_of_group = np.append(np.flatnonzero(starts)[1:], n) - 1
    run_end = last_of_group[group]  # sorted index of the last row of the row's user
    from_end = np.empty(n, dtype=np.int64)
    from_end[order] = run_end - np.arange(n)
    return Split(
        name="per_user",
        train=np.flatnonzero(from_end >= 2),
        val=np.flatnonzero(from_end == 1),
        test=np.flatnonzero(from_end == 0),
    )


def temporal_split(data: Dataset, test_frac: float = 0.2, val_frac: float = 0.1) -> Split:
    """Cut the event-time span, not the row count: the test period is the last 20% of time."""
    if len(data) == 0:
        empty = np.array([], dtype=np.int64)
        return Split("temporal", empty, empty, empty)
    t0, t1 = int(data.ts.min()), int(data.ts.max())
    test_from = t0 + (1.0 - test_frac) * (t1 - t0)
    val_from = t0 + (1.0 - test_frac - val_frac) * (t1 - t0)
    return Split(
        name="temporal",
        train=np.flatnonzero(data.ts < val_from),
        val=np.flatnonzero((data.ts >= val_from) & (data.ts < test_from)),
        test=np.flatnonzero(data.ts >= test_from),
    )


def serving_split(data: Dataset, val_frac: float = 0.1) -> Split:
    """For the model that gets registered: all but the latest 10% of time trains, that 10%
    stops the boosting and calibrates; nothing is held out (the evaluation splits measured
    this very recipe)."""
    temporal = temporal_split(data, test_frac=0.0, val_frac=val_frac)
    val = np.union1d(temporal.val, temporal.test)  # test_frac=0 leaves only the last instant
    return Split("serving", temporal.train, val, np.array([], dtype=np.int64))
