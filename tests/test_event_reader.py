"""The compiled event reader against the Event model, message for message.

`features.event_reader.read_events` must give, for every message, what `decode_event` (the
model's validation) gives: the same event (its fields, and its encoding) or the same error
reason. Canonical messages must be read by the compiled pass itself (no validation
call), and anything it is not sure of must be left to the model.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import orjson
import pytest

from features import event_reader
from features.event_batch import EventBatch, assemble_event
from features.event_reader import ReadContexts, read_events
from features.events import MAX_TS_MS, MIN_TS_MS, DecodeError, Event, EventType, decode_event
from features.vector import _context_facts, context_columns


def random_event(rng: random.Random, k: int) -> Event:
    kind = rng.choice(list(EventType))
    value: float | None = None
    if kind is EventType.RATING:  # halves, and decimals of every length (17 digits: inexact)
        value = rng.choice([0.0, 3.5, 10.0, rng.randint(0, 20) / 2,
                            round(rng.uniform(0, 10), rng.randint(1, 17))])  # fmt: skip
    elif rng.random() < 0.3:
        value = rng.choice([0.0, 12.75, 1e-4, 123456.5, float(rng.randint(0, 10**6)),
                            rng.uniform(0, 1e6), rng.uniform(0, 1e-3), 1e22,
                            1e15 + 0.5])  # fmt: skip
    context = None
    if rng.random() < 0.3:
        context = random_context(rng)
    return Event(
        event_id=f"e:{k}:{rng.randint(0, 10**9)}",
        user_id=rng.choice(["u1", "user-2", "x" * 256, "9"]),
        ts=rng.randint(MIN_TS_MS, MAX_TS_MS),
        event_type=kind,
        item_id=rng.choice([None, "31", "/pricing", "i" * 256]),
        session_id=rng.choice([None, None, "s:1", f"s{k}"]),
        value=value,
        context=context,
        source=rng.choice(["movielens", "synthetic", "w" * 64]),
    )


def random_context(rng: random.Random) -> dict[str, Any]:
    """Contexts of every value kind, and at each limit (entries, key and text lengths; past
    them: EDGES), some not ASCII."""
    pick = rng.random()
    if pick < 0.05:
        return {}
    if pick < 0.1:
        return {f"k{i}": i for i in range(32)}
    if pick < 0.15:
        return {"k" * 64: "v" * 256}
    values: list[Any] = [
        "mobile", "eu", "", "caf\u00e9", True, False, 0, -7, 2**62, -(2**63), 517.97, -0.5,
        rng.uniform(-1e6, 1e6), round(rng.uniform(0, 1000), 2), 1e300, 12.0,
    ]  # fmt: skip
    keys = ["device", "region", "account_balance", "browsing_depth", "", "tag", "x y"]
    return {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(1, 5))}


def outcome(message: bytes | None) -> tuple[str, Any]:
    try:
        event = decode_event(message)
    except DecodeError as exc:
        return "error", exc.reason
    return "event", (event, event.to_json())


def assert_reads_like_the_model(messages: list[bytes | None]) -> None:
    batch, rows, errors = read_events(messages)
    got: dict[int, tuple[str, Any]] = {}
    for row, event in zip(rows, batch, strict=True):
        got[row] = ("event", (event, event.to_json()))
    for row, exc in errors:
        got[row] = ("error", exc.reason)
    assert sorted(got) == list(range(len(messages)))
    for i, message in enumerate(messages):
        assert got[i] == outcome(message), message


CANONICAL = (
    b'{"event_id":"ml-r:1:31:964982703","user_id":"1","ts":964982703000,'
    b'"event_type":"rating","item_id":"31","value":2.5,"source":"movielens",'
    b'"schema_version":1}'
)


def with_field(name: str, raw: str) -> bytes:
    """CANONICAL with one field's JSON text replaced."""
    fields = orjson.loads(CANONICAL)
    text = CANONICAL.decode()
    old = orjson.dumps(fields[name]).decode()
    return text.replace(f'"{name}":{old}', f'"{name}":{raw}', 1).encode()


