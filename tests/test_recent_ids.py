"""The duplicate guard's stored form (features/recent_ids.py): digests, the codec, the upgrade."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from features import recent_ids
from features.admission import AdmissionPolicy
from features.events import Event, EventType


def test_digests_are_fnv1a_of_the_utf8_bytes() -> None:
    """Published FNV-1a 64 values: stable across processes and machines (Python's `hash` of a
    str is not), and the same for ASCII ids and ids that need encoding."""
    assert recent_ids.id_digest("") == 0xCBF29CE484222325
    assert recent_ids.id_digest("a") == 0xAF63DC4C8601EC8C
    assert recent_ids.id_digest("foobar") == 0x85944171F73967E8
    ids = ["a", "é-1", "foobar", "", "ü"]
    batch = recent_ids.id_digests(ids).tolist()
    assert batch == [recent_ids.id_digest(i) for i in ids]
    assert batch[1] != recent_ids.id_digest("e-1")


def test_a_value_round_trips_and_a_damaged_one_fails_loudly() -> None:
    plain = {recent_ids.id_digest(f"e{i}"): float(1_700_000_000_000 + i) for i in range(5)}
    blob = recent_ids.from_dict(plain)
    assert blob[:1] == recent_ids.CODEC and len(blob) == 1 + 16 * 5
    assert recent_ids.as_dict(blob) == plain and list(recent_ids.as_dict(blob)) == list(plain)
    assert recent_ids.from_stored(blob) == blob
    assert recent_ids.from_stored(None) == recent_ids.EMPTY == recent_ids.from_dict({})
    with pytest.raises(recent_ids.RecentIdsFormatError):
        recent_ids.from_stored(blob[:-3])
    with pytest.raises(recent_ids.RecentIdsFormatError):
        recent_ids.from_stored(b"\x07" + blob[1:])


def test_the_older_json_form_is_read_and_keeps_guarding() -> None:
    """A value an older engage stored (a JSON list of [id, time]) converts in order, and an
    event it remembers is still refused as a duplicate after the upgrade."""
    old = orjson.dumps([["e1", 1_700_000_000_000.0], ["e2", 1_700_000_000_500.0]])
    blob = recent_ids.from_stored(old)
    assert list(recent_ids.as_dict(blob).items()) == [
        (recent_ids.id_digest("e1"), 1_700_000_000_000.0),
        (recent_ids.id_digest("e2"), 1_700_000_000_500.0),
    ]
    event = Event(event_id="e2", user_id="u", ts=1_700_000_001_000,
                  event_type=EventType.PAGE_VIEW, item_id="i", source="synthetic")  # fmt: skip
    recents = {"u": blob}
    admitted, refused = AdmissionPolicy().admit_all(
        [event], lambda users: np.zeros(len(users)), recents
    )
    assert admitted == [] and refused[0][1].startswith("duplicate")
    assert recents["u"] == blob  # nothing applied: nothing changed


def test_a_batch_table_holds_each_users_pairs_at_the_start_of_its_row() -> None:
    blobs = [
        recent_ids.from_dict({1: 10.0, 2: 20.0}),
        recent_ids.EMPTY,
        recent_ids.from_dict({3: 30.0}),
    ]
    table, counts = recent_ids.tables(blobs, 5)
    assert counts.tolist() == [2, 0, 1]
    assert table["digest"][0, :2].tolist() == [1, 2] and table["ts"][2, 0] == 30.0
    assert not table["digest"][1].any()
    assert recent_ids.rows_packed(table, counts, [0, 1, 2]) == blobs
    with pytest.raises(recent_ids.RecentIdsFormatError):
        recent_ids.tables(blobs, 1)
    assert np.array_equal(recent_ids.unpack(blobs[0])["digest"], [1, 2])


def test_any_rows_pack_back_to_the_values_they_were_read_from() -> None:
    """`tables` then `rows_packed` (the compiled writer, sliced in C) is the identity on any
    mix of values and rows, in any order, repeats and empty values included."""
    rng = np.random.default_rng(7)
    blobs = [
        recent_ids.from_dict({int(d): float(t) for d, t in zip(rng.integers(1, 2**63, k),
                                                              rng.random(k), strict=True)})
        for k in rng.integers(0, 9, 40)
    ]  # fmt: skip
    table, counts = recent_ids.tables(blobs, 9)
    rows = rng.integers(0, len(blobs), 60).tolist()
    assert recent_ids.rows_packed(table, counts, rows) == [blobs[r] for r in rows]
    assert recent_ids.rows_packed(table, counts, []) == []
    empty, none = recent_ids.tables([], 9)  # a batch with no user (every record refused)
    assert recent_ids.rows_packed(empty, none, []) == []
    assert AdmissionPolicy().admit_all([], lambda users: np.zeros(len(users)), {}) == ([], [])


def test_a_batch_of_user_hashes_reads_as_each_one_does() -> None:
    """`in_user_hashes` (checked in numpy when all are this codec's) gives what
    `in_user_hash` gives each: new users, packed values, the older JSON form, and a state
    whose ids are in the older key of their own (None)."""
    packed = {b"seen": recent_ids.from_dict({5: 1.0, 6: 2.0}), b"state": b"x"}
    new: dict[bytes, bytes] = {}
    older_json = {b"seen": b'[["e1", 1.0]]', b"state": b"x"}
    own_key = {b"state": b"x"}
    for raws in ([packed, new, packed], [new, new], [packed, older_json, new],
                 [own_key, packed, new], []):  # fmt: skip
        assert recent_ids.in_user_hashes(raws) == [recent_ids.in_user_hash(r) for r in raws]
    with pytest.raises(recent_ids.RecentIdsFormatError):
        recent_ids.in_user_hashes([packed, {b"seen": b"\x02" + bytes(5)}])
