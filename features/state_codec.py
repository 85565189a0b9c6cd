"""A user's state as Redis stores it: one packed field instead of ~60-120 hash fields.

`u:{user}` holds `cs_id` (the current session id, the one string), `seen` (the duplicate
guard's recent ids, `features.recent_ids`) and `st`, the numeric state packed against the
declared layout (`features.spec.USER_STATE_FLOAT_FIELDS`):

    1 byte   codec version
    4 bytes  layout fingerprint (the field names, in order)
    n bytes  presence bitmap, one bit per layout field (a field exists in the dict form)
    8 x k    the k present values, float64 little-endian, in layout order

Why: Redis spent 15-27 us of CPU per event on ~40 HSET fields per user, and redis-py as much
packing them; a packed value is one field to write and one `np.frombuffer` to read, and it
takes about half the memory (no per-field names). The presence bitmap keeps the dict form
exact (a field written as 0.0 still exists), so a state round-trips bit for bit. A layout
change (a field added or renamed) changes the fingerprint, and reading a state packed under
another layout fails loudly instead of mis-assigning values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from itertools import compress, repeat
from operator import ne
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from numba import njit

from features.aggregates import State
from features.columnar import ColumnarMapping
from features.spec import USER_STATE_FLOAT_FIELDS

if TYPE_CHECKING:
    from features.fold import FoldState

CODEC_VERSION = 1
STATE_FIELD = "st"
SESSION_ID_FIELD = "cs_id"
#: The field order of the packed values, and each field's position in it.
FIELDS: tuple[str, ...] = tuple(USER_STATE_FLOAT_FIELDS)
COLUMN: dict[str, int] = {name: i for i, name in enumerate(FIELDS)}
FINGERPRINT: bytes = hashlib.sha256("\n".join(FIELDS).encode()).digest()[:4]
HEADER: bytes = bytes([CODEC_VERSION]) + FINGERPRINT
_MASK_BYTES = (len(FIELDS) + 7) // 8
_HEADER_BYTES = np.frombuffer(HEADER, dtype=np.uint8)


_PER_FIELD_HASH = (
    "user hash without a packed state (written by an engage before the packed codec): "
    "replay the log into an empty database"
)


class StateFormatError(ValueError):
    """A stored user state this code cannot read (another layout or codec, or damaged)."""


def pack_rows(values: np.ndarray, present: np.ndarray) -> list[bytes]:
    """Each row of (k, len(FIELDS)) values and presence flags, packed: the masks and the
    present values of all rows in one numpy call each, then one slice a row (a batch packs
    every user it touched, ~800 on the synthetic funnel: numpy calls a user cost ~1.8 us)."""
    mask = np.asarray(present, dtype=bool)
    bits = np.packbits(mask, axis=1).tobytes()
    body = np.ascontiguousarray(np.asarray(values)[mask], dtype="<f8").tobytes()
    ends = (8 * np.cumsum(mask.sum(axis=1))).tolist()
    out, start, m = [], 0, _MASK_BYTES
    for i, end in enumerate(ends):
        out.append(HEADER + bits[i * m : (i + 1) * m] + body[start:end])
        start = end
    return out


def pack_row(values: np.ndarray, present: np.ndarray) -> bytes:
    """One user's numeric state (layout order) and presence flags, packed."""
    return pack_rows(np.asarray(values)[None], np.asarray(present)[None])[0]


