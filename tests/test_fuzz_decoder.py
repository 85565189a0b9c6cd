"""Hostile input: the decoder and the key layout under Hypothesis, then the real pipeline.

The consumer trusts two things: `decode_event` either returns an Event that keeps the schema's
promises or raises DecodeError with a reason (anything else crashes the consumer on every
replay of the batch: a poison pill), and `features.keys` never lets two ids share a key.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.crc import key_slot

from consumer.deadletter import reason_of
from consumer.runner import StreamConsumer
from engage import kafka_clients
from engage.redis_client import connect
from features import keys
from features.events import (
    MAX_MESSAGE_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    SCHEMA_VERSION,
    DecodeError,
    Event,
    EventType,
    decode_event,
)

FUZZ = hsettings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64 = (-(2**63), 2**63 - 1)
STR_FIELDS = ("event_id", "user_id", "source")
OPTIONAL_STR_FIELDS = ("item_id", "session_id")
ALL_FIELDS = (
    *STR_FIELDS,
    *OPTIONAL_STR_FIELDS,
    "ts",
    "event_type",
    "value",
    "context",
    "schema_version",
)

# -- strategies ------------------------------------------------------------------------------

#: Characters that break naive key grammars, log lines or terminals.
NASTY = ":{}%\n\r\t \x00\x1b\u2028\u202eé😀/\\\"'"
nasty_text = st.text(alphabet=st.sampled_from(NASTY), min_size=1, max_size=12)
long_text = st.builds(
    lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(240, 256)
)  # limit: 256
ids = st.one_of(st.text(min_size=1, max_size=20), nasty_text, long_text)

finite = st.floats(allow_nan=False, allow_infinity=False)
context_values = st.one_of(
    st.text(max_size=20), finite, st.integers(*INT64), st.booleans(), st.none()
)
contexts = st.dictionaries(st.text(max_size=8), context_values, max_size=6)


@st.composite
def good_events(draw: st.DrawFn) -> dict[str, Any]:
    """Valid events with hostile-but-legal ids, boundary timestamps and odd contexts."""
    event_type = draw(st.sampled_from(EventType))
    e: dict[str, Any] = {
        "event_id": draw(ids),
        "user_id": draw(ids),
        "ts": draw(
            st.one_of(st.integers(MIN_TS_MS, MAX_TS_MS), st.sampled_from([MIN_TS_MS, MAX_TS_MS]))
        ),
        "event_type": event_type.value,
        "source": draw(st.text(min_size=1, max_size=64)),
    }
    if event_type is EventType.RATING:
        e["value"] = draw(st.one_of(st.floats(0.0, 10.0), st.integers(0, 10)))
    elif draw(st.booleans()):
        e["value"] = draw(st.one_of(finite, st.none()))
    for name in OPTIONAL_STR_FIELDS:
        if draw(st.booleans()):
            e[name] = draw(ids)
    if draw(st.booleans()):
        e["context"] = {k: v for k, v in draw(contexts).items() if v is not None}
    return e


def nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(10**19, 10**400) | st.integers(-(10**400), -(10**19)),  # past 64 bits
    st.floats(),  # NaN and +-inf included: serialised as the JSON tokens NaN / Infinity
    st.sampled_from(["NaN", "Infinity", "1e999", "", "rating", "1700000000000"]),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3),  # surrogates
    nasty_text,
)
hostile_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=70), json_scalars, max_size=40),
    st.integers(1, 400).map(nested),  # the parser stops at ~200; deeper: see below
    st.integers(1, 70_000).map(lambda n: "x" * n),  # past the id limit and the size limit
    st.sampled_from([0, -1, MIN_TS_MS - 1, MAX_TS_MS + 1, 2**63, 1e300, 1.7e12]),  # timestamps
    st.floats(-1e3, 1e3),
)


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A good event with 1-3 fields replaced by hostile values, dropped, or added."""
    e = draw(good_events())
    changes: dict[str, Any] = {}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*ALL_FIELDS, "unknown_field"]))
        if draw(st.integers(0, 5)) == 0:
            e.pop(name, None)
            changes[name] = "<missing>"
        else:
            e[name] = changes[name] = draw(hostile_values)
    return e, changes


def encode(data: Any, how: str) -> bytes:
    """JSON text to bytes, sometimes deliberately not valid UTF-8."""
    if how == "ascii":  # lone surrogates become \\udXXX escapes; NaN becomes the token NaN
        return json.dumps(data, allow_nan=True).encode()
    text = json.dumps(data, allow_nan=True, ensure_ascii=False)
    if how == "utf-8":
        return text.encode("utf-8", "surrogatepass")  # invalid UTF-8 if it holds surrogates
    return text.encode(how, "replace")


