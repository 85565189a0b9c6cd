"""Train/validation/test splits over dataset rows (index arrays, no copying).

Per-user: each user's last labelled interaction is test, the one before validation (the classic
leave-last-out for "what will this user do next"; the seed project's number). Per-user last 5
(`per_user_last_k_split`): each user's last 5 are test and the 5 before validation, five times
the test rows (3,050 on ml-latest-small instead of 610), so an AUC interval narrow enough to
tell models apart (issue 18, item 5). Global temporal: the last 20% of event time
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


def rows_from_end(data: Dataset) -> np.ndarray:
    """Each row's rank among its user's rows counted from the end (0: the user's last), by
    time, ties by processing order."""
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
    return from_end


def per_user_split(data: Dataset) -> Split:
    """Each user's last row is test, the one before it validation."""
    from_end = rows_from_end(data)
    return Split(
        name="per_user",
        train=np.flatnonzero(from_end >= 2),
        val=np.flatnonzero(from_end == 1),
        test=np.flatnonzero(from_end == 0),
    )


def per_user_last_k_split(data: Dataset, k: int = 5) -> Split:
    """Each user's last `k` rows are test, the `k` before them validation (a user with fewer
    rows gives test first, then validation, and nothing to train)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    from_end = rows_from_end(data)
    return Split(
        name=f"per_user_last{k}",
        train=np.flatnonzero(from_end >= 2 * k),
        val=np.flatnonzero((from_end >= k) & (from_end < 2 * k)),
        test=np.flatnonzero(from_end < k),
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
