"""Per-user leave-last-out and global temporal splits."""

from __future__ import annotations

import numpy as np

from offline.dataset import Dataset
from offline.splits import per_user_split, serving_split, temporal_split


def tiny_dataset(users: list[str], ts: list[int]) -> Dataset:
    """Rows of `users` at times `ts` (features and labels all zero): what a split looks at."""
    n = len(users)
    return Dataset(
        X=np.zeros((n, 3)), y=np.zeros(n, dtype=np.int8), user_ids=np.array(users, dtype=object),
        item_ids=np.array(["i"] * n, dtype=object), ts=np.array(ts, dtype=np.int64),
    )  # fmt: skip


def test_per_user_last_is_test_and_the_one_before_validation():
    #            0    1    2    3    4    5    6
    users = ["a", "b", "a", "a", "c", "b", "a"]
    ts = [10, 11, 12, 13, 14, 15, 16]
    split = per_user_split(tiny_dataset(users, ts))
    assert split.test.tolist() == [4, 5, 6]  # a's last (6), b's last (5), c's only (4)
    assert split.val.tolist() == [1, 3]  # a's second-to-last (3), b's first (1)
    assert split.train.tolist() == [0, 2]
    all_rows = np.concatenate([split.train, split.val, split.test])
    assert sorted(all_rows.tolist()) == list(range(len(users)))


def test_per_user_uses_time_not_row_order_and_ties_keep_row_order():
    users = ["a", "a", "a"]
    split = per_user_split(tiny_dataset(users, [30, 10, 20]))
    assert split.test.tolist() == [0] and split.val.tolist() == [2]
    split = per_user_split(tiny_dataset(users, [5, 5, 5]))
    assert split.test.tolist() == [2] and split.val.tolist() == [1]


def test_temporal_cuts_the_event_time_span():
    ts = list(range(0, 101))  # span 0..100
    split = temporal_split(tiny_dataset(["u"] * len(ts), ts))
    assert split.test.tolist() == list(range(80, 101))
    assert split.val.tolist() == list(range(70, 80))
    assert split.train.tolist() == list(range(0, 70))
    serving = serving_split(tiny_dataset(["u"] * len(ts), ts))
    assert serving.val.tolist() == list(range(90, 101)) and len(serving.test) == 0
