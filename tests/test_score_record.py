"""The one definition of a score (scoring.score_record): the consumer's column-wise writer and
the typed records the readers parse agree byte for byte, and the API's bodies match them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
import pytest

from features.events import Event, EventType
from scoring.score_record import (
    HASH_FIELDS,
    MESSAGE_FIELDS,
    MODEL_FIELDS,
    SERVED_FIELDS,
    Leader,
    NotAScore,
    ScoreHashes,
    ScoreRecord,
    ServedScore,
    add_reasons,
    decode_message,
    decode_shown,
    encode_messages,
    hash_fields,
    message_dicts,
    model_parts,
    name_domain,
    shown_message,
    skipped_part,
)


@dataclass
class Row:
    event: Event
    partition: int
    offset: int


def _rows(n: int) -> list[Row]:
    return [
        Row(Event(event_id=f"e{i}", user_id=f"u{i % 2}", ts=1_767_348_300_000 + i,
                  event_type=EventType.RATING, item_id=None if i == 1 else f"i{i}", value=4.0,
                  source="movielens"), i % 3, 100 + i)
        for i in range(n)
    ]  # fmt: skip


def _messages() -> list[dict]:
    """Every shape the consumer writes: no model, a model with and without the online
    probability, a skipped domain, a latest row with its domain and reasons, features."""
    rows = _rows(4)
    rules = [(12.3456, "low", [["recency", 4.5]]), (99.999, "high", []),
             (0.004, "low", [["a", 1.0], ["b", 0.25]]), (50.0, "medium", [])]  # fmt: skip
    digests = ["0123456789abcdef:fedcba9876543210"] * 4
    bare = message_dicts(rows, rules, None, digests, 1_767_348_300_123.4)
    parts = model_parts("v1", [0.1234567, 0.5], [0.7654321, 1e-7])
    online = model_parts("v1", [0.1, 0.2], [0.3, 0.4], online=[0.15, 0.25])
    skipped = skipped_part("no model for this domain", "funnel")
    name_domain(skipped, "funnel")
    name_domain(parts[1], "movielens")
    add_reasons(parts[1], [{"feature": "x", "contribution": 0.1}], [])
    modelled = message_dicts(rows, rules, [parts[0], parts[1], online[0], skipped], digests, 1.5)
    modelled[0]["features"] = [1.0, math.nan, 3.5]
    return bare + modelled


def test_every_message_shape_round_trips_byte_for_byte() -> None:
    for message in _messages():
        value = orjson.dumps(message)
        record = decode_message(value)
        assert record.encode() == value
        assert tuple(record.as_message()) == MESSAGE_FIELDS[: len(record.as_message())]


def test_the_writer_rounds_and_keys_as_the_wire_says() -> None:
    messages = _messages()
    assert [m["rule"]["score"] for m in messages[:4]] == [12.35, 100.0, 0.0, 50.0]
    assert list(messages[4]) == list(MESSAGE_FIELDS)  # features last
    assert list(messages[5]["model"]) == ["version", "interaction", "propensity", "domain",
                                          "interaction_reasons", "propensity_reasons"]  # fmt: skip
    assert list(messages[6]["model"]) == ["version", "interaction", "interaction_online",
                                          "propensity"]  # fmt: skip
    assert list(messages[7]["model"]) == ["skipped", "domain"]
    for m in messages[4:]:
        assert [k for k in MODEL_FIELDS if k in m["model"]] == list(m["model"])
    keys = [k for k, _ in encode_messages(messages)]
    assert keys == [m["user_id"].encode() for m in messages]


def test_one_dumps_cut_between_messages_is_a_dumps_per_message() -> None:
    messages = _messages()
    tricky = ['a,{"user_id":"b"}', '",{\\"user_id\\":', "é\u2028", ""]
    for message, user in zip(messages, tricky * 2, strict=True):
        message["user_id"] = user
    other_shape = {"event_id": "e", "user_id": "u"}  # user_id not first: cut per message
    for batch in (messages, messages[:1], [], [other_shape, messages[0]]):
        assert [v for _, v in encode_messages(batch)] == [orjson.dumps(m) for m in batch]
    assert [k for k, _ in encode_messages(messages)] == [u.encode() for u in tricky * 2]


def test_the_published_latest_messages_parse_as_records() -> None:
    shown = [shown_message(m, [{"signal": "s", "points": 1.0, "text": "t"}])
             for m in _messages()[4:]]  # fmt: skip
    assert all("features" not in m for m in shown)
    published = orjson.dumps(shown)
    assert orjson.dumps([r.as_message() for r in decode_shown(published)]) == published


def _as_redis_stores(fields: dict) -> dict[bytes, bytes]:
    """The hash as HSET stores it (redis-py: floats by repr, ints and strings as text)."""
    return {k.encode(): (repr(v) if isinstance(v, float) else str(v)).encode()
            for k, v in fields.items()}  # fmt: skip


def test_the_score_hash_reads_back_as_a_served_score() -> None:
    latest = _messages()[5]
    reasons = [{"signal": "s", "points": 1.0, "text": "t"}]
    fields = hash_fields(shown_message(latest, reasons))
    assert tuple(fields) == HASH_FIELDS
    served = ServedScore.from_hash("u1", _as_redis_stores(fields))
    assert served.as_dict() == {
        "user_id": "u1", "rule_score": 100.0, "label": "high", "reasons": reasons,
        "propensity": 0.0, "model_reasons": [], "model_version": "v1", "model_status": None,
        "domain": "movielens", "event_id": "e1", "event_ts": 1_767_348_300_001,
        "updated_at": 1.5,
    }  # fmt: skip
    skipped = ServedScore.from_hash("u1", _as_redis_stores(hash_fields(_messages()[7])))
    assert (skipped.propensity, skipped.model_version) == (None, None)
    assert (skipped.model_status, skipped.domain) == ("no model for this domain", "funnel")
    bare = ServedScore.from_hash("u0", _as_redis_stores(hash_fields(_messages()[0])))
    assert (bare.propensity, bare.model_version, bare.domain) == (None, None, None)
    assert Leader.from_values([b"high", b"", b"99.5"]) == Leader("high", None, 99.5)
    assert Leader.from_values([None, b"0.25", None]) == Leader("", 0.25, 0.0)


def test_the_api_bodies_are_the_records_fields() -> None:
    from engage.api.models import ScorePoint, UserScore

    assert tuple(UserScore.model_fields) == SERVED_FIELDS
    record_fields = set(ScoreRecord.__dataclass_fields__) | {"rule_score", "label", "propensity"}
    assert set(ScorePoint.model_fields) <= record_fields


NOT_SCORES = [
    b"not json at all", b"[1, 2]", b'"x"', b'{"user_id": "u"}', b'{"event_id": "e", "rule": 3}',
    b'{"event_id": "e", "model": {"propensity": "high"}}',
]  # fmt: skip


@pytest.mark.parametrize("value", NOT_SCORES)
def test_what_is_not_a_score_message_says_so(value: bytes) -> None:
    with pytest.raises(NotAScore):
        decode_message(value)


def test_a_lean_message_reads_with_its_absent_fields_as_none() -> None:
    record = decode_message(b'{"event_id": 7, "user_id": "user3"}')
    assert (record.event_id, record.user_id, record.model, record.rule.score) == (
        "7",
        "user3",
        None,
        None,
    )


def test_a_batch_of_score_hashes_holds_each_users_hash() -> None:
    """`ScoreHashes.of` (columns, no dict a user) gives each user the hash its message alone
    gives, with and without a model in the batch; dicts of every field read as columns."""
    reasons = [{"signal": "s", "points": 1.0, "text": "t"}]
    messages = _messages()
    for batch in (messages[:4], messages[4:], messages[2:6]):  # no model, model, both
        shown = [{**shown_message(m, reasons), "user_id": f"u{k}"} for k, m in enumerate(batch)]
        hashes = ScoreHashes.of(shown)
        assert list(hashes) == [m["user_id"] for m in shown]
        for message in shown:
            alone = hash_fields(message)
            assert hashes[message["user_id"]] == alone and tuple(alone) == HASH_FIELDS
        again = ScoreHashes.of_dicts(dict(hashes.items()))
        assert again.users == hashes.users and list(map(list, again.columns)) == hashes.columns
    assert not ScoreHashes.of([])
    with pytest.raises(ValueError, match="a column a field"):
        ScoreHashes(["u"], [[1.0]])


def test_a_batch_whose_users_share_one_model_part() -> None:
    """Every user's row with the same model part (a domain no model scores) gives every
    user that part's fields; one user with another part gives each their own."""
    base = _messages()[0]
    part = skipped_part("no model for this domain", "funnel")
    shown = [{**base, "user_id": f"u{k}", "model": dict(part)} for k in range(3)]
    hashes = ScoreHashes.of(shown)
    want = {"propensity": "", "model_reasons": "[]", "model_version": "",
            "model_status": "no model for this domain", "domain": "funnel"}  # fmt: skip
    for user in hashes:
        assert {k: hashes[user][k] for k in want} == want
    shown[1]["model"] = {"propensity": 0.25, "version": "v1", "domain": "movies"}
    mixed = ScoreHashes.of(shown)
    assert (mixed["u1"]["propensity"], mixed["u1"]["model_status"]) == (0.25, "")
    assert mixed["u0"] == hashes["u0"] and mixed["u2"]["domain"] == "funnel"
