"""Many Redis commands of one shape framed for the wire from columns, by compiled code.

Why: a batch's transaction is mostly commands of a few shapes repeated per item, user and
session (`HSET i:{item} <shard> <blob>`, `HSET u:{user}:score` with the same eleven fields,
`SET s:{user}:<session> <json> EX <ttl>`). hiredis packs a command from its argument tuple at
~0.07 us an argument plus the tuple itself, holding the GIL the consumer thread waits for.
Here each column's values are joined by C-level calls (`b"".join`, `map(len)`), and a numba
kernel, which releases the GIL, writes the RESP framing of every command around them; what
every command shares (its head, field names, a column of one value) is framed once and
copied, and an int column's digits are written by the kernel.

The bytes are exactly `hiredis.pack_command` of each command (checked by
tests/test_resp_frames.py): bytes as they are, str as UTF-8, int in decimal, float as its
repr. A column holding anything else is framed by hiredis, command by command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
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


def _one_value(values: Sequence[Any]) -> bool:
    """Whether every value of the column is the first, as hiredis packs it: equal values of
    one type (a served score's model version, domain, time of update across a batch's
    users). Equal floats differ in text only as 0.0 and -0.0; NaN equals nothing. The last
    and the middle value are looked at first: most columns differ there (a walk is ~9 us a
    thousand values, two walks with the types)."""
    first = values[0]
    if not (values[-1] == first and values[len(values) // 2] == first):
        return False
    if values.count(first) != len(values):
        return False
    if type(first) is str:  # only a str (or a subclass: the same text) equals a str
        return True
    return len(set(map(type, values))) == 1 and (type(first) is not float or first != 0.0)


def float_texts(values: Sequence[float]) -> list[str]:
    """Each float's text as hiredis packs it (its repr), each distinct value's made once:
    a batch's rule scores take ~100 distinct values over ~1,000 users (the score hashes,
    the leaderboard), and repr is ~0.17 us a value. 0.0 and -0.0 are one key of the table
    but two texts: those rows get their own."""
    distinct = set(values)
    if len(distinct) * 2 > len(values):  # (few repeats: a table would cost more than it saves)
        return list(map(repr, values))
    table = {value: repr(value) for value in distinct}
    if 0.0 in table:
        return [repr(v) if v == 0.0 else table[v] for v in values]
    return list(map(table.__getitem__, values))


def _column_bytes(values: Sequence[Any], kinds: set[type]) -> tuple[bytes, np.ndarray]:
    """The column's arguments joined, and each one's length (`kinds`: their types)."""
    n = len(values)
    if kinds <= {bytes}:
        return b"".join(values), np.fromiter(map(len, values), np.int64, n)
    if kinds <= _TEXT_KINDS:  # str(x) is hiredis's text of each: repr for a float, %d an int
        texts: Sequence[str] = values
        if kinds == {float}:
            texts = float_texts(values)
        elif not kinds <= {str}:
            texts = list(map(str, values))
        joined = "".join(texts)
        if joined.isascii():  # a character is a byte
            return joined.encode(), np.fromiter(map(len, texts), np.int64, n)
    encoded = list(map(_arg, values))
    return b"".join(encoded), np.fromiter(map(len, encoded), np.int64, n)


def _texts(values: Sequence[Any]) -> tuple[bytes, np.ndarray] | None:
    """A column of ASCII str joined, and each one's length; None for any other column.
    `"".join` refuses anything but str itself, so no walk over the types first."""
    try:
        joined = "".join(values)
    except TypeError:
        return None
    if not joined.isascii():
        return None
    return joined.encode(), np.fromiter(map(len, values), np.int64, len(values))


#: The one int64 whose negation overflows (`write_int` negates a negative value).
_INT64_MIN = -(2**63)


def _ints(values: Sequence[Any]) -> np.ndarray | None:
    """A column of int (exactly: no bool) within int64, as int64, for the kernel to write in
    decimal (`str` a value was ~0.1 us: a served score's event time); None otherwise."""
    if set(map(type, values)) != {int}:
        return None
    try:
        ints = np.fromiter(values, np.int64, len(values))
    except OverflowError:
        return None
    return ints if ints.min() > _INT64_MIN else None


def _bulk(value: Any) -> bytes:
    """One argument framed as a bulk string, as hiredis packs it."""
    data = _arg(value)
    return b"$%d\r\n%b\r\n" % (len(data), data)


#: `_frame`'s segment kinds: framed bytes as they are, a bulk string of data, an int's digits.
_FIXED, _DATA, _INT = 0, 1, 2


@njit(cache=True, nogil=True)
def _frame(  # pragma: no cover
    n: int, fixed: np.ndarray, segments: np.ndarray, data: np.ndarray, lengths: np.ndarray,
    bases: np.ndarray, ints: np.ndarray, out: np.ndarray,
) -> int:  # fmt: skip
    """n commands into `out`, each its `segments` in order: (_FIXED, a, b) copies the framed
    bytes `fixed[a:b]` (the command's head and the arguments all commands share); (_DATA, k,
    0) frames the next `lengths[k, r]` bytes of data column k (its values back to back in
    `data` from `bases[k]`) as a bulk string; (_INT, k, 0) frames the decimal digits of
    `ints[r, k]`. Returns the bytes written."""
    pos = 0
    cursor = bases.copy()
    for r in range(n):
        for s in range(segments.shape[0]):
            kind, a, b = segments[s, 0], segments[s, 1], segments[s, 2]
            if kind == _FIXED:
                pos = copy_bytes(out, pos, fixed, a, b)
                continue
            if kind == _DATA:
                start = cursor[a]
                end = cursor[a] = start + lengths[a, r]
                pos = _put_bulk(out, pos, data, start, end)
                continue
            value = ints[r, a]
            size = write_int(out, pos, value) - pos  # (written where the $ goes, sized)
            pos = _put_head(out, pos, 36, size)
            pos = write_int(out, pos, value)
            out[pos] = 13
            out[pos + 1] = 10
            pos += 2
    return pos


@njit(cache=True, nogil=True, inline="always")
def _put_head(out: np.ndarray, pos: int, mark: int, count: int) -> int:  # pragma: no cover
    """`mark` ("*" an array, "$" a bulk string), `count` in decimal, CRLF."""
    out[pos] = mark
    pos = write_int(out, pos + 1, count)
    out[pos] = 13
    out[pos + 1] = 10
    return pos + 2


@njit(cache=True, nogil=True, inline="always")
def _put_bulk(  # pragma: no cover
    out: np.ndarray, pos: int, data: np.ndarray, start: int, end: int
) -> int:
    """`data[start:end]` as a bulk string."""
    pos = _put_head(out, pos, 36, end - start)
    pos = copy_bytes(out, pos, data, start, end)
    out[pos] = 13
    out[pos + 1] = 10
    return pos + 2


@njit(cache=True, nogil=True)
def _frame_sets(  # pragma: no cover
    name: np.ndarray, keys: np.ndarray, key_lengths: np.ndarray, members: np.ndarray,
    member_lengths: np.ndarray, counts: np.ndarray, out: np.ndarray,
) -> int:  # fmt: skip
    """Command r: `name` (framed) with its key (the next `key_lengths[r]` bytes of `keys`)
    and its `counts[r]` members (the next ones of `members`). Returns the bytes written."""
    pos = key_at = member_at = j = 0
    for r in range(len(counts)):
        pos = _put_head(out, pos, 42, counts[r] + 2)  # *
        pos = copy_bytes(out, pos, name, 0, len(name))
        pos = _put_bulk(out, pos, keys, key_at, key_at + key_lengths[r])
        key_at += key_lengths[r]
        for _ in range(counts[r]):
            pos = _put_bulk(out, pos, members, member_at, member_at + member_lengths[j])
            member_at += member_lengths[j]
            j += 1
    return pos


def frame(command: str, columns: Sequence[Column]) -> bytes:
    """`command` with one argument from each column, once per row, framed back to back:
    `b"".join(hiredis.pack_command((command, *row)) for row in zip(*columns))`, with `Same`
    columns repeated. Every list column must be as long as the first.

    Arguments all commands share (a `Same`, a column of one value: ~6 of a score hash's 11
    fields, and every field name) are framed once, next to the command's head; an int
    column's digits are written by the kernel; the rest is joined column by column."""
    lists = [c for c in columns if not isinstance(c, Same)]
    if not lists:
        raise ValueError("frame needs a column with a value per command")
    n = len(lists[0])
    if any(len(c) != n for c in lists):
        raise ValueError("frame needs one value per command in every column")
    if n == 0:
        return b""
    name = command.encode()
    fixed = [b"*%d\r\n$%d\r\n%b\r\n" % (len(columns) + 1, len(name), name)]
    segments: list[tuple[int, int, int]] = []
    pieces: list[bytes] = []
    spans: list[np.ndarray] = []  # each data column's lengths
    int_columns: list[np.ndarray] = []
    held = 0  # bytes of `fixed` already in a segment
    try:
        for column in columns:
            if isinstance(column, Same) or _one_value(column):
                fixed.append(_bulk(column.value if isinstance(column, Same) else column[0]))
                continue
            top = sum(map(len, fixed))
            if top > held:
                segments.append((_FIXED, held, top))
                held = top
            ints = _ints(column) if type(column[0]) is int else None
            if ints is not None:
                segments.append((_INT, len(int_columns), 0))
                int_columns.append(ints)
                continue
            data, lengths = _joined(column)
            segments.append((_DATA, len(spans), 0))
            pieces.append(data)
            spans.append(lengths)
    except TypeError:  # a value hiredis refuses, or would take in a form this does not
        return b"".join(hiredis.pack_command((command, *row)) for row in rows_of(columns))
    top = sum(map(len, fixed))
    if top > held:
        segments.append((_FIXED, held, top))
    ints = np.stack(int_columns, axis=1) if int_columns else np.zeros((n, 0), np.int64)
    joined = b"".join(pieces)
    size = len(joined) + n * (top + len(columns) * _ARG_FRAMING + len(int_columns) * 20)
    out = np.empty(size, dtype=np.uint8)
    used = _frame(n, np.frombuffer(b"".join(fixed), np.uint8), np.array(segments, np.int64),
                  np.frombuffer(joined or b"\0", np.uint8),
                  np.array(spans, np.int64) if spans else np.zeros((0, n), np.int64),
                  np.cumsum([0, *map(len, pieces)], dtype=np.int64), ints, out)  # fmt: skip
    return out[:used].tobytes()


def _joined(values: Sequence[Any]) -> tuple[bytes, np.ndarray]:
    """The values as hiredis packs them, joined, and each one's length; TypeError for one it
    refuses."""
    texts = _texts(values) if type(values[0]) is str else None
    return texts or _column_bytes(values, set(map(type, values)))


def frame_sets(command: str, keys: Sequence[Any], members: Sequence[Sequence[Any]]) -> bytes:
    """`command key member ...` for each key and its members (at least one each; SADD of
    each user's new items), framed back to back: `b"".join(hiredis.pack_command((command,
    key, *its)) ...)`. Why: a batch of 1M synthetic events adds items to ~600 users' sets,
    a MovieLens batch to every user's; hiredis took a tuple and ~0.5 us a command."""
    if len(keys) != len(members):
        raise ValueError("frame_sets needs one list of members a key")
    if not keys:
        return b""
    counts = np.fromiter(map(len, members), np.int64, len(members))
    if counts.min() < 1:
        raise ValueError("frame_sets needs at least one member a key")
    flat = list(chain.from_iterable(members))
    try:
        key_data, key_lengths = _joined(keys)
        member_data, member_lengths = _joined(flat)
    except TypeError:  # a value hiredis refuses, or would take in a form this does not
        return b"".join(hiredis.pack_command((command, key, *its))
                        for key, its in zip(keys, members, strict=True))  # fmt: skip
    name = _bulk(command)
    size = (len(key_data) + len(member_data) + len(keys) * (len(name) + 2 * _ARG_FRAMING)
            + len(flat) * _ARG_FRAMING)  # fmt: skip
    out = np.empty(size, dtype=np.uint8)
    used = _frame_sets(np.frombuffer(name, np.uint8), np.frombuffer(key_data, np.uint8),
                       key_lengths, np.frombuffer(member_data or b"\0", np.uint8),
                       member_lengths, counts, out)  # fmt: skip
    return out[:used].tobytes()


def warm_up() -> None:
    """Load the compiled framing now (numba's on-disk cache), not in the first batch."""
    frame("SET", [["k"], Same(b"v")])
    frame_sets("SADD", ["k"], [["m"]])
