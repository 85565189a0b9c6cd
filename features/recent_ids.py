"""The duplicate guard's memory of a user: recent event ids as 64-bit digests with their times.

Stored (the field `seen` of the user's hash `u:{user}`, written with the user's state) and held
as one bytes value: a codec byte, then (digest, event time) pairs, 16 bytes each,
little-endian. Why not the ids themselves: a user's 32-64 ids as a dict
of strings cost ~5 KB of a consumer's memory and ~2 KB of Redis's, and encoding them to JSON,
decoding them back and copying the dict took ~7 us a user and batch; as packed digests they
are ~0.8 KB, read and written as they are, and the whole batch's admission runs compiled
(`features.admission`).

A digest is FNV-1a over the id's UTF-8 bytes. Two different ids of one user share a digest with
a probability of about one in 2**58 (up to 64 ids against each new one), and the event is then
refused as a duplicate with the reason, never dropped silently. FNV is not a cryptographic
hash: it guards against accidents, not against a producer crafting colliding ids.

A value in the older form (a JSON list of [id, time] pairs, before this codec) is read and
converted, and so is one in the key of its own an older engage kept it in (`u:{user}:seen`,
`consumer.state_store.recent_of`): an upgrade keeps every user's guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, repeat

import numpy as np
import orjson
from numba import njit

#: One remembered event: its id's digest and its event time.
PAIR = np.dtype([("digest", "<u8"), ("ts", "<f8")])
PAIR_BYTES = PAIR.itemsize
CODEC = b"\x02"
EMPTY = b""
#: The user hash's field that holds the value.
FIELD = "seen"
_FIELD = FIELD.encode()

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


class RecentIdsFormatError(ValueError):
    """A stored value of the duplicate guard this code cannot read."""


@njit(cache=True, nogil=True)
def _fnv1a(data: np.ndarray, ends: np.ndarray) -> np.ndarray:  # pragma: no cover
    """FNV-1a 64 of each segment of `data` (the segments end at `ends`)."""
    out = np.empty(len(ends), dtype=np.uint64)
    start = 0
    for i in range(len(ends)):
        h = _FNV_OFFSET
        for k in range(start, ends[i]):
            h ^= np.uint64(data[k])
            h *= _FNV_PRIME
        out[i] = h
        start = ends[i]
    return out


def id_digests(ids: Sequence[str]) -> np.ndarray:
    """The digest of each id (uint64), in one compiled pass over their joined UTF-8 bytes."""
    joined = "".join(ids)
    if joined.isascii():  # the usual case: a character is a byte
        data, lengths = joined.encode(), np.fromiter(map(len, ids), np.int64, len(ids))
    else:
        encoded = [i.encode() for i in ids]
        data, lengths = b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(ids))
    return _fnv1a(np.frombuffer(data, dtype=np.uint8), np.cumsum(lengths))


def id_digest(event_id: str) -> int:
    return int(id_digests([event_id])[0])


def pack(pairs: np.ndarray) -> bytes:
    """`pairs` (PAIR records, oldest trim order first) as stored; none: the empty value."""
    return CODEC + pairs.astype(PAIR, copy=False).tobytes() if len(pairs) else EMPTY


def unpack(blob: bytes) -> np.ndarray:
    """The PAIR records of a stored value (none for the empty value)."""
    if not blob:
        return np.empty(0, dtype=PAIR)
    _check(blob)
    return np.frombuffer(blob, dtype=PAIR, offset=1)


def _check(blob: bytes) -> None:
    """Refuse, loudly, a value that is not this codec's (damaged, or another codec's)."""
    if blob[:1] != CODEC or (len(blob) - 1) % PAIR.itemsize:
        raise RecentIdsFormatError(
            f"damaged or unknown recent-ids value ({len(blob)} bytes, codec {blob[:1]!r})"
        )


def from_stored(raw: bytes | None) -> bytes:
    """A stored value as this codec holds it: none is the empty value; the older JSON form
    (`[[id, time], ...]`) is converted, its ids digested in order."""
    if not raw:
        return EMPTY
    if raw[:1] == b"[":
        pairs = orjson.loads(raw)
        out = np.empty(len(pairs), dtype=PAIR)
        out["digest"] = id_digests([str(event_id) for event_id, _ in pairs])
        out["ts"] = [float(ts) for _, ts in pairs]
        return pack(out)
    _check(raw)  # fail here, not in a fold, on a damaged value (no array made: ~1 us)
    return raw


def in_user_hash(raw: dict[bytes, bytes]) -> bytes | None:
    """The value in a user's hash (as HGETALL returns it; none for a new user); None when the
    hash has a state but not the field: an older engage kept the value in a key of its own."""
    value = raw.get(_FIELD)
    if value is not None:
        return from_stored(value)
    return None if raw else EMPTY


def in_user_hashes(raws: Sequence[dict[bytes, bytes]]) -> list[bytes | None]:
    """`in_user_hash` of each hash: when every one holds a value of this codec or is a new
    user's (empty), taken as they are, checked in a few numpy calls (no call a user)."""
    held = np.fromiter(map(dict.__contains__, raws, repeat(_FIELD)), np.bool_, len(raws))
    if not held.all() and any(compress(raws, ~held)):  # a state without the field: older
        return list(map(in_user_hash, raws))
    values = list(map(dict.get, raws, repeat(_FIELD), repeat(EMPTY)))
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    starts = (np.cumsum(sizes) - sizes)[sizes > 0]
    first = np.frombuffer(b"".join(values), dtype=np.uint8)[starts]
    if (first != CODEC[0]).any() or ((sizes[sizes > 0] - 1) % PAIR.itemsize).any():
        return list(map(in_user_hash, raws))  # the older JSON form, or a damaged value
    return values  # type: ignore[return-value]


