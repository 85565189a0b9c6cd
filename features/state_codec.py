"""A user's state as Redis stores it: one packed field instead of ~60-120 hash fields.

`u:{user}` holds two fields: `cs_id` (the current session id, the one string) and `st`, the
numeric state packed against the declared layout (`features.spec.USER_STATE_FLOAT_FIELDS`):

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
from typing import TYPE_CHECKING

import numpy as np

from features.aggregates import State
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


_PER_FIELD_HASH = (
    "user hash without a packed state (written by an engage before the packed codec): "
    "replay the log into an empty database"
)


class StateFormatError(ValueError):
    """A stored user state this code cannot read (another layout or codec, or damaged)."""


def pack_row(values: np.ndarray, present: np.ndarray) -> bytes:
    """One user's numeric state (layout order) and presence flags, packed."""
    mask = np.asarray(present, dtype=bool)
    return (
        HEADER
        + np.packbits(mask).tobytes()
        + np.ascontiguousarray(values[mask], dtype="<f8").tobytes()
    )


def unpack_row(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(values, present) of a packed state; absent fields read 0.0."""
    if blob[:1] != HEADER[:1]:
        raise StateFormatError(f"user state codec {blob[:1]!r}, this code reads {CODEC_VERSION}")
    if blob[1:5] != FINGERPRINT:
        raise StateFormatError(
            "user state packed under another field layout (written by another engage "
            "version): replay the log into an empty database"
        )
    bits = np.frombuffer(blob, dtype=np.uint8, count=_MASK_BYTES, offset=len(HEADER))
    present = np.unpackbits(bits, count=len(FIELDS)).astype(bool)
    body = len(blob) - len(HEADER) - _MASK_BYTES
    if body != 8 * int(present.sum()):
        raise StateFormatError(f"damaged user state: {body} bytes for {present.sum()} values")
    stored = np.frombuffer(blob, dtype="<f8", offset=len(HEADER) + _MASK_BYTES)
    values = np.zeros(len(FIELDS), dtype=np.float64)
    values[present] = stored
    return values, present


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


def packed_user(tables: FoldState, user_id: str) -> dict[str, bytes | str]:
    """The `u:{user}` hash fields of a user held in a fold's tables."""
    row = tables.user_index[user_id]
    fields: dict[str, bytes | str] = {
        STATE_FIELD: pack_row(tables.users[row], tables.user_set[row])
    }
    session = tables.cs_id[row]
    if session is not None:
        fields[SESSION_ID_FIELD] = session
    return fields


def load_packed_user(tables: FoldState, user_id: str, raw: dict[bytes, bytes]) -> bytes:
    """Put a `u:{user}` hash (as redis-py returns it) into the fold's tables; returns the packed
    state as read (b"" for a new user), to tell later whether the user changed."""
    row = tables.user_row(user_id)
    if not raw:
        tables.users[row], tables.user_set[row], tables.cs_id[row] = 0.0, 0, None
        return b""
    blob = raw.get(STATE_FIELD.encode())
    if blob is None:
        raise StateFormatError(_PER_FIELD_HASH)
    values, present = unpack_row(blob)
    tables.users[row], tables.user_set[row] = values, present
    session = raw.get(SESSION_ID_FIELD.encode())
    tables.cs_id[row] = session.decode() if session is not None else None
    return blob