def unpack_rows(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(values, present), (k, len(FIELDS)) each, of k packed states; absent fields read 0.0.
    One numpy pass for all of them (a batch reads ~600 users back on the synthetic funnel)."""
    head, m = len(HEADER), _MASK_BYTES
    for blob in blobs:
        if blob[:head] != HEADER:
            if blob[:1] != HEADER[:1]:
                raise StateFormatError(
                    f"user state codec {blob[:1]!r}, this code reads {CODEC_VERSION}"
                )
            raise StateFormatError(
                "user state packed under another field layout (written by another engage "
                "version): replay the log into an empty database"
            )
    if any(len(blob) < head + m for blob in blobs):
        raise StateFormatError("damaged user state: shorter than its header")
    masks = np.frombuffer(b"".join([b[head : head + m] for b in blobs]), dtype=np.uint8)
    present = np.unpackbits(masks.reshape(len(blobs), m), axis=1, count=len(FIELDS))
    present = present.astype(bool)
    bodies = [b[head + m :] for b in blobs]
    sizes = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
    bad = np.flatnonzero(sizes != 8 * present.sum(axis=1))
    if len(bad):
        i = int(bad[0])
        raise StateFormatError(
            f"damaged user state: {sizes[i]} bytes for {present[i].sum()} values"
        )
    values = np.zeros(present.shape, dtype=np.float64)
    values[present] = np.frombuffer(b"".join(bodies), dtype="<f8")
    return values, present


@njit(cache=True, nogil=True)
def _unpack_spans(
    buf: np.ndarray, spans: np.ndarray, rows: np.ndarray, header: np.ndarray, n_fields: int,
    values: np.ndarray, present: np.ndarray,
) -> int:  # pragma: no cover  # fmt: skip
    """`unpack_rows` of the packed states at `spans` of `buf` ((start, length); -1: a new
    user's, all absent) into the rows `rows` of `values` and `present`; the index of the
    first state that is not this codec's and layout's, or of this length, else -1."""
    head, m = len(header), (n_fields + 7) // 8
    word = np.empty(1, dtype=np.uint64)
    as_float = word.view(np.float64)
    for i in range(len(rows)):
        row, start, size = rows[i], spans[i, 0], spans[i, 1]
        values[row, :] = 0.0
        present[row, :] = 0
        if size < 0:
            continue
        if size < head + m:
            return i
        for b in range(head):
            if buf[start + b] != header[b]:
                return i
        at = start + head + m
        end = start + size
        for j in range(n_fields):
            if (buf[start + head + (j >> 3)] >> (7 - (j & 7))) & 1:
                if at + 8 > end:
                    return i
                bits = np.uint64(0)
                for b in range(8):
                    bits |= np.uint64(buf[at + b]) << np.uint64(8 * b)
                word[0] = bits
                values[row, j] = as_float[0]
                present[row, j] = 1
                at += 8
        if at != end:
            return i
    return -1


def unpack_spans(
    tables: FoldState, rows: Sequence[int], buf: np.ndarray, spans: np.ndarray
) -> None:
    """Put the packed states at `spans` of `buf` ((start, length) each; -1: a new user's)
    into the fold's `rows`, in one compiled pass with no bytes object a user (the read of a
    batch's users: consumer/resp_replies.py). Refuses what `unpack_rows` refuses."""
    at = np.asarray(rows, dtype=np.int64)
    bad = _unpack_spans(buf, spans, at, _HEADER_BYTES, len(FIELDS), tables.users, tables.user_set)
    if bad >= 0:
        start, size = spans[bad].tolist()
        unpack_rows([buf[start : start + size].tobytes()])  # raises its error
        raise StateFormatError("damaged user state")  # (unpack_rows found none: a bug here)


def unpack_row(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of a packed state; absent fields read 0.0."""
    values, present = unpack_rows([blob])
    return values[0], present[0]


def encode_user(state: State) -> dict[str, bytes | str]:
    """The `u:{user}` hash fields of a dict-form user state."""
    values = np.zeros(len(FIELDS), dtype=np.float64)
    present = np.zeros(len(FIELDS), dtype=bool)
    fields: dict[str, bytes | str] = {}
    for name, value in state.items():
        if name == SESSION_ID_FIELD:
            fields[SESSION_ID_FIELD] = str(value)
            continue
        col = COLUMN.get(name)
        if col is None:
            raise StateFormatError(f"user field {name!r} is not declared in features.spec")
        values[col], present[col] = value, True
    fields[STATE_FIELD] = pack_row(values, present)
    return fields


def decode_user(raw: dict[bytes, bytes]) -> State:
    """A `u:{user}` hash (as redis-py returns it) to the dict form; {} for a new user."""
    if not raw:
        return {}
    blob = raw.get(STATE_FIELD.encode())
    if blob is None:
        raise StateFormatError(_PER_FIELD_HASH)
    values, present = unpack_row(blob)
    out: State = {}
    session = raw.get(SESSION_ID_FIELD.encode())
    if session is not None:
        out[SESSION_ID_FIELD] = session.decode()
    listed = values.tolist()
    for col in np.flatnonzero(present).tolist():
        out[FIELDS[col]] = listed[col]
    return out


class PackedUsers(ColumnarMapping[str, dict[str, bytes | str]]):
    """Users' `u:{user}` hash fields (`packed_user` of each) as columns: each one's packed
    state and current session id (None: none). Why: a batch of 1M synthetic events writes
    ~850 users; a dict a user, made on the consumer thread and walked again to frame the
    HSETs, was ~1 us a user. Read a user at a time as that dict (the Cluster journal, the
    in-memory store, the tests)."""

    def __init__(self, users: list[str], blobs: list[bytes], sessions: list[str | None]) -> None:
        if not len(users) == len(blobs) == len(sessions):
            raise ValueError("PackedUsers needs a packed state and a session a user")
        self.users, self.blobs, self.sessions = users, blobs, sessions

    def _record(self, row: int) -> dict[str, bytes | str]:
        session, blob = self.sessions[row], self.blobs[row]
        return {STATE_FIELD: blob} if session is None else {STATE_FIELD: blob,
                                                            SESSION_ID_FIELD: session}  # fmt: skip

    def __iter__(self) -> Iterator[str]:
        return iter(self.users)

    def __len__(self) -> int:
        return len(self.users)

    def changed(self, committed: Mapping[str, bytes]) -> PackedUsers:
        """The users whose packed state is not `committed`'s (b"" for none yet)."""
        keep = list(map(ne, self.blobs, map(committed.__getitem__, self.users)))
        if all(keep):
            return self
        return PackedUsers(list(compress(self.users, keep)), list(compress(self.blobs, keep)),
                           list(compress(self.sessions, keep)))  # fmt: skip


def packed_columns(tables: FoldState, user_ids: Sequence[str]) -> PackedUsers:
    """The `u:{user}` hash fields of users held in a fold's tables, packed in one pass."""
    rows = list(map(tables.user_index.__getitem__, user_ids))
    blobs = pack_rows(tables.users[rows], tables.user_set[rows])
    return PackedUsers(list(user_ids), blobs, list(map(tables.cs_id.__getitem__, rows)))


def packed_users(tables: FoldState, user_ids: Sequence[str]) -> list[dict[str, bytes | str]]:
    """`packed_columns` as a dict a user, in order."""
    packed = packed_columns(tables, user_ids)
    return [packed[user] for user in packed]


def packed_user(tables: FoldState, user_id: str) -> dict[str, bytes | str]:
    """The `u:{user}` hash fields of a user held in a fold's tables."""
    return packed_users(tables, [user_id])[0]


def load_packed_users(
    tables: FoldState, user_ids: Sequence[str], raws: Sequence[dict[bytes, bytes]]
) -> list[bytes]:
    """Put `u:{user}` hashes (as redis-py returns them) into the fold's tables, decoded in one
    pass; returns each packed state as read (b"" for a new user), to tell later whether the
    user changed."""
    rows = tables.user_rows(user_ids)
    key, session_key = STATE_FIELD.encode(), SESSION_ID_FIELD.encode()
    blobs: list[Any] = list(map(dict.get, raws, repeat(key)))  # (`map`s in C: none a user)
    held = list(map(bool, raws))
    if blobs.count(None) != held.count(False):  # a hash without the packed state
        raise StateFormatError(_PER_FIELD_HASH)
    at = np.array(rows, dtype=np.int64)
    found = np.array(held, dtype=np.bool_)
    tables.users[at[~found]], tables.user_set[at[~found]] = 0.0, 0
    if found.any():
        values, present = unpack_rows(list(compress(blobs, held)))
        tables.users[at[found]], tables.user_set[at[found]] = values, present
    sessions = map(dict.get, raws, repeat(session_key))
    cs_id = tables.cs_id
    for row, session in zip(rows, sessions, strict=True):
        cs_id[row] = session.decode() if session is not None else None
    return blobs if None not in blobs else [b"" if b is None else b for b in blobs]


def session_value(fields: State) -> bytes:
    """A closed session as `s:{user}:<session>` stores it: its fields
    (`features.aggregates.session_fields`) as one JSON object, which one SET writes with its
    expiry (a hash took an HSET of 8 fields and an EXPIRE: two commands a closed session,
    ~0.2 a synthetic event). The values are counts, times and sums: finite floats."""
    return orjson.dumps(fields)