encodings = st.sampled_from(["ascii", "utf-8", "utf-16", "latin-1"])


@st.composite
def hostile_messages(draw: st.DrawFn) -> bytes | None:
    """Any of the hostile shapes, as raw Kafka message values."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return encode(draw(hostile_values), draw(encodings))
    if kind == 2:
        return corrupt(draw(good_events()), draw)
    if kind == 3:
        return None if draw(st.booleans()) else b""
    if kind == 4:
        return encode(draw(good_events()), "ascii")
    return encode(draw(mutated_events())[0], draw(encodings))


def corrupt(event: dict[str, Any], draw: st.DrawFn) -> bytes:
    raw = bytearray(encode(event, "utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw)))
        action = draw(st.integers(0, 2))
        if action == 0:
            raw[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == 1:
            del raw[at : at + draw(st.integers(1, 4))]
        else:
            raw[at:] = b""  # truncated
    return bytes(raw)


# -- what must hold ---------------------------------------------------------------------------


def decode_or_reason(raw: bytes | None) -> Event | str:
    """The event, or the DecodeError's reason. Any other exception propagates: a bug."""
    try:
        return decode_event(raw)
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason.strip(), "empty rejection reason"
        assert exc.reason == str(exc)
        return exc.reason


def assert_schema_invariants(event: Event) -> None:
    """What every consumer of an Event relies on, checked from the outside."""
    for name in STR_FIELDS + OPTIONAL_STR_FIELDS:
        value = getattr(event, name)
        if value is None:
            assert name in OPTIONAL_STR_FIELDS
            continue
        assert isinstance(value, str) and 1 <= len(value) <= (64 if name == "source" else 256)
        value.encode()  # no lone surrogates: ids must go into keys and headers as UTF-8
    assert type(event.ts) is int and MIN_TS_MS <= event.ts <= MAX_TS_MS
    assert isinstance(event.event_type, EventType)
    assert event.schema_version == SCHEMA_VERSION
    if event.value is not None:
        assert type(event.value) is float and math.isfinite(event.value)
    if event.event_type is EventType.RATING:
        assert event.value is not None and 0.0 <= event.value <= 10.0
    if event.context is not None:
        assert len(event.context) <= 32
        for k, v in event.context.items():
            assert isinstance(k, str) and len(k) <= 64
            if isinstance(v, str):
                assert len(v) <= 256
            elif not isinstance(v, bool):
                assert math.isfinite(float(v)), v  # features take float() of numbers
                if isinstance(v, int):
                    assert INT64[0] <= v <= INT64[1], v
    # Re-encoding (dead letters, offline snapshots, replays) must work and give it back.
    assert decode_event(event.to_json()) == event
    keys.user_key(event.user_id)


def json_type_ok(name: str, value: Any) -> bool:
    """Whether `value` has the JSON type the wire format prescribes for field `name`."""
    if name in STR_FIELDS or name == "event_type":
        return isinstance(value, str)
    if name in OPTIONAL_STR_FIELDS:
        return value is None or isinstance(value, str)
    if name in ("ts", "schema_version"):
        return type(value) is int
    if name == "value":
        return value is None or type(value) in (int, float)
    if name == "context":
        return value is None or isinstance(value, dict)
    return True


# -- decoder properties -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_decode_error(raw: bytes) -> None:
    decode_or_reason(raw)


@FUZZ
@given(good_events())
def test_every_good_event_is_accepted_unchanged(data: dict[str, Any]) -> None:
    event = decode_or_reason(encode(data, "utf-8"))
    assert isinstance(event, Event), event
    assert event.user_id == data["user_id"] and event.ts == data["ts"]
    assert_schema_invariants(event)


@FUZZ
@given(mutated_events(), encodings)
def test_mutated_events_are_rejected_or_keep_the_invariants(
    mutated: tuple[dict[str, Any], dict[str, Any]], how: str
) -> None:
    data, changes = mutated
    result = decode_or_reason(encode(data, how))
    if isinstance(result, Event):
        assert_schema_invariants(result)
        wrong = [n for n, v in changes.items() if v != "<missing>" and not json_type_ok(n, v)]
        assert not wrong, f"accepted a wrong JSON type for {wrong}: {changes}"
        assert "unknown_field" not in data


@FUZZ
@given(hostile_values, encodings)
def test_any_json_value_only_ever_raises_decode_error(value: Any, how: str) -> None:
    result = decode_or_reason(encode(value, how))
    if isinstance(result, Event):
        assert_schema_invariants(result)


