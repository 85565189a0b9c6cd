"""Many Redis commands of one shape framed for the wire from columns, by compiled code.

Why: a batch's transaction is mostly commands of a few shapes repeated per item, user and
session (`HSET i:{item} <shard> <blob>`, `HSET u:{user}:score` with the same eleven fields,
`SET s:{user}:<session> <json> EX <ttl>`). hiredis packs a command from its argument tuple at
~0.07 us an argument plus the tuple itself, holding the GIL the consumer thread waits for.
Here each column's values are joined by C-level calls (`b"".join`, `map(len)`), and a numba
kernel, which releases the GIL, writes the RESP framing of every command around them.

The bytes are exactly `hiredis.pack_command` of each command (checked by
tests/test_resp_frames.py): bytes as they are, str as UTF-8, int in decimal, float as its
repr. A column holding anything else is framed by hiredis, command by command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import hiredis
import numpy as np
from numba import njit

from engage.byte_copy import copy_bytes
from scoring.message_writer import write_int

#: Room for one argument's framing: "$", up to 19 digits of its length, two CRLFs.
_ARG_FRAMING = 1 + 19 + 4


@dataclass(frozen=True, slots=True)
class Same:
    """One value for every command of a `frame` call (a field name, a shard, an option)."""

    value: Any


Column = Sequence[Any] | Same


def rows_of(columns: Sequence[Column]) -> list[tuple[Any, ...]]:
    """Each command's arguments (after its name), a row of the columns, `Same` repeated."""
    n = min(len(c) for c in columns if not isinstance(c, Same))
    spread = [repeat(c.value, n) if isinstance(c, Same) else c for c in columns]
    return list(zip(*spread, strict=False))  # (the lists are as long as each other)


def _arg(value: Any) -> bytes:
    """One argument as hiredis packs it; TypeError for a type it refuses."""
    kind = type(value)
    if kind is bytes:
        return value
    if kind is str:
        return value.encode()
    if kind is int:
        return b"%d" % value
    if kind is float:
        return repr(value).encode()
    raise TypeError(f"{kind.__name__} is not a Redis argument")


#: Types whose `str` is the argument hiredis packs (exact types: a bool or an int subclass
#: goes through `_arg`, which refuses it as hiredis would or packs it as hiredis does).
_TEXT_KINDS = frozenset({str, int, float})


def _one_value(values: Sequence[Any], kinds: set[type]) -> bool:
    """Whether every value of the column is the first, as hiredis packs it: equal values of
    one type (a served score's model version, domain, time of update across a batch's
    users). Equal floats differ in text only as 0.0 and -0.0; NaN equals nothing."""
    if len(kinds) != 1 or values.count(values[0]) != len(values):
        return False
    first = values[0]
    return type(first) is not float or first != 0.0


def _column_bytes(values: Sequence[Any], kinds: set[type]) -> tuple[bytes, np.ndarray]:
    """The column's arguments joined, and each one's length (`kinds`: their types)."""
    n = len(values)
    if kinds <= {bytes}:
        return b"".join(values), np.fromiter(map(len, values), np.int64, n)
    if kinds <= _TEXT_KINDS:  # str(x) is hiredis's text of each: repr for a float, %d an int
        texts = values if kinds <= {str} else list(map(str, values))
        joined = "".join(texts)
        if joined.isascii():  # a character is a byte
            return joined.encode(), np.fromiter(map(len, texts), np.int64, n)
    encoded = list(map(_arg, values))
    return b"".join(encoded), np.fromiter(map(len, encoded), np.int64, n)


@njit(cache=True, nogil=True)
def _frame(  # pragma: no cover
    prefix: np.ndarray, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, out: np.ndarray
) -> int:
    """Each row's command into `out`: `prefix` (its argument count and name), then each
    argument `data[starts[r, j]:ends[r, j]]` as a bulk string. Returns the bytes written."""
    pos, head = 0, len(prefix)
    for r in range(starts.shape[0]):
        out[pos : pos + head] = prefix
        pos += head
        for j in range(starts.shape[1]):
            start, end = starts[r, j], ends[r, j]
            out[pos] = 36  # $
            pos = write_int(out, pos + 1, end - start)
            out[pos] = 13
            out[pos + 1] = 10
            pos += 2
            pos = copy_bytes(out, pos, data, start, end)
            out[pos] = 13
            out[pos + 1] = 10
            pos += 2
    return pos


def frame(command: str, columns: Sequence[Column]) -> bytes:
    """`command` with one argument from each column, once per row, framed back to back:
    `b"".join(hiredis.pack_command((command, *row)) for row in zip(*columns))`, with `Same`
    columns repeated. Every list column must be as long as the first."""
    lists = [c for c in columns if not isinstance(c, Same)]
    if not lists:
        raise ValueError("frame needs a column with a value per command")
    n = len(lists[0])
    if any(len(c) != n for c in lists):
        raise ValueError("frame needs one value per command in every column")
    if n == 0:
        return b""
    name = command.encode()
    prefix = b"*%d\r\n$%d\r\n%b\r\n" % (len(columns) + 1, len(name), name)
    pieces: list[bytes] = []
    starts = np.empty((n, len(columns)), dtype=np.int64)
    ends = np.empty((n, len(columns)), dtype=np.int64)
    base = 0
    try:
        for j, column in enumerate(columns):
            kinds = set() if isinstance(column, Same) else set(map(type, column))
            if isinstance(column, Same) or _one_value(column, kinds):
                # (a column of one value: no text a value, ~6 of a score hash's 11 fields)
                data = _arg(column.value if isinstance(column, Same) else column[0])
                starts[:, j], ends[:, j] = base, base + len(data)
            else:
                data, lengths = _column_bytes(column, kinds)
                ends[:, j] = base + np.cumsum(lengths)
                starts[:, j] = ends[:, j] - lengths
            pieces.append(data)
            base += len(data)
    except TypeError:  # a value hiredis refuses, or would take in a form this does not
        return b"".join(hiredis.pack_command((command, *row)) for row in rows_of(columns))
    out = np.empty(base + n * (len(prefix) + len(columns) * _ARG_FRAMING), dtype=np.uint8)
    used = _frame(np.frombuffer(prefix, np.uint8), np.frombuffer(b"".join(pieces), np.uint8),
                  starts, ends, out)  # fmt: skip
    return out[:used].tobytes()


def warm_up() -> None:
    """Load the compiled framing now (numba's on-disk cache), not in the first batch."""
    frame("SET", [["k"], Same(b"v")])
