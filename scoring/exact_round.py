"""Python's `round(x, ndigits)` over a whole column, bit for bit, at numpy's speed.

Why: the score messages carry every probability and rule score rounded as Python rounds
(the wire is compared byte for byte by parity and by the readers' round trip), and a call of
`round(x, 6)` costs ~0.4 us (a decimal conversion each way): three of them an event were a
tenth of the consumer's compute.

Python's round is the double nearest to k / 10**d, where k is the exact x * 10**d rounded half
to even. `np.rint(x * 10**d) / 10**d` is the same double whenever the product's own rounding
(at most half an ulp of it) cannot move it across a half-integer: k is then `rint` of the
product, and the IEEE division of two exact doubles is correctly rounded. The few values whose
product lies within a few ulps of a half-integer (the ties and near-ties), and the values numpy
cannot scale exactly (not finite, or too large for an integer-valued double), go through
Python's `round` one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Products at or beyond this are not scaled (a double's integers are exact below 2**52).
_MAX_SCALED = 2.0**52
#: How far from a half-integer (relative to the product) a product must be to trust `rint`:
#: the product is off by at most 2**-53 of itself; this is 16x that.
_TIE_MARGIN = 2.0**-49


def round_like_python(values: Sequence[float] | np.ndarray, ndigits: int) -> list[float]:
    """`[round(v, ndigits) for v in values]`, the same floats (sign of zero included)."""
    return round_column(values, ndigits).tolist()  # type: ignore[no-any-return]


def round_column(values: Sequence[float] | np.ndarray, ndigits: int) -> np.ndarray:
    """`round_like_python` as a float64 array (no float object a value: for the compiled
    score-message writer, which reads the column as it is)."""
    x = np.asarray(values, dtype=np.float64)
    if not 0 <= ndigits <= 15:
        return np.array([round(v, ndigits) for v in x.tolist()], dtype=np.float64)
    scale = float(10**ndigits)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = x * scale
        out = np.rint(scaled) / scale
        magnitude = np.abs(scaled)
        off_half = np.abs(magnitude - np.floor(magnitude) - 0.5)
        exact = (magnitude < _MAX_SCALED) & (off_half > magnitude * _TIE_MARGIN)
    if not exact.all():
        for i in np.flatnonzero(~exact).tolist():
            out[i] = round(float(x[i]), ndigits)
    return out
