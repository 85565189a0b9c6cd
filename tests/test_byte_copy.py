"""engage/byte_copy.py: the compiled copy writes what a slice assignment writes, and refuses a
range outside either array instead of writing past it."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from engage.byte_copy import copy_bytes


@njit(cache=False)
def _copy_all(out: np.ndarray, src: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> int:
    pos = 0
    for i in range(len(starts)):
        pos = copy_bytes(out, pos, src, starts[i], ends[i])
    return pos


def test_pieces_of_every_size_land_as_slices_would() -> None:
    rng = np.random.default_rng(7)
    lengths = rng.integers(0, 600, 500)
    lengths[:5] = [0, 1, 7, 8, 9]
    ends = np.cumsum(lengths)
    src = rng.integers(0, 256, int(ends[-1]), dtype=np.uint8)
    order = rng.permutation(len(lengths))  # copied out of order: not one contiguous run
    starts, ends = (ends - lengths)[order], ends[order]
    out = np.zeros(len(src) + 3, dtype=np.uint8)
    used = _copy_all(out, src, starts, ends)
    expected = b"".join(src[s:e].tobytes() for s, e in zip(starts, ends, strict=True))
    assert used == len(expected)
    assert out[:used].tobytes() == expected
    assert not out[used:].any()  # nothing written past the last piece


@njit(cache=False)
def _copy_one(out: np.ndarray, pos: int, src: np.ndarray, start: int, end: int) -> int:
    return copy_bytes(out, pos, src, start, end)


@pytest.mark.parametrize(
    ("pos", "start", "end"),
    [(0, 0, 11), (6, 0, 5), (-1, 0, 1), (0, -1, 2), (0, 5, 4)],
)
def test_a_range_outside_either_array_is_refused(pos: int, start: int, end: int) -> None:
    out = np.zeros(10, dtype=np.uint8)
    src = np.arange(10, dtype=np.uint8)
    assert _copy_one(out, 5, src, 0, 5) == 10  # the edges themselves are in range
    with pytest.raises(IndexError):
        _copy_one(out, pos, src, start, end)


def test_only_contiguous_uint8_arrays_are_taken() -> None:
    from numba.core.errors import TypingError

    with pytest.raises(TypingError):
        _copy_all(np.zeros(4, dtype=np.int64), np.zeros(4, dtype=np.uint8),
                  np.array([0]), np.array([1]))  # fmt: skip