@FUZZ
@given(good_events(), st.data())
def test_corrupted_bytes_only_ever_raise_decode_error(data: dict[str, Any], draw: Any) -> None:
    result = decode_or_reason(corrupt(data, draw.draw))
    if isinstance(result, Event):
        assert_schema_invariants(result)


@pytest.mark.parametrize("depth", [10, 200, 1_000, 20_000])
@pytest.mark.parametrize("where", ["message", "context", "value"])
def test_deep_nesting_is_a_reason_not_a_crash(depth: int, where: str) -> None:
    inner = "[" * depth + "]" * depth
    raw = {
        "message": inner,
        "context": f'{{"event_id":"e","user_id":"u","ts":{MIN_TS_MS},"event_type":"tag",'
        f'"source":"s","context":{{"k":{inner}}}}}',
        "value": f'{{"event_id":"e","user_id":"u","ts":{MIN_TS_MS},"event_type":"rating",'
        f'"source":"s","value":{inner}}}',
    }[where].encode()
    result = decode_or_reason(raw)
    assert isinstance(result, str)
    assert ("oversized" in result) == (len(raw) > MAX_MESSAGE_BYTES)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("field", ["value", "ts", "context"])
def test_non_finite_numbers_are_rejected_by_name(token: str, field: str) -> None:
    """NaN and Infinity as bare JSON tokens (not valid JSON, but common in the wild)."""
    fields = {"value": "4.0", "ts": str(MIN_TS_MS), "context": "{}"}
    fields[field] = f'{{"x":{token}}}' if field == "context" else token
    raw = (
        f'{{"event_id":"e","user_id":"u","event_type":"rating","source":"s",'
        f'"value":{fields["value"]},"ts":{fields["ts"]},"context":{fields["context"]}}}'
    )
    result = decode_or_reason(raw.encode())
    assert isinstance(result, str) and result.startswith(field), result


@pytest.mark.parametrize("digits", [19, 20, 309, 400, 4000])
def test_integers_past_64_bits_in_the_context_never_poison(digits: int) -> None:
    """Found by the fuzz: a 400-digit `account_balance` decoded fine, then `float()` of it
    raised OverflowError inside the consumer (and `to_json` a TypeError): a poison pill.
    Past 64 bits a number is read as a float if it is a finite one, else rejected."""
    raw = (
        f'{{"event_id":"e","user_id":"u","ts":{MIN_TS_MS},"event_type":"page_view",'
        f'"source":"s","context":{{"account_balance":{"9" * digits}}}}}'
    ).encode()
    result = decode_or_reason(raw)
    if digits < 309:
        assert isinstance(result, Event) and type(result.context["account_balance"]) is float
        assert_schema_invariants(result)
    else:
        assert isinstance(result, str) and "context.account_balance" in result, result


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", True),
        ("value", "4.5"),
        ("ts", str(MIN_TS_MS)),
        ("ts", float(MIN_TS_MS)),
        ("schema_version", True),
        ("event_id", 7),
    ],
)
def test_wrong_json_types_are_not_coerced(field: str, value: Any) -> None:
    """Found by the fuzz: lax parsing read `"value": true` as a 1.0-star rating and
    `"ts": "1700000000000"` as a timestamp. The wire format is typed; producers must be too."""
    body = {"event_id": "e", "user_id": "u", "ts": MIN_TS_MS, "event_type": "rating",
            "value": 4.0, "source": "s", field: value}  # fmt: skip
    result = decode_or_reason(json.dumps(body).encode())
    assert isinstance(result, str) and field in result, result


# -- key layout properties --------------------------------------------------------------------

key_ids = st.one_of(
    st.text(alphabet=st.sampled_from(":{}%37ABD\n u"), min_size=1, max_size=8), st.text(min_size=1)
)  # ids are never empty (the schema); an empty id would make an empty, ignored hash tag


def all_keys(user: str, session: str) -> list[str]:
    return [
        keys.user_key(user),
        keys.user_items_key(user),
        keys.user_score_key(user),
        keys.session_key(user, session),
    ]


def with_escaped_twins(found: list[str]) -> list[str]:
    """The ids plus each id's escaped form as an id of its own: the likeliest collision."""
    return sorted({*found, *(keys.escape_id(x) for x in found)})