EDGES: list[bytes | None] = [
    None, b"", b"{}", b"[]", b"null", b"not json", CANONICAL + b" ", b" " + CANONICAL,
    CANONICAL[:-1], CANONICAL + b"}", CANONICAL.replace(b":", b": ", 1),
    with_field("value", "4"), with_field("value", "10"), with_field("value", "10.5"),
    with_field("value", "04"), with_field("value", "4."), with_field("value", ".5"),
    with_field("value", "4e0"), with_field("value", "4E-1"), with_field("value", "-0"),
    with_field("value", "-0.0"), with_field("value", "-1"), with_field("value", "0.1"),
    with_field("value", "3.000000000000001"), with_field("value", "1.2345678901234567"),
    with_field("value", "null"), with_field("value", "true"), with_field("value", '"4"'),
    with_field("value", "0.30000000000000004"), with_field("value", "9.999999999999999"),
    with_field("ts", str(MIN_TS_MS)), with_field("ts", str(MIN_TS_MS - 1)),
    with_field("ts", str(MAX_TS_MS)), with_field("ts", str(MAX_TS_MS + 1)),
    with_field("ts", "964982703000.0"), with_field("ts", "0964982703000"),
    with_field("ts", "99999999999999999999999"), with_field("ts", '"964982703000"'),
    with_field("ts", "-964982703000"), with_field("ts", "9.6e11"),
    with_field("event_type", '"tag"'), with_field("event_type", '"Rating"'),
    with_field("event_type", '"page_view"'), with_field("event_type", '"click"'),
    with_field("event_id", '""'), with_field("event_id", '"' + "e" * 256 + '"'),
    with_field("event_id", '"' + "e" * 257 + '"'), with_field("event_id", '"a\\"b"'),
    with_field("event_id", '"a\\u0041"'), with_field("event_id", '"caf\u00e9"'),
    with_field("event_id", '"tab\there"'), with_field("event_id", "7"),
    with_field("source", '"' + "s" * 64 + '"'), with_field("source", '"' + "s" * 65 + '"'),
    with_field("source", '""'), with_field("schema_version", "2"),
    with_field("schema_version", "1.0"), with_field("schema_version", "10"),
    with_field("item_id", "null"), with_field("user_id", '"u\\/1"'),
    CANONICAL.replace(b',"schema_version":1', b""),
    CANONICAL.replace(b',"item_id":"31"', b""), CANONICAL.replace(b',"value":2.5', b""),
    CANONICAL.replace(b'"event_id":"ml-r:1:31:964982703",', b""),
    CANONICAL.replace(b'"user_id":"1","ts":964982703000', b'"ts":964982703000,"user_id":"1"'),
    CANONICAL.replace(b'"item_id":"31"', b'"item_id":"31","item_id":"32"'),
    CANONICAL.replace(b'"item_id":"31"', b'"item_id":"31","session_id":"s","context":{}'),
    CANONICAL.replace(b'"item_id":"31"', b'"item_id":"31","extra":1'),
    CANONICAL.replace(b'"value":2.5', b'"value":2.5,"context":{"device":"tv"}'),
    b"x" * (64 * 1024 + 1),
    *(CANONICAL.replace(b'"value":2.5', b'"value":2.5,"context":' + c) for c in [
        b"{}", b'{"a":1}', b'{"a":1,"a":2}', b'{"a":null}', b'{"a":{}}', b'{"a":[1]}',
        b'{"a":-0}', b'{"a":-0.0}', b'{"a":1e3}', b'{"a":01}', b'{"a":1.}', b'{"a":tru}',
        b'{"a":true}', b'{"a":false}', b'{"a":"x\\y"}', b'{"a\\":1}', b'{"a":1,}',
        b'{"a" :1}', b'{"a":9223372036854775807}', b'{"a":9223372036854775808}',
        b'{"a":123456789012345678}', b'{"a":1.23456789012345}', b'{"a":1.234567890123456}',
        b'{"' + b"k" * 64 + b'":1}', b'{"' + b"k" * 65 + b'":1}',
        b'{"a":"' + b"v" * 256 + b'"}', b'{"a":"' + b"v" * 257 + b'"}',
        b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(32)) + b"}",
        b"{" + b",".join(b'"k%d":%d' % (i, i) for i in range(33)) + b"}",
        b'{"a":1', b'{"a"', b"{", b'{"a":"b', b'{"":""}',
    ]),
]  # fmt: skip


def test_edge_messages_read_as_the_model_reads_them() -> None:
    assert_reads_like_the_model([m for m in EDGES if m is not None])  # the compiled pass
    assert_reads_like_the_model([CANONICAL, *EDGES, CANONICAL])  # and with a tombstone


def test_random_events_read_as_the_model_reads_them() -> None:
    rng = random.Random(7)
    messages: list[bytes | None] = [random_event(rng, k).to_json() for k in range(3000)]
    assert_reads_like_the_model(messages)


