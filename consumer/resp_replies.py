"""A batch's read replies kept as the bytes Redis sent, with where each value lies in them.

Why: a batch of 1M synthetic events reads ~850 users its local copy lacks (their hash of
three fields and their item set), ~10 us of the consumer thread a user, and that read is
most of what makes a batch's cost grow with its users (docs/performance.md). Of it, hiredis
made a bytes object a value and a list a reply, `pairs` a dict a hash, and the packed state,
session and recent ids were taken back out of those one user at a time. Here compiled code
walks the RESP2 replies once, keeping each value's (start, length), and the packed states
are unpacked from those spans into the fold's tables (`features.state_codec.unpack_spans`):
only the values the batch keeps as Python objects are made.

Only arrays of bulk strings (and nils) are walked so: a reply of any other shape (an
error, a nested or a RESP3 reply) sends everything read to hiredis's reader, which reads the
replies as it always did (`read_raw` returns its list then). The replies of a span of
commands can also be had as hiredis makes them (`RawReplies.replies`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hiredis
import numpy as np
import redis
from numba import njit

_STAR, _DOLLAR, _CR, _LF, _MINUS = 42, 36, 13, 10, 45
#: Incomplete: more bytes are needed. Malformed: not a shape this module walks.
_MORE, _OTHER = -1, -2
_FIRST_READ = 1 << 20


@njit(cache=True, nogil=True)
def _number(buf: np.ndarray, pos: int, length: int) -> tuple[int, int]:  # pragma: no cover
    """The decimal number at `pos` ended by CRLF, and the position after it (_MORE, _OTHER)."""
    i, negative, value = pos, False, 0
    if i < length and buf[i] == _MINUS:
        negative, i = True, i + 1
    digits = 0
    while i < length and buf[i] != _CR:
        c = buf[i]
        if c < 48 or c > 57 or digits > 17:
            return 0, _OTHER
        value, i, digits = value * 10 + (c - 48), i + 1, digits + 1
    if i + 1 >= length:
        return 0, _MORE
    if digits == 0 or buf[i + 1] != _LF:
        return 0, _OTHER
    return (-value if negative else value), i + 2


@njit(cache=True, nogil=True, inline="always")
def _header(
    buf: np.ndarray, pos: int, length: int, kind: int, least: int
) -> tuple[int, int]:  # pragma: no cover
    """The number after the `kind` byte at `pos` (a count, or a length; at least `least`)
    and the position after its CRLF; (0, _MORE) or (0, _OTHER)."""
    if pos >= length:
        return 0, _MORE
    if buf[pos] != kind:
        return 0, _OTHER
    value, p = _number(buf, pos + 1, length)
    if p >= 0 and value < least:
        return 0, _OTHER
    return value, p


@njit(cache=True, nogil=True)
def _skip(buf: np.ndarray, length: int, pos: int) -> int:  # pragma: no cover
    """The position after the whole RESP2 or RESP3 value at `pos` (any shape, nested), or
    _MORE; _OTHER if it is an error or not RESP."""
    pending = 1
    while pending:
        if pos >= length:
            return _MORE
        kind = buf[pos]
        if kind == _MINUS or kind == 33:  # "-" "!": an error reply
            return _OTHER
        if kind in (43, 58, 95, 35, 44, 40):  # + : _ # , (: one line
            while pos < length and buf[pos] != _LF:
                pos += 1
            if pos >= length:
                return _MORE
            pos, pending = pos + 1, pending - 1
            continue
        count, p = _number(buf, pos + 1, length)
        if p < 0:
            return p
        if kind == _DOLLAR or kind == 61:  # "$" "=": a string of `count` bytes
            if count >= 0:
                p += count + 2
                if p > length:
                    return _MORE
        elif kind == _STAR or kind == 126 or kind == 62:  # * ~ >: `count` values
            pending += max(count, 0)
        elif kind == 37 or kind == 124:  # % |: `count` pairs
            pending += 2 * max(count, 0)
        else:
            return _OTHER
        pos, pending = p, pending - 1
    return pos


@njit(cache=True, nogil=True)
def _scan(
    buf: np.ndarray, length: int, pos: int, todo: int
) -> tuple[int, int, int, bool]:  # pragma: no cover
    """Over up to `todo` whole replies from `pos`, each an array of bulk strings or nils:
    (the position after the last whole one, how many, their values, whether the reply at
    that position, if any has begun, is of another shape)."""
    done, values = 0, 0
    while done < todo:
        start = pos
        count, p = _header(buf, pos, length, _STAR, 0)
        if p < 0:
            return start, done, values, p == _OTHER
        for _ in range(count):
            size, q = _header(buf, p, length, _DOLLAR, -1)
            if q < 0:
                return start, done, values, q == _OTHER
            if size == -1:
                p = q
                continue
            if q + size + 2 > length:
                return start, done, values, False
            if buf[q + size] != _CR or buf[q + size + 1] != _LF:
                return start, done, values, True
            p = q + size + 2
        pos, done, values = p, done + 1, values + count
    return pos, done, values, False


@njit(cache=True, nogil=True)
def _spans(buf: np.ndarray, n: int, n_values: int) -> tuple[np.ndarray, ...]:  # pragma: no cover
    """Of `n` replies `_scan` found whole: each reply's first value's index and its byte
    offset (n + 1 each: the last, the end), each value's start and length (-1: nil)."""
    first = np.empty(n + 1, np.int64)
    offsets = np.empty(n + 1, np.int64)
    starts = np.empty(n_values, np.int64)
    sizes = np.empty(n_values, np.int64)
    pos, v, length = 0, 0, len(buf)
    for r in range(n):
        first[r], offsets[r] = v, pos
        count, p = _number(buf, pos + 1, length)
        for _ in range(count):
            size, q = _number(buf, p + 1, length)
            starts[v], sizes[v] = q, size
            p = q if size == -1 else q + size + 2
            v += 1
        pos = p
    first[n], offsets[n] = v, pos
    return first, offsets, starts, sizes


