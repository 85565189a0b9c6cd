"""consumer/session_values.py: closed sessions' JSON from their rows is `session_value`'s."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consumer.session_values import session_values
from features.closed_sessions import ClosedSessions
from features.fold_layout import SESSION_FIELDS
from features.state_codec import session_value

WIDTH = len(SESSION_FIELDS)


def _block(rows: np.ndarray) -> ClosedSessions:
    n = len(rows)
    return ClosedSessions([f"u{i % 3}" for i in range(n)], [f"s:{i}" for i in range(n)], rows)


def _reference(closed: ClosedSessions) -> list[bytes]:
    return [
        session_value(dict(zip(SESSION_FIELDS, row, strict=True))) for row in closed.rows.tolist()
    ]


def test_whole_numbers_are_written_as_session_value_writes_them() -> None:
    rng = np.random.default_rng(7)
    rows = np.floor(rng.uniform(-1e6, 1e6, (200, WIDTH)))
    rows[:, 0] = rng.integers(1_600_000_000_000, 1_800_000_000_000, 200)  # times in ms
    rows[::7] = 0.0
    rows[1, :] = [9999999999999998.0, 1e15, -1.0, 1.0, 10.0, 99.0, 100.0, 123456789012345.0]
    closed = _block(rows)
    assert session_values(closed) == _reference(closed)


@pytest.mark.parametrize("odd", [0.5, -0.0, 1e16, -1e16, math.nan, math.inf, 1e-7, 3.25])
def test_a_batch_with_another_value_is_written_by_session_value(odd: float) -> None:
    rows = np.ones((4, WIDTH))
    rows[2, 5] = odd
    closed = _block(rows)
    assert session_values(closed) == _reference(closed)


def test_any_mapping_and_an_empty_batch() -> None:
    fields = dict(zip(SESSION_FIELDS, [1.0, 2.5, 3.0, 0.0, 1.0, 0.0, 0.0, 0.0], strict=True))
    assert session_values({("u", "s"): fields}) == [session_value(fields)]
    assert session_values(_block(np.empty((0, WIDTH)))) == []


def test_closed_sessions_read_as_a_mapping() -> None:
    rows = np.arange(2 * WIDTH, dtype=np.float64).reshape(2, WIDTH)
    closed = ClosedSessions(["a", "b"], ["s1", "s2"], rows)
    assert list(closed) == [("a", "s1"), ("b", "s2")] and len(closed) == 2
    assert closed["b", "s2"] == dict(zip(SESSION_FIELDS, rows[1].tolist(), strict=True))
    assert dict(closed.items())["a", "s1"]["start"] == 0.0
    assert ("a", "s1") in closed and ("a", "s2") not in closed
    with pytest.raises(KeyError):
        closed["a", "s2"]
    with pytest.raises(ValueError):
        ClosedSessions(["a"], ["s1", "s2"], rows)
    again = ClosedSessions(
        ["a", "b", "a"], ["s1", "s1", "s1"], np.arange(3.0).repeat(WIDTH).reshape(3, WIDTH)
    )
    assert list(again) == [("a", "s1"), ("b", "s1")]  # a dict's order, the last close kept
    assert again["a", "s1"]["start"] == 2.0 and session_values(again)[0].startswith(
        b'{"start":2.0,'
    )