def test_mutated_messages_read_as_the_model_reads_them() -> None:
    """Random edits of canonical messages: every byte a mutation can touch, characters that
    end or escape strings and numbers, and non-ASCII."""
    rng = random.Random(11)
    alphabet = b'"\\,:{}[]0123456789.-+eE ntfu\x00\x7f\xc3\xa9a'
    messages: list[bytes | None] = []
    for k in range(6000):
        raw = bytearray(random_event(rng, k).to_json())
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            what = rng.random()
            if what < 0.4:
                raw[at] = rng.choice(alphabet)
            elif what < 0.7:
                del raw[at]
            else:
                raw[at:at] = bytes([rng.choice(alphabet)])
        messages.append(bytes(raw))
    assert_reads_like_the_model(messages)


def test_messages_read_where_they_lie_in_a_buffer_read_as_when_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`read_block`, as the consumer reads a fetch (the values where they lie, record framing
    and keys between them): the same events, rows and reasons as `read_events`, and the same
    messages left to the model (a message read with the bytes around it would be declined),
    with bytes between the messages that would read as JSON if one were read past its end."""
    declined: list[list[int]] = []
    patched = event_reader._patched

    def noting(batch: Any, messages: Any, rows: list[int]) -> Any:
        declined.append(list(rows))
        return patched(batch, messages, rows)

    monkeypatch.setattr(event_reader, "_patched", noting)
    rng = random.Random(13)
    alphabet = b'"\\,:{}[]0123456789 \x00'
    messages: list[bytes | None] = [None, *EDGES]
    for k in range(2000):
        raw = bytearray(random_event(rng, k).to_json())
        if k % 3 == 0:  # a mutated one
            at = rng.randrange(len(raw))
            raw[at : at + rng.randint(0, 2)] = bytes([rng.choice(alphabet)])
        messages.append(bytes(raw))
    pieces, starts, ends, at = [], [], [], 0
    for message in messages:
        gap = (
            bytes(rng.choice(alphabet) for _ in range(rng.randrange(4)))
            + CANONICAL[: rng.randrange(9)]
        )
        pieces += [gap, message or b""]
        starts.append(at + len(gap))
        at += len(gap) + len(message or b"")
        ends.append(at)
    batch, rows, errors = event_reader.read_block(
        b"".join(pieces), np.array(starts), np.array(ends), messages
    )
    joined, joined_rows, joined_errors = read_events(messages)
    assert rows == joined_rows and list(batch) == list(joined)
    assert [(i, e.reason) for i, e in errors] == [(i, e.reason) for i, e in joined_errors]
    assert errors and len(rows) > 1000
    assert len(declined) == 2 and declined[0] == declined[1] and len(declined[0]) < 1000


def test_canonical_messages_are_read_without_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled pass reads canonical messages itself (else it would only be a detour):
    all whose value, if any, and context values are plain decimals of at most 15 digits,
    integers, booleans or texts (a context's texts of printable ASCII); a context of a kind
    it does not read (here: texts with an escape) goes to the model."""
    rng = random.Random(3)
    events = [random_event(rng, k) for k in range(500)]

    def plain_decimal(value: float | None) -> bool:
        text = "0" if value is None else orjson.dumps(value).decode()
        return "e" not in text and len(text.replace(".", "").lstrip("-")) <= 15

    def plain_context(context: dict[str, Any] | None) -> bool:
        if context is None:
            return True
        small = len(context) <= 32 and all(len(k) <= 64 for k in context)
        texts = [v for v in context.values() if isinstance(v, str)] + list(context)
        floats = [v for v in context.values() if isinstance(v, float)]
        ints = [v for v in context.values() if type(v) is int]
        plain_texts = all(t.isascii() and len(t) <= 256 for t in texts)
        plain_ints = all(len(str(abs(v))) <= 18 for v in ints)  # 19 digits: to the model
        return small and plain_texts and plain_ints and all(plain_decimal(v) for v in floats)

    plain = [e for e in events if plain_decimal(e.value) and plain_context(e.context)]
    assert len(plain) > 300 and sum(e.context is not None for e in plain) > 50
    calls: list[bytes | None] = []

    def counted(message: bytes | None) -> Event:
        calls.append(message)
        return decode_event(message)

    monkeypatch.setattr(event_reader, "decode_event", counted)
    batch, rows, errors = read_events([e.to_json() for e in plain])
    assert calls == [] and errors == [] and rows == list(range(len(plain)))
    assert list(batch) == plain
    escaped = [e for e in events if e.context and not plain_context(e.context)]  # (and more)
    assert escaped
    batch, _, _ = read_events([e.to_json() for e in escaped])
    assert len(calls) == len(escaped) and list(batch) == escaped


