"""Issue 18 item 5: the per-user split holding out each user's last 5 interactions."""

from __future__ import annotations

from offline.splits import per_user_split
from tests.test_offline_splits import tiny_dataset


def test_per_user_last_5_holds_out_each_users_last_five_and_validates_on_the_five_before():
    from offline.splits import per_user_last_k_split

    users = ["a"] * 12 + ["b"] * 7 + ["c"] * 3
    ts = list(range(12)) + list(range(7)) + list(range(3))
    split = per_user_last_k_split(tiny_dataset(users, ts), k=5)
    assert split.name == "per_user_last5"
    assert split.test.tolist() == [7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 20, 21]
    assert split.val.tolist() == [2, 3, 4, 5, 6, 12, 13]  # b has only two before its last 5
    assert split.train.tolist() == [0, 1]
    one = per_user_last_k_split(tiny_dataset(users, ts), k=1)
    seed = per_user_split(tiny_dataset(users, ts))
    assert (one.train.tolist(), one.val.tolist(), one.test.tolist()) == (
        seed.train.tolist(), seed.val.tolist(), seed.test.tolist())  # fmt: skip
