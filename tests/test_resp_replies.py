"""consumer/resp_replies.py: replies kept as bytes and spans are exactly what hiredis reads,
however the bytes arrive; replies of another shape, and errors, are read by hiredis as
before; a batch's warm read from spans fills the tables as the general path does."""

from __future__ import annotations

from typing import Any

import hiredis
import numpy as np
import orjson
import pytest
import redis
from redis._parsers import _RESP2Parser

from consumer import resp_replies
from consumer.local_state import LocalState
from consumer.redis_commands import CommandList, pairs
from consumer.resp_replies import RawReplies, _scan, _spans
from consumer.store import RedisStateStore, warm_up
from engage.redis_client import connect
from engage.settings import Settings
from features import keys, recent_ids
from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.state_codec import STATE_FIELD, StateFormatError, encode_user
from features.stream import StreamState


def resp(reply: list[bytes | None]) -> bytes:
    """A RESP2 array of bulk strings (None: nil), as Redis sends it."""
    out = b"*%d\r\n" % len(reply)
    for value in reply:
        out += b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)
    return out


REPLIES: list[list[bytes | None]] = [
    [b"st", b"\x01\r\n*2\r\n$3\r\n", b"cs_id", b"s-1", b"seen", b""],
    [],
    [b"a", "東京".encode(), b""],
    [b"x" * 300, None, b"\n"],
    [None],
]


def test_replies_scanned_in_any_pieces_are_the_replies_hiredis_reads() -> None:
    """`_scan` resumes at the last whole reply whatever piece of the bytes it was given,
    and the spans of the whole replies are the values hiredis reads from the same bytes."""
    data = b"".join(map(resp, REPLIES))
    buffer = np.frombuffer(data, np.uint8)
    n = len(REPLIES)
    for cut in range(len(data) + 1):
        pos, done, values, other = _scan(buffer, cut, 0, n)
        assert not other and done <= n and pos <= cut
        assert (done == n) == (cut == len(data))
        rest = _scan(buffer, len(data), pos, n - done)
        assert rest[0] == len(data) and done + rest[1] == n and not rest[3]
        assert values + rest[2] == sum(map(len, REPLIES))
    first, offsets, starts, sizes = _spans(buffer, n, sum(map(len, REPLIES)))
    raw = RawReplies(data, first, offsets, starts, sizes)
    reader = hiredis.Reader()
    reader.feed(data)
    assert raw.every() == [reader.gets() for _ in range(n)] == REPLIES
    assert raw.every(texts=range(2, 3))[2] == ["a", "東京", ""]
    spans, other = raw.hash_fields(0, 2, ("st", "seen", "cs_id", "absent"))
    assert other.tolist() == [0, 0]
    assert raw.values(spans[0]) == [REPLIES[0][1], b"", b"s-1", b""]
    assert raw.texts(spans[0]) == [REPLIES[0][1].decode(), "", "s-1", None]  # type: ignore[union-attr]
    assert (spans[1] == -1).all() and raw.counts(0, n).tolist() == [6, 0, 3, 3, 1]
    assert raw.hash_fields(0, 1, ("st",))[1].tolist() == [2]  # cs_id, seen: no name of these


@pytest.mark.parametrize(
    "data",
    [b"+OK\r\n", b"-ERR no\r\n", b":1\r\n", b"$3\r\nabc\r\n", b"*1\r\n*0\r\n", b"%1\r\n",
     b"*1\r\n:1\r\n", b"*1\r\n$3\r\nabcXY", b"*x\r\n", b"*1\r\n$-2\r\n"],
)  # fmt: skip
def test_a_reply_of_another_shape_is_left_to_hiredis(data: bytes) -> None:
    buffer = np.frombuffer(resp([b"ok"]) + data, np.uint8)
    pos, done, _values, other = _scan(buffer, len(buffer), 0, 2)
    assert (pos, done, other) == (len(resp([b"ok"])), 1, True)


def _client(settings: Settings, kind: str) -> redis.Redis:
    options: dict[str, Any] = {
        "resp2": {"protocol": 2}, "resp3": {"protocol": 3}, "decoded": {"decode_responses": True},
        "no hiredis": {"parser_class": _RESP2Parser, "protocol": 2},
    }[kind]  # fmt: skip
    return connect(settings, **options)


@pytest.mark.parametrize("kind", ["resp2", "resp3", "decoded", "no hiredis"])
def test_a_read_as_spans_returns_what_run_returns(settings: Settings, kind: str) -> None:
    """Hashes with values that look like RESP, sets, nils, a value of 3 MiB (the buffer
    grows), on every kind of client: `read` gives `run`'s replies (as spans where the
    connection allows: hiredis, bytes), and the connection serves the next call."""
    client = _client(settings, kind)
    client.hset("r:h:{1}", mapping={"st": b"\x01\r\n*2\r\n$3\r\n", "cs_id": "s", "seen": b""})
    client.hset("r:h:{2}", mapping={"big": "é" * (3 << 19)})
    client.sadd("r:s:{1}", "a", "東京", "")
    cmds = CommandList()
    cmds.add_columns("HGETALL", ["r:h:{1}", "r:h:{2}", "r:none:{1}"])
    cmds.add_columns("SMEMBERS", ["r:s:{1}", "r:none:{1}"])
    cmds.add("HMGET", "r:h:{1}", "cs_id", "nope")
    for _ in range(2):
        got = cmds.read(client, texts=range(3, 5))
        want = cmds.run(client, texts=range(3, 5))
        spans = kind in ("resp2", "resp3")
        assert isinstance(got, RawReplies) == spans
        replies = got.every(texts=range(3, 5)) if isinstance(got, RawReplies) else got
        assert len(replies) == len(want) == 6
        assert [pairs(r) for r in replies[:3]] == [pairs(r) for r in want[:3]]
        assert [sorted(r) for r in replies[3:5]] == [sorted(r) for r in want[3:5]]
        assert replies[5] == want[5]
    assert client.ping()
    client.delete("r:h:{1}", "r:h:{2}", "r:s:{1}")
    client.close()


