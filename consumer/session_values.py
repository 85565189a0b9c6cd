"""Closed sessions' stored JSON written by compiled code from their rows.

Why: `s:{user}:<session>` holds a closed session's fields as one JSON object
(`state_codec.session_value`, orjson of its dict); a synthetic batch closes ~770 of them, and a
dict and an `orjson.dumps` each cost ~1 us a session on the committing thread. The fields are
counts, times in ms and sums: nearly always whole numbers, which orjson writes as their digits
and ".0" (below 1e16, where it turns to an exponent). Rows of such values are written here in
one pass, byte for byte what `session_value` writes (tests/test_session_values.py); a batch
holding any other value (a fraction, -0.0, 1e16 or more, NaN) goes through `session_value`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numba import njit

from engage.byte_copy import copy_bytes
from features.aggregates import State
from features.closed_sessions import ClosedSessions
from features.fold_layout import SESSION_FIELDS
from features.state_codec import session_value
from scoring.message_writer import write_int

#: Each field's text before its value: `{"start":`, then `,"end":` ...
_HEADS = [f'{"," if i else "{"}"{name}":'.encode() for i, name in enumerate(SESSION_FIELDS)]
_HEAD_BYTES = np.frombuffer(b"".join(_HEADS), np.uint8)
_HEAD_ENDS = np.cumsum([len(h) for h in _HEADS]).astype(np.int64)
_LARGEST = 1e16  # from here orjson writes an exponent


@njit(cache=True, nogil=True)
def _write(rows: np.ndarray, heads: np.ndarray, head_ends: np.ndarray, out: np.ndarray,
           ends: np.ndarray) -> None:  # fmt: skip  # pragma: no cover (compiled)
    """Each row's JSON object into `out`, back to back; `ends[r]`: where row r's ends."""
    pos = 0
    for r in range(rows.shape[0]):
        start = 0
        for j in range(rows.shape[1]):
            end = head_ends[j]
            pos = copy_bytes(out, pos, heads, start, end)
            start = end
            pos = write_int(out, pos, int(rows[r, j]))
            out[pos] = 46  # .0
            out[pos + 1] = 48
            pos += 2
        out[pos] = 125  # }
        pos += 1
        ends[r] = pos


def _whole(rows: np.ndarray) -> bool:
    """Every value a whole number orjson writes as its digits and ".0" (not -0.0)."""
    ok = (np.abs(rows) < _LARGEST) & (rows == np.trunc(rows)) & ~((rows == 0) & np.signbit(rows))
    return bool(ok.all())


def session_values(closed: Mapping[tuple[str, str], State]) -> list[bytes]:
    """Each closed session's stored value (`session_value`), in the mapping's order."""
    if not isinstance(closed, ClosedSessions) or not _whole(closed.rows):
        return list(map(session_value, closed.values()))
    rows = np.ascontiguousarray(closed.rows, dtype=np.float64)
    n = len(rows)
    if n == 0:
        return []
    out = np.empty(n * (len(_HEAD_BYTES) + rows.shape[1] * 22 + 1), dtype=np.uint8)
    ends = np.empty(n, dtype=np.int64)
    _write(rows, _HEAD_BYTES, _HEAD_ENDS, out, ends)
    data = out[: ends[-1]].tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [data[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]


def warm_up() -> None:
    """Load the compiled writer now (numba's on-disk cache), not in the first batch."""
    session_values(ClosedSessions(["u"], ["s"], np.zeros((1, len(SESSION_FIELDS)))))