def test_a_batch_of_events_is_its_columns() -> None:
    rng = random.Random(5)
    events = [random_event(rng, k) for k in range(200)]
    batch = EventBatch.of(events)
    assert EventBatch.of(batch) is batch
    assert list(batch) == events and batch[17] == events[17]
    assert list(batch.take([5, 3, 5])) == [events[5], events[3], events[5]]
    assert list(batch[10:20:3]) == events[10:20:3]
    for event in events:  # as validation makes it of its message: even the fields given
        made = assemble_event(*(getattr(event, name) for name in (
            "event_id", "user_id", "ts", "event_type", "item_id", "session_id", "value",
            "context", "source")))  # fmt: skip
        decoded = decode_event(event.to_json())
        assert made == decoded and made.to_json() == decoded.to_json()
        assert made.__pydantic_fields_set__ == decoded.__pydantic_fields_set__


@pytest.mark.parametrize("session", [None, "s:1", "mixed"])
def test_a_column_with_one_text_or_none_reads_the_same(session: str | None) -> None:
    """A column that is one text in every row (a batch's source) or absent in every row (a
    MovieLens batch's session ids) is read as one object repeated: still each row's value,
    and one that differs, even in its last byte or by being absent, is its own."""
    rng = random.Random(11)
    events = [
        Event(event_id=f"e:{k}", user_id=rng.choice(["u1", "9"]), ts=1_700_000_000_000 + k,
              event_type=EventType.RATING, item_id=str(rng.randint(1, 99)),
              session_id=f"s{k % 3}" if session == "mixed" else session,
              value=rng.randint(0, 20) / 2, source="movielens")
        for k in range(300)
    ]  # fmt: skip
    batch, _, errors = read_events([e.to_json() for e in events])
    assert errors == [] and list(batch) == [decode_event(e.to_json()) for e in events]
    assert batch.sources[0] is batch.sources[-1]  # one object: the shortcut was taken
    if session == "s:1":
        assert batch.session_ids[0] is batch.session_ids[-1]
    for last in ({"source": "movielenz"}, {"session_id": None}, {"session_id": "s:2"}):
        changed = [*events[:-1], events[-1].model_copy(update=last)]
        batch, _, _ = read_events([e.to_json() for e in changed])
        assert list(batch) == [decode_event(e.to_json()) for e in changed]


def test_items_by_user_from_the_codes_is_what_the_rows_give() -> None:
    """The batch's read set (each user's items, users in first-row order, every item) from the
    reader's codes equals the one made row by row, with users that have no item in some or
    all of their rows, and an item shared by users."""
    rng = random.Random(11)
    events = [
        Event(event_id=f"e:{k}", user_id=rng.choice(["u1", "9", "u10", "u", "solo"]),
              ts=1_700_000_000_000 + k, event_type=EventType.PAGE_VIEW,
              item_id=rng.choice([None, "31", "3", "13", "/pricing"]), source="synthetic")
        for k in range(300)
    ] + [Event(event_id="e:last", user_id="no-items", ts=1_700_000_001_000,
               event_type=EventType.PAGE_VIEW, source="synthetic")]  # fmt: skip
    batch, _, errors = read_events([e.to_json() for e in events])
    assert errors == [] and batch.codes is not None
    by_rows: dict[str, set[str]] = {}
    for e in events:
        by_rows.setdefault(e.user_id, set()).update([e.item_id] if e.item_id else [])
    by_user, items = batch.items_by_user()
    assert list(by_user.items()) == list(by_rows.items()) and by_user["no-items"] == set()
    assert items == {e.item_id for e in events if e.item_id}
    assert dataclasses.replace(batch, codes=None).items_by_user() == (by_user, items)