@FUZZ
@given(
    st.lists(key_ids, min_size=1, max_size=5).map(with_escaped_twins),
    st.lists(key_ids, min_size=1, max_size=3).map(with_escaped_twins),
)
def test_distinct_ids_never_share_a_key(users: list[str], sessions: list[str]) -> None:
    """Every (builder, ids) maps to its own key: no user can write into another's state."""
    built: dict[str, tuple[str, ...]] = {}
    for user in users:
        for session in sessions:
            for i, key in enumerate(all_keys(user, session)):
                owner = ("user", str(i), user) if i < 3 else ("session", user, session)
                assert built.setdefault(key, owner) == owner, (key, owner, built[key])
        for builder in (keys.item_key, keys.item_meta_key):
            owner = (builder.__name__, user)
            assert built.setdefault(builder(user), owner) == owner


@FUZZ
@given(key_ids, key_ids)
def test_one_users_keys_share_a_hash_slot(user: str, session: str) -> None:
    """Redis Cluster hashes only the text inside the first `{...}`: it must be the whole
    escaped id, so all of a user's keys land in one slot (one MULTI/EXEC can cover them)."""
    found = all_keys(user, session)
    for key in found:
        start = key.index("{")
        assert key[start + 1 : key.index("}", start)] == keys.escape_id(user)
    assert len({key_slot(k.encode()) for k in found}) == 1
    assert keys.unescape_user(keys.user_key(user)) == user


# -- the real pipeline ------------------------------------------------------------------------


#: Messages the fuzz found that crashed (or fooled) the consumer before the decoder was fixed.
KNOWN_POISON = [
    b'{"event_id":"p1","user_id":"u","ts":1700000000000,"event_type":"page_view","source":"s",'
    b'"context":{"account_balance":' + b"9" * 400 + b"}}",
    b'{"event_id":"p2","user_id":"u","ts":1700000000000,"event_type":"rating","source":"s",'
    b'"value":true}',
]


def sample(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """n deterministic draws from a strategy (derandomized: the same run every time)."""
    out: list[Any] = []

    @hsettings(max_examples=n, database=None, derandomize=True, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck), deadline=None)  # fmt: skip
    @given(strategy)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


@pytest.mark.stack
def test_consumer_survives_hostile_messages_end_to_end(settings, tmp_path) -> None:
    """Hostile and good messages through real Kafka and Redis: every message is applied or
    dead-lettered with its reason, byte for byte, and the consumer never crashes."""
    settings = settings.model_copy(update={"data_dir": tmp_path})  # no model: rules only
    hostile = KNOWN_POISON + sample(hostile_messages(), 200)
    good = [encode(e, "utf-8") for e in sample(good_events(), 100)]
    messages = [m for i, h in enumerate(hostile) for m in (h, good[i % len(good)])]
    kafka_clients.ensure_topic(settings, settings.events_topic)
    producer = kafka_clients.producer(settings)
    expected: dict[tuple[int, int], Event | str] = {}
    for i, value in enumerate(messages):
        meta = producer.send(settings.events_topic, key=str(i % 7).encode(), value=value).get(30)
        expected[(meta.partition, meta.offset)] = decode_or_reason(value)
    producer.close()
    bad = {where: reason for where, reason in expected.items() if isinstance(reason, str)}
    assert 100 < len(bad) < len(messages) - 100, "the mix should hold both kinds"

    summary = StreamConsumer(settings, group="fuzz").run(idle_exit_s=3.0)

    assert summary.errors == []
    assert summary.processed + summary.dead_lettered == len(messages)
    stats = connect(settings).hgetall(keys.stats_key(settings.events_topic))
    assert {k.decode(): int(v) for k, v in stats.items()} == {
        "processed": summary.processed,
        "dead_lettered": summary.dead_lettered,
    }
    dlq = kafka_clients.consumer(settings, settings.dead_letter_topic, consumer_timeout_ms=5000)
    letters: dict[tuple[int, int], tuple[bytes | None, dict[str, str]]] = {}
    for msg in dlq:
        meta = reason_of(msg.headers)
        letters[(int(meta["source_partition"]), int(meta["source_offset"]))] = (msg.value, meta)
        if len(letters) == summary.dead_lettered:
            break
    dlq.close()
    assert len(letters) == summary.dead_lettered
    by_offset = {where: m for where, m in zip(expected, messages, strict=True)}
    for where, (value, meta) in letters.items():
        assert value == by_offset[where]  # the original bytes, unchanged (None stays None)
        assert meta["source_topic"] == settings.events_topic and meta["reason"]
        if where in bad:  # undecodable: dead-lettered with the decoder's own reason
            assert meta["reason"] == bad[where]
        else:  # decodable, refused by the admission policy (a repeated id, a late event)
            assert meta["reason"].startswith(("duplicate:", "late:")), meta
    assert set(bad) <= set(letters), "an undecodable message was not dead-lettered"
