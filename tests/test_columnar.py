"""features/columnar.py: records kept as columns, read as a mapping."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from features.closed_sessions import ClosedSessions
from features.columnar import ColumnarMapping
from features.fold_layout import SESSION_FIELDS
from features.state_codec import PackedUsers
from scoring.score_record import HASH_FIELDS, ScoreHashes


class Squares(ColumnarMapping[str, int]):
    def __init__(self, keys: list[str]) -> None:
        self.keys_, self.made = keys, 0

    def _record(self, row: int) -> int:
        self.made += 1
        return row * row

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


def test_a_record_is_made_only_when_read_and_membership_makes_none() -> None:
    squares = Squares(["a", "b", "c"])
    assert "c" in squares and "z" not in squares and squares.made == 0
    assert squares["c"] == 4 and squares.get("z") is None and squares.made == 1
    with pytest.raises(KeyError):
        squares["z"]
    assert dict(squares) == {"a": 0, "b": 1, "c": 4}


def test_the_batch_records_are_columnar_mappings_with_their_records() -> None:
    rows = np.arange(2 * len(SESSION_FIELDS), dtype=float).reshape(2, -1)
    sessions = ClosedSessions(["u1", "u2"], ["s1", "s2"], rows)
    users = PackedUsers(["u1", "u2"], [b"x", b"y"], ["s1", None])
    hashes = ScoreHashes(["u1"], [[i] for i in range(len(HASH_FIELDS))])
    for mapping in (sessions, users, hashes):
        assert isinstance(mapping, ColumnarMapping)
    assert ("u2", "s2") in sessions and ("u2", "s1") not in sessions
    assert sessions["u2", "s2"] == dict(zip(SESSION_FIELDS, rows[1].tolist(), strict=True))
    assert "u2" in users and users["u2"] == {"st": b"y"}
    assert "u1" in hashes and "u2" not in hashes
    assert hashes["u1"] == dict(zip(HASH_FIELDS, range(len(HASH_FIELDS)), strict=True))