def test_the_id_codes_number_each_distinct_id_by_its_first_row() -> None:
    """The reader's `CodedColumns`: each distinct user, item and session id once, in the order
    of its first row, and each row's code (-1: none), as a dict built over the columns would
    give them; a batch with a row the reader declined (validation wrote it in) has none."""
    rng = random.Random(5)
    events = [
        Event(event_id=f"e:{k}", user_id=rng.choice(["u1", "9", "u10", "u", "x" * 256]),
              ts=1_700_000_000_000 + k, event_type=(kind := rng.choice(list(EventType))),
              item_id=rng.choice([None, "31", "3", "13", "/pricing", "i" * 256]),
              value=rng.choice([4.5, 0.0]) if kind is EventType.RATING else rng.choice([None, 2.0]),
              session_id=rng.choice([None, "s:1", "20", "s" * 256]), source="synthetic")
        for k in range(500)
    ]  # fmt: skip
    batch, _, errors = read_events([e.to_json() for e in events])
    assert errors == [] and batch.codes is not None
    for ids, names, codes in [
        (batch.user_ids, batch.codes.users, batch.codes.user_codes),
        (batch.item_ids, batch.codes.items, batch.codes.item_codes),
        (batch.session_ids, batch.codes.sessions, batch.codes.session_codes),
    ]:
        distinct = list(dict.fromkeys(i for i in ids if i is not None))
        assert names == distinct
        assert codes is not None and codes.tolist() == [
            -1 if i is None else distinct.index(i) for i in ids
        ]
    alone = events[0].model_copy(update={"item_id": None, "session_id": None})
    none, _, _ = read_events([alone.to_json()])  # no item, no session: no names at all
    assert none.codes is not None and none.codes.items == [] and none.codes.sessions == []
    types = list(EventType)
    assert [types[k] for k in batch.codes.type_index.tolist()] == batch.event_types
    assert batch.codes.ts.tolist() == batch.ts
    assert [None if v != v else v for v in batch.codes.values.tolist()] == batch.values
    assert batch.take(range(10)).codes is None  # rows taken: made again where wanted
    spaced = orjson.dumps(orjson.loads(events[3].to_json()), option=orjson.OPT_INDENT_2)
    batch, _, errors = read_events([e.to_json() for e in events[:3]] + [spaced])
    assert errors == [] and batch.codes is None and batch[3] == events[3]


def test_the_reader_s_context_facts_are_those_of_the_contexts() -> None:
    """The facts the fold reads from the reader's entry table (`CodedColumns.context_facts`)
    are `_context_facts` of each event's context, bit for bit: texts, ints, floats (negative,
    zero of either sign, large), bools, keys repeated across events and absent."""
    rng = random.Random(13)
    choices: dict[str, list[Any]] = {
        "device": ["mobile", "desktop", "tv", "", 3, True, 0.5],
        "account_balance": [517.97, -0.5, 0, -7, 0.0, -0.0, True, False, "rich", 2**50,
                            12.25, 3, 123456789.125],
        "browsing_depth": [3, 2.5, True, False, "deep", -1, -0.0, 0],
        "region": ["eu", 4],
    }  # fmt: skip
    events = []
    for k in range(2000):
        keys = rng.sample(sorted(choices), rng.randint(0, 4))
        context = {key: rng.choice(choices[key]) for key in keys} if rng.random() < 0.8 else None
        events.append(Event(event_id=f"e{k}", user_id=f"u{k % 40}", ts=MIN_TS_MS + k,
                            event_type=EventType.PAGE_VIEW, item_id="/pricing", context=context,
                            source="synthetic"))  # fmt: skip
    batch, rows, errors = read_events([e.to_json() for e in events])
    assert errors == [] and rows == list(range(len(events)))
    assert batch.codes is not None and batch.codes.context_facts is not None  # read it itself
    want = np.array([_context_facts(e.context or {}) for e in events], dtype=np.float64)
    assert batch.codes.context_facts.tobytes() == want.tobytes()  # (-0.0 is not 0.0 here)
    ts = np.array([e.ts for e in events], dtype=np.int64)
    assert np.array_equal(context_columns(batch.contexts, ts, batch.codes.context_facts),
                          context_columns(batch.contexts, ts))  # fmt: skip


def test_rows_taken_from_a_read_batch_keep_their_contexts_unmade_until_read() -> None:
    contexts = [None, {}, {"device": "tv", "n": 3, "on": True, "x": 1.5}, {"page": "/p"}]
    messages = [CANONICAL.replace(b'"value":2.5', b'"value":2.5,"context":' + orjson.dumps(c))
                if c is not None else CANONICAL for c in contexts * 75]  # fmt: skip
    events = [decode_event(m) for m in messages]
    batch, rows, errors = read_events(messages)
    assert errors == [] and rows == list(range(300))
    assert isinstance(batch.contexts, ReadContexts)
    picked = [250, 3, 3, 0, 299]
    taken = batch.take(picked)
    assert isinstance(taken.contexts, ReadContexts)  # a subset: no dict made yet
    assert list(taken) == [events[r] for r in picked]
    assert list(batch.take([]).contexts) == []
