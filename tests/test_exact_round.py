"""scoring.exact_round: Python's round over a column, the same doubles bit for bit."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from scoring.exact_round import round_column, round_like_python


def _bits(values: list[float]) -> list[int]:
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def _check(values: list[float], ndigits: int) -> None:
    got = round_like_python(np.asarray(values), ndigits)
    want = [round(v, ndigits) for v in values]
    assert all(type(v) is float for v in got)
    assert _bits(got) == _bits(want)  # NaN, -0.0 and all: the same doubles
    column = round_column(values, ndigits)  # the array form: the same doubles
    assert column.dtype == np.float64 and _bits(column.tolist()) == _bits(want)


@pytest.mark.parametrize("ndigits", [0, 1, 2, 4, 6, 9])
def test_random_values(ndigits: int) -> None:
    rng = random.Random(ndigits)
    probabilities = [rng.random() for _ in range(20_000)]
    scores = [rng.uniform(0, 100) for _ in range(20_000)]
    wide = [rng.uniform(-1e6, 1e6) for _ in range(20_000)]
    tiny = [rng.uniform(-1, 1) * 10 ** -rng.randint(1, 30) for _ in range(5_000)]
    _check(probabilities + scores + wide + tiny, ndigits)


@pytest.mark.parametrize("ndigits", [1, 2, 3, 6])
def test_ties_and_their_neighbours(ndigits: int) -> None:
    """Decimal halves (0.125, 0.0000005, ...), as near as a double gets, and the doubles
    either side of them: where numpy's own rounding differs from Python's."""
    rng = random.Random(7 + ndigits)
    values = []
    for _ in range(5_000):
        tie = (rng.randrange(0, 10 ** (ndigits + 2)) + 0.5) / 10**ndigits
        for v in (tie, math.nextafter(tie, 0), math.nextafter(tie, math.inf)):
            values += [v, -v]
    values += [0.125, 0.375, 2.675, 1.0000005, 0.0000005, 0.5, 1.5, 2.5]
    _check(values, ndigits)
    numpy_own = np.round(np.asarray(values), ndigits).tolist()
    assert _bits(numpy_own) != _bits([round(v, ndigits) for v in values])  # the case is real


def test_special_values() -> None:
    values = [
        0.0,
        -0.0,
        -1e-9,
        1e-9,
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        -1e300,
        2.0**53,
        4.5e15,
        123456789012.345678,
        5e-324,
    ]
    for ndigits in (0, 2, 6):
        _check(values, ndigits)


def test_empty_and_out_of_range_ndigits() -> None:
    assert round_like_python(np.zeros(0), 6) == []
    _check([0.123456789, 2.5], 17)
