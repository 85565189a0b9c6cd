"""The distinct values of a column of small non-negative integers (partition numbers)."""

from __future__ import annotations

import numpy as np


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, ascending, by counting: np.unique sorts, 10x the time on a
    2,000-row batch's partitions (numpy 2.4). For small ranges only (memory ~ the largest).

    >>> sorted_distinct(np.array([3, 0, 3, 5])).tolist()
    [0, 3, 5]
    """
    return np.flatnonzero(np.bincount(values))