def as_dict(blob: bytes) -> dict[int, float]:
    """The plain form (`features.admission`'s per-event one): digest -> time, in order."""
    pairs = unpack(blob)
    return dict(zip(pairs["digest"].tolist(), pairs["ts"].tolist(), strict=True))


def from_dict(recent: dict[int, float]) -> bytes:
    out = np.empty(len(recent), dtype=PAIR)
    out["digest"] = list(recent)
    out["ts"] = list(recent.values())
    return pack(out)


def tables(blobs: Sequence[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The users' values (as `from_stored` or `pack` made them) as one (len(blobs), width) PAIR
    table, each user's pairs at the start of its row, and each user's count: a batch's values
    in a few numpy calls (the codec bytes dropped from the joined values, not a slice each)."""
    sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    counts, odd = np.divmod(sizes - (sizes > 0), PAIR.itemsize)
    table = np.zeros((len(blobs), width), dtype=PAIR)
    if counts.any():
        if odd.any() or int(counts.max()) > width:  # (the codec byte: checked by from_stored)
            raise RecentIdsFormatError(f"damaged recent ids, or more than {width} of them")
        joined = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        _fill_rows(joined, sizes, table.view(np.uint8).reshape(len(blobs), width * PAIR_BYTES))
    return table, counts


@njit(cache=True, nogil=True)
def _fill_rows(joined: np.ndarray, sizes: np.ndarray, rows: np.ndarray) -> None:  # pragma: no cover
    """Each value of `joined` (`sizes` bytes each) without its codec byte, at the start of its
    row of `rows` (a table's bytes)."""
    pos = 0
    for r in range(len(sizes)):
        size = sizes[r]
        if size:
            rows[r, : size - 1] = joined[pos + 1 : pos + size]
        pos += size


@njit(cache=True, nogil=True)
def _packed_rows(
    table: np.ndarray, counts: np.ndarray, rows: np.ndarray, codec: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """`rows` of `table` (bytes, a row of pairs each) stored back to back, each its codec
    byte and its first `counts[row]` pairs (nothing for none); and where each ends."""
    pair = PAIR_BYTES
    total = 0
    for r in rows:
        if counts[r]:
            total += 1 + pair * counts[r]
    out = np.empty(total, dtype=np.uint8)
    ends = np.empty(len(rows), dtype=np.int64)
    pos = 0
    for k in range(len(rows)):
        r = rows[k]
        n = pair * counts[r]
        if n:
            out[pos] = codec
            out[pos + 1 : pos + 1 + n] = table[r, :n]
            pos += 1 + n
        ends[k] = pos
    return out, ends


def rows_packed(
    table: np.ndarray, counts: np.ndarray, rows: Sequence[int] | np.ndarray
) -> list[bytes]:
    """The stored values of `table`'s `rows` (the first `counts[row]` pairs of each): written
    by compiled code, cut by slices made in C (no Python step a row)."""
    rows = np.asarray(rows, dtype=np.int64)
    raw = table.view(np.uint8).reshape(len(table), table.shape[1] * PAIR_BYTES)  # (0 rows too)
    out, ends = _packed_rows(raw, counts, rows, CODEC[0])
    data = out.tobytes()
    starts = ends - np.diff(ends, prepend=0)
    return list(map(data.__getitem__, map(slice, starts.tolist(), ends.tolist())))
