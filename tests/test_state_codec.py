"""The packed user state (features.state_codec): exact round trips, loud failures."""

from __future__ import annotations

import numpy as np
import pytest

from features.events import Event, EventType
from features.fold import FoldState
from features.items import ItemMeta
from features.pipeline import MemoryState
from features.state_codec import (
    FIELDS,
    STATE_FIELD,
    StateFormatError,
    decode_user,
    encode_user,
    load_packed_users,
    pack_rows,
    packed_columns,
    packed_users,
    unpack_rows,
    unpack_spans,
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


def test_rows_pack_and_load_as_each_user_alone() -> None:
    """A batch's users packed and read back in one pass: each blob is the user's own
    encoding, whatever the other rows hold, and reading puts every row back where it was."""
    rng = np.random.default_rng(7)
    k = 9
    values = rng.normal(size=(k, len(FIELDS))) * 1e6
    present = rng.random((k, len(FIELDS))) < np.linspace(0.0, 1.0, k)[:, None]  # 0 .. all
    blobs = pack_rows(values, present)
    for i in range(k):
        alone = {n: float(values[i, c]) for c, n in enumerate(FIELDS) if present[i, c]}
        assert blobs[i] == encode_user(alone)[STATE_FIELD]
    got_values, got_present = unpack_rows(blobs)
    assert np.array_equal(got_present, present)
    assert np.array_equal(got_values, np.where(present, values, 0.0))

    tables = FoldState()
    users = [f"u{i}" for i in range(k)] + ["new"]
    tables.user_row("new")
    tables.users[0], tables.user_set[0] = 5.0, 1  # a row the new user must not keep
    raws = [{STATE_FIELD.encode(): b, b"cs_id": f"s{i}".encode()} for i, b in enumerate(blobs)]
    read = load_packed_users(tables, users, [*raws, {}])
    assert read == [*blobs, b""]
    assert [f[STATE_FIELD] for f in packed_users(tables, users[:k])] == blobs
    assert packed_users(tables, ["new"]) == [{STATE_FIELD: encode_user({})[STATE_FIELD]}]
    assert tables.cs_id[tables.user_index["u3"]] == "s3"
    columns = packed_columns(tables, users)  # the batch's form: a mapping of the same dicts
    assert list(columns) == users and dict(columns.items()) == dict(
        zip(users, packed_users(tables, users), strict=True)
    )
    committed = {**dict(zip(users, read, strict=True)), "u1": b"other"}
    changed = columns.changed(committed)  # u1 (another state) and new (none yet) changed
    assert list(changed) == ["u1", "new"] and changed["u1"] == columns["u1"]
    assert columns.changed({u: b"" for u in users}) is columns
    assert "u1" in changed and "u0" not in changed and {"u1"} <= changed.keys()


def test_a_batch_read_refuses_a_hash_of_the_per_field_format() -> None:
    """The batch form (`load_packed_users`) refuses what `decode_user` refuses, among
    packed states and new users."""
    blob = encode_user({"n": 1.0})[STATE_FIELD]
    good = {STATE_FIELD.encode(): blob}
    with pytest.raises(StateFormatError, match="without a packed state"):
        load_packed_users(FoldState(), ["a", "b", "c"], [good, {b"n": b"3.0"}, {}])
    tables = FoldState()
    assert load_packed_users(tables, ["a", "b"], [{}, good]) == [b"", blob]
    assert tables.user_rows(["b", "a", "z"]) == [1, 0, 2] and tables.user_ids[2] == "z"


def test_one_damaged_state_among_many_fails_loudly() -> None:
    good = encode_user({"n": 1.0})[STATE_FIELD]
    with pytest.raises(StateFormatError, match="damaged"):
        unpack_rows([good, good[:-8] + good[-4:], good])
    with pytest.raises(StateFormatError, match="another field layout"):
        unpack_rows([good, good[:1] + bytes(4) + good[5:]])


def test_states_unpacked_from_where_they_lie_in_a_buffer_are_unpack_rows() -> None:
    """`unpack_spans` (the read of a batch's users as bytes and spans) puts into the rows
    exactly what `unpack_rows` reads from the same states, new users' rows emptied, with
    other bytes before, between and after the states."""
    rng = np.random.default_rng(11)
    k = 12
    values = rng.normal(size=(k, len(FIELDS))) * 1e3
    present = rng.random((k, len(FIELDS))) < np.linspace(0.0, 1.0, k)[:, None]
    blobs = pack_rows(values, present)
    buffer, spans = b"", []
    for i, blob in enumerate(blobs):
        buffer += bytes(rng.integers(0, 256, size=i % 5, dtype=np.uint8)) + b"\r\n"
        spans.append((len(buffer), len(blob)))
        buffer += blob
    spans.insert(4, (-1, -1))  # a new user
    tables = FoldState()
    users = [f"u{i}" for i in range(k + 1)]
    rows = tables.user_rows(users)
    tables.users[rows[4]], tables.user_set[rows[4]] = 9.0, 1  # what the new user must not keep
    unpack_spans(tables, rows, np.frombuffer(buffer + b"tail", np.uint8), np.array(spans))
    want_values, want_present = unpack_rows(blobs)
    got = [r for i, r in enumerate(rows) if i != 4]
    assert np.array_equal(tables.users[got], want_values)
    assert np.array_equal(tables.user_set[got], want_present)
    assert not tables.users[rows[4]].any() and not tables.user_set[rows[4]].any()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "damaged"),  # a value cut short
        (lambda b: b + bytes(8), "damaged"),  # a value too many
        (lambda b: b[:1] + bytes(4) + b[5:], "another field layout"),
        (lambda b: b"\x09" + b[1:], "codec"),
        (lambda b: b[:6], "shorter than its header"),
        (lambda b: b"", "codec"),
    ],
)
def test_states_read_from_spans_are_refused_as_unpack_rows_refuses_them(
    damage: object, message: str
) -> None:
    good = encode_user({"n": 1.0, "last_ts": 2.0})[STATE_FIELD]
    bad = damage(good)  # type: ignore[operator]
    buffer = good + bad + good
    spans = np.array([(0, len(good)), (len(good), len(bad)), (len(good) + len(bad), len(good))])
    with pytest.raises(StateFormatError, match=message):
        unpack_rows([good, bad, good])
    with pytest.raises(StateFormatError, match=message):
        unpack_spans(FoldState(), [0, 1, 2], np.frombuffer(buffer, np.uint8), spans)
