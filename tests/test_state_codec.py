"""The packed user state (features.state_codec): exact round trips, loud failures."""

from __future__ import annotations

import pytest

from features.events import Event, EventType
from features.items import ItemMeta
from features.pipeline import MemoryState
from features.state_codec import (
    FIELDS,
    STATE_FIELD,
    StateFormatError,
    decode_user,
    encode_user,
)


def as_redis(fields: dict[str, bytes | str]) -> dict[bytes, bytes]:
    """What HGETALL returns for the hash written with these fields."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def folded_user() -> dict:
    memory = MemoryState(meta={"m1": ItemMeta(genres=("Drama", "War"), year=1998)})
    events = [
        Event(event_id="a", user_id="u", ts=1_700_000_000_000, event_type=EventType.RATING,
              item_id="m1", value=4.5, source="movielens"),
        Event(event_id="b", user_id="u", ts=1_700_000_060_000, event_type=EventType.PAGE_VIEW,
              source="web", session_id="s-1"),
    ]  # fmt: skip
    for event in events:
        memory.step(event)
    return memory.users["u"]


def test_a_folded_state_round_trips_exactly() -> None:
    state = folded_user()
    assert any(v == 0.0 for v in state.values())  # fields that exist with value 0.0
    decoded = decode_user(as_redis(encode_user(state)))
    assert decoded == state and set(decoded) == set(state)
    assert decoded["cs_id"] == "s-1"


def test_packed_is_smaller_than_one_field_per_value() -> None:
    state = folded_user()
    packed = encode_user(state)[STATE_FIELD]
    as_fields = sum(len(k) + len(repr(v)) for k, v in state.items())
    assert len(packed) < as_fields


def test_new_user_and_foreign_formats() -> None:
    assert decode_user({}) == {}
    with pytest.raises(StateFormatError, match="without a packed state"):
        decode_user({b"n": b"3.0"})  # a hash of the per-field format
    packed = bytearray(encode_user({"n": 1.0})[STATE_FIELD])
    packed[1] ^= 0xFF  # another layout's fingerprint
    with pytest.raises(StateFormatError, match="another field layout"):
        decode_user({STATE_FIELD.encode(): bytes(packed)})
    with pytest.raises(StateFormatError, match="damaged"):
        decode_user({STATE_FIELD.encode(): encode_user({"n": 1.0})[STATE_FIELD][:-1]})
    with pytest.raises(StateFormatError, match="not declared"):
        encode_user({"no_such_field": 1.0})


def test_every_declared_field_round_trips() -> None:
    state = {name: float(i) + 0.25 for i, name in enumerate(FIELDS)} | {"cs_id": "x:{y}"}
    assert decode_user(as_redis(encode_user(state))) == state