@njit(cache=True, nogil=True)
def _hash_fields(
    buf: np.ndarray, first: np.ndarray, starts: np.ndarray, sizes: np.ndarray, lo: int, hi: int,
    names: np.ndarray, name_ends: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover  # fmt: skip
    """Of the replies lo..hi (HGETALL's field, value, ...): each named field's value as
    (start, length), (-1, -1) absent; and how many fields of each no name matched."""
    k = len(name_ends)
    out = np.full((hi - lo, k, 2), -1, np.int64)
    other = np.zeros(hi - lo, np.int64)
    for r in range(lo, hi):
        if (first[r + 1] - first[r]) % 2:
            other[r - lo] += 1
            continue
        for e in range(first[r], first[r + 1], 2):
            s, size, found = starts[e], sizes[e], False
            for j in range(k):
                a = 0 if j == 0 else name_ends[j - 1]
                if size != name_ends[j] - a:
                    continue
                same = True
                for b in range(size):
                    if buf[s + b] != names[a + b]:
                        same = False
                        break
                if same:
                    out[r - lo, j, 0], out[r - lo, j, 1] = starts[e + 1], sizes[e + 1]
                    found = True
                    break
            if not found:
                other[r - lo] += 1
    return out, other


@dataclass(frozen=True, slots=True)
class RawReplies:
    """Replies as read (`data`), and where each lies: reply r's values are `starts` and
    `sizes` (-1: nil) from `first[r]` to `first[r + 1]`; its bytes `offsets[r]` to
    `offsets[r + 1]`."""

    data: bytes
    first: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, data: bytes, n: int, values: int) -> RawReplies:
        """The `n` whole replies (`values` values in all) that `data` holds, as `_scan`
        found them."""
        first, offsets, starts, sizes = _spans(np.frombuffer(data, dtype=np.uint8), n, values)
        return cls(data, first, offsets, starts, sizes)

    def __len__(self) -> int:
        return len(self.first) - 1

    @property
    def buffer(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8)

    def counts(self, lo: int, hi: int) -> np.ndarray:
        """How many values each of the replies lo..hi holds."""
        return np.diff(self.first[lo : hi + 1])

    def replies(self, lo: int, hi: int, encoding: str | None = None) -> list[Any]:
        """The replies lo..hi as hiredis makes them (their bulk strings decoded if
        `encoding`): lists of bytes, or of str, and None for a nil."""
        reader = hiredis.Reader(encoding=encoding) if encoding else hiredis.Reader()
        start = int(self.offsets[lo])
        reader.feed(self.data, start, int(self.offsets[hi]) - start)
        return [reader.gets() for _ in range(hi - lo)]

    def every(self, texts: range = range(0)) -> list[Any]:
        """Every reply as `CommandList.run` gives it: those at `texts` decoded."""
        if not texts:
            return self.replies(0, len(self))
        return [*self.replies(0, texts.start), *self.replies(texts.start, texts.stop, "utf-8"),
                *self.replies(texts.stop, len(self))]  # fmt: skip

    def hash_fields(
        self, lo: int, hi: int, names: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_hash_fields` of the replies lo..hi (HGETALLs) for the field `names`."""
        encoded = [name.encode() for name in names]
        joined = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        ends = np.cumsum([len(name) for name in encoded]).astype(np.int64)
        return _hash_fields(self.buffer, self.first, self.starts, self.sizes, lo, hi, joined,
                            ends)  # fmt: skip

    def values(self, spans: np.ndarray) -> list[bytes]:
        """The bytes at each (start, length) of `spans`; b"" where absent (-1)."""
        starts, sizes = spans[:, 0], spans[:, 1]
        ends = np.where(sizes < 0, starts, starts + sizes)
        return list(map(self.data.__getitem__, map(slice, starts.tolist(), ends.tolist())))

    def texts(self, spans: np.ndarray) -> list[str | None]:
        """The UTF-8 text at each (start, length) of `spans`; None where absent (-1)."""
        data = self.data
        return [data[s : s + n].decode() if n >= 0 else None for s, n in spans.tolist()]


def reads_raw(connection: Any) -> bool:
    """Whether `connection` reads through hiredis from a socket this module may read
    itself: RESP2 replies as bytes (a decoding client's replies are left to redis-py)."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    return (
        reader is not None
        and getattr(parser, "_sock", None) is not None
        and not reader.has_data()
        and not getattr(connection.encoder, "decode_responses", False)
    )


def read_raw(
    connection: Any, n: int, bracket: bool, fallback: Callable[[], list[Any]]
) -> RawReplies | list[Any]:
    """The `n` replies to commands just sent on `connection` (`reads_raw`), as bytes and
    spans; `bracket`: they come between two more (`HELLO 2` and `HELLO 3`'s on a RESP3
    connection), which are read and left out. If one is of another shape, `fallback()`'s
    list, with every byte read so far handed to the connection's hiredis reader first."""
    parser = connection._parser
    sock = parser._sock
    buf = np.empty(_FIRST_READ, dtype=np.uint8)
    length = pos = done = values = 0
    begin = -1 if bracket else 0  # (where the n replies begin, once known)
    end = -1
    while end < 0:
        if length == len(buf):
            grown = np.empty(2 * len(buf), dtype=np.uint8)
            grown[:length] = buf[:length]
            buf = grown
        try:
            got = sock.recv_into(buf[length:])
        except TimeoutError as exc:
            raise redis.TimeoutError("Timeout reading from socket") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
        if got == 0:
            raise redis.ConnectionError("Connection closed by server.")
        length += got
        other = False
        if begin < 0:
            begin = pos = _skip(buf, length, 0)
            other = begin == _OTHER
            if begin == _MORE:
                continue
        if not other and done < n:
            pos, whole, found, other = _scan(buf, length, pos, n - done)
            done, values = done + whole, values + found
        if not other and done == n:
            end = _skip(buf, length, pos) if bracket else pos
            other = end == _OTHER
        if other:
            parser._reader.feed(buf[:length].tobytes())
            return fallback()
    if length != end:  # (nothing follows the replies of commands sent: kept as redis-py would)
        parser._reader.feed(buf[end:length].tobytes())
    return RawReplies.of(buf[begin:pos].tobytes(), n, values)


def sample(fields: dict[str, bytes]) -> RawReplies:
    """One HGETALL reply of `fields`, read as `read_raw` reads it (its compiled steps run,
    with the same argument types): for warming them up, and for tests."""
    data = b"*%d\r\n" % (2 * len(fields)) + b"".join(
        b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k.encode(), len(v), v) for k, v in fields.items()
    )
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    if _skip(buf, len(data), 0) != len(data):
        raise ValueError("not one whole reply")
    pos, done, values, other = _scan(buf, len(data), 0, 1)
    if other or done != 1:
        raise ValueError("not an array of bulk strings")
    return RawReplies.of(buf[:pos].tobytes(), 1, values)