@pytest.mark.parametrize("kind", ["resp2", "resp3"])
def test_an_error_or_another_shape_among_the_replies_reads_as_before(
    settings: Settings, kind: str
) -> None:
    """A GET among the reads (a bulk string, not an array) gives `run`'s list; a WRONGTYPE
    error is raised as `run` raises it; in pieces of 7 bytes too; the connection stays
    usable."""
    client = _client(settings, kind)
    client.set("r:t:{1}", "text")
    client.hset("r:h:{1}", mapping={"a": "1"})
    shaped = CommandList()
    shaped.add("HGETALL", "r:h:{1}")
    shaped.add("GET", "r:t:{1}")
    shaped.add("HGETALL", "r:h:{1}")
    wrong = CommandList()
    wrong.add("HGETALL", "r:h:{1}")
    wrong.add("HGETALL", "r:t:{1}")
    connection = client.connection_pool.get_connection()
    real = connection._parser._sock

    pieces: list[int] = []

    class Trickle:  # the bytes arrive 7 at a time
        def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
            pieces.append(1)
            return real.recv_into(buffer, 7)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    for trickle in (False, True):
        if trickle:
            connection._parser._sock = Trickle()
        client.connection_pool.release(connection)
        got = shaped.read(client)
        assert not isinstance(got, RawReplies)
        assert [pairs(got[0]), got[1], pairs(got[2])] == [{b"a": b"1"}, b"text", {b"a": b"1"}]
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            wrong.read(client)
        plain = CommandList()
        plain.add("HGETALL", "r:h:{1}")
        assert pairs(plain.read(client).every()[0]) == {b"a": b"1"}  # type: ignore[union-attr]
        connection = client.connection_pool.get_connection()
    assert len(pieces) > 10  # (the same connection, read by the piece)
    connection._parser._sock = real
    client.connection_pool.release(connection)
    assert client.get("r:t:{1}") == b"text"
    client.close()


def _warm_load(
    settings: Settings, users: list[str], spans: bool
) -> tuple[RedisStateStore, StreamState]:
    """`users` loaded into a trusted store's tables (the warm path), from spans or not."""
    store = RedisStateStore(connect(settings), settings.events_topic, 3600, LocalState(100, 100))
    store.own(True)
    state = store.state(FeatureParams(), AdmissionPolicy())
    batch = store.begin([])
    with pytest.MonkeyPatch.context() as patch:
        if not spans:
            patch.setattr(resp_replies, "reads_raw", lambda connection: False)
        batch.load(state, {u: set() for u in users}, set())
    return store, state


def test_a_warm_read_from_spans_fills_the_tables_as_the_general_path(settings: Settings) -> None:
    """Users with a state, a session, recent ids (this codec's and the older JSON form),
    and none: the tables, recent ids, item sets and committed states read from spans are the
    general path's; a hash of the per-field format is refused as before."""
    client = connect(settings)
    digests = np.array([(7, 1.5), (9, 2.5)], dtype=recent_ids.PAIR)
    states = {
        "a": {**encode_user({"n": 3.0, "last_ts": 9.0}), "cs_id": "s-a",
              recent_ids.FIELD: recent_ids.pack(digests)},
        "b": {**encode_user({}), recent_ids.FIELD: b""},
        "c": {**encode_user({"n": 1.0}), recent_ids.FIELD: orjson.dumps([["e1", 4.0]])},
    }  # fmt: skip
    for user, fields in states.items():
        client.hset(keys.user_key(user), mapping=fields)  # type: ignore[arg-type]
    client.sadd(keys.user_items_key("a"), "i1", "東京")
    for users in (["a", "b", "new"], ["a", "b", "c", "new"]):  # spans; the general path for c
        (one, spanned), (_, general) = (_warm_load(settings, users, s) for s in (True, False))
        for user in users:
            assert spanned.tables.export_user(user) == general.tables.export_user(user)
            assert spanned.recent[user] == general.recent[user]
            assert spanned.tables.user_items[user] == general.tables.user_items[user]
        assert spanned.tables.user_items["a"] == {"i1", "東京"}
        assert spanned.recent["a"] == recent_ids.pack(digests) and spanned.recent["new"] == b""
        assert one.local.committed["a"] == states["a"][STATE_FIELD]
        assert one.local.committed["new"] == b""
        assert spanned.tables.cs_id[spanned.tables.user_index["a"]] == "s-a"
    client.hset(keys.user_key("old"), mapping={"n": "3.0"})
    with pytest.raises(StateFormatError, match="without a packed state"):
        _warm_load(settings, ["a", "old"], True)
    client.close()


def test_a_sample_reply_is_read_as_hiredis_reads_it_and_warms_the_batch_read() -> None:
    raw = resp_replies.sample({"st": b"\x01\r\n", "cs_id": b"s"})
    assert raw.every() == [[b"st", b"\x01\r\n", b"cs_id", b"s"]] and len(raw) == 1
    warm_up()  # (the consumer's start: the compiled read loaded, with the batch's types)
