"""consumer/redis_commands.py: a CommandList runs exactly the commands it names, in order, one
reply per key, including EACH entries (one command over many keys with a shared argument) and
ROWS entries (the same fields set in many hashes); and
`exec_transaction` runs MULTI ... EXEC as redis-py's transactional pipeline would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import pytest
import redis

from consumer.redis_commands import (
    MAX_ARGS,
    CommandList,
    _packed,
    as_they_are,
    coalesced,
    exec_transaction,
    pairs,
)


@contextmanager
def _connection(client: redis.Redis) -> Iterator[Any]:
    connection = client.connection_pool.get_connection()
    try:
        yield connection
    finally:
        client.connection_pool.release(connection)


@pytest.mark.stack
def test_commands_and_each_entries_run_in_order_with_one_reply_per_key(
    redis_client: redis.Redis,
) -> None:
    redis_client.hset("h:{1}", "p0", b"old")
    cmds = CommandList()
    cmds.add("SET", "s:{1}", "a")
    cmds.add_each("HSET", ["h:{1}", "h:{2}", "h:{3}"], "p0", [b"one", b"\x00two", b"three"])
    cmds.add("HGETALL", "h:{2}")
    cmds.add_each("HSET", ["h:{2}"], "p1", [b"four"])
    cmds.add("GET", "missing:{1}")
    cmds.add_mapping("HSET", "h:{3}", {"p1": b"five", "p2": b"six"})
    cmds.add("HGETALL", "h:{3}")
    cmds.add_rows("HSET", ["r:{1}", "h:{3}"], ["a", "p2"], [[b"1", 2.5], [b"x", b"seven"]])
    cmds.add("HGETALL", "r:{1}")
    replies = cmds.run(redis_client)
    assert len(replies) == len(cmds) == 12
    assert replies[:4] == [b"OK", 0, 1, 1]  # p0 of h:{1} existed: 0 fields added
    assert pairs(replies[4]) == {b"p0": b"\x00two"}  # (a map in RESP3, a list in RESP2)
    assert replies[5:8] == [1, None, 2]
    assert pairs(replies[8]) == {
        b"p0": b"three", b"p1": b"five", b"p2": b"six"
    }  # fmt: skip
    assert replies[9:11] == [2, 1]  # a row is one command: its reply is the fields it added
    assert pairs(replies[11]) == {b"a": b"1", b"p2": b"2.5"}
    with _connection(redis_client) as used:  # the pooled connection `run` used: its protocol
        used.send_command("HGETALL", "h:{1}")  # is back as redis-py negotiated it
        back = used.read_response()
        assert isinstance(back, dict if str(used.protocol) == "3" else list), back
    assert redis_client.hgetall("h:{1}") == {b"p0": b"one"}
    assert redis_client.hgetall("h:{2}") == {b"p0": b"\x00two", b"p1": b"four"}
    assert redis_client.hgetall("h:{3}") == {b"p0": b"three", b"p1": b"five", b"p2": b"seven",
                                             b"a": b"x"}  # fmt: skip


def test_sets_of_members_are_the_commands_add_members_makes_key_by_key() -> None:
    """`add_sets` (SADD of each user's new items) splits a long list as `add_members` does."""
    keys = ["u:{a}:items", "u:{b}:items", "u:{c}:items", "u:{d}:items", "u:{e}:items"]
    members = [["i1"], [f"i{k}" for k in range(MAX_ARGS + 5)], [], ["x", "y"], ["東京"]]
    together, one_by_one = CommandList(), CommandList()
    together.add_sets("SADD", keys, members)
    for key, its in zip(keys, members, strict=True):
        if its:
            one_by_one.add_members("SADD", key, its)
    assert together.commands() == one_by_one.commands() and len(together) == len(one_by_one) == 5
    assert together.plain() == one_by_one.plain()
    with pytest.raises(ValueError, match="FLUSHALL"):
        CommandList().add_sets("FLUSHALL", ["a"], [["m"]])


def test_a_transactions_own_commands_are_packed_as_redis_py_packs_them() -> None:
    """`exec_transaction` packs its argument tuples (the leaderboard's ZADD, offsets, stats,
    live values, the live view's PUBLISH) with hiredis: the bytes redis-py's packer makes;
    what hiredis refuses goes to redis-py's, which refuses it as before."""
    connection = redis.Redis().connection_pool.make_connection()  # (packs; never connects)
    commands = [
        ("ZADD", "lb:{rule}", 1.5, "é", -0.0, "m", float("inf"), "x", 10**30, "y", 33.33, "z"),
        ("SET", "o:t:3", 12345),
        ("HINCRBY", "st:t", "processed", -4),
        ("SET", "live", b"\x00\r\n\xff" * 1000),
        ("PUBLISH", "c", memoryview(b"[1]")),
    ]
    for command in commands:
        assert b"".join(_packed(connection, command)) == b"".join(connection.pack_command(*command))
    for refused in (True, None):
        with pytest.raises(redis.DataError):
            _packed(connection, ("SET", "k", refused))


@pytest.mark.stack
def test_a_plain_list_in_a_transaction_writes_what_run_writes(
    redis_client: redis.Redis,
) -> None:
    """`plain` (the commit's writes) runs the same commands inside MULTI/EXEC, a reply each."""

    def commands() -> CommandList:
        cmds = CommandList()
        cmds.add("SET", "q:s:{1}", "a")
        cmds.add_each("HSET", ["q:h:{1}", "q:h:{2}"], "p0", [b"one", b"two"])
        cmds.add_mapping("HSET", "q:h:{3}", {"p1": b"five", "p2": b"six"})
        cmds.add("EXPIRE", "q:h:{3}", 60)
        cmds.add("DEL", "q:gone:{1}")
        cmds.add_rows("HSET", ["q:r:{1}", "q:r:{2}"], ["f", "g"], [["1", 2], [3.5, b"4"]])
        return cmds

    keys = ["q:s:{1}", "q:h:{1}", "q:h:{2}", "q:h:{3}", "q:r:{1}", "q:r:{2}"]
    ran_replies = commands().run(redis_client)
    ran = {k: redis_client.dump(k) for k in keys}
    redis_client.delete(*keys)
    with _connection(redis_client) as connection:
        replies = exec_transaction(connection, [commands().plain(), ("GET", "q:s:{1}")])
    assert replies[:-1] == ran_replies == [b"OK", 1, 1, 2, 1, 0, 2, 2]
    assert replies[-1] == b"a"
    assert {k: redis_client.dump(k) for k in keys} == ran
    assert 0 < redis_client.ttl("q:h:{3}") <= 60


def test_each_needs_a_value_per_key_and_a_known_command() -> None:
    cmds = CommandList()
    with pytest.raises(ValueError, match="one value per key"):
        cmds.add_each("HSET", ["a", "b"], "f", [b"1"])
    with pytest.raises(ValueError, match="FLUSHALL"):
        cmds.add_each("FLUSHALL", ["a"], "f", [b"1"])
    cmds.add_each("HSET", [], "f", [])
    with pytest.raises(ValueError, match="one value per field"):
        cmds.add_rows("HSET", ["a", "b"], ["f", "g"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="one row per key"):
        cmds.add_rows("HSET", ["a", "b"], ["f"], [[1]])
    with pytest.raises(ValueError, match="fields"):
        cmds.add_rows("HSET", ["a"], [], [[]])
    cmds.add_rows("HSET", [], ["f"], [])
    assert len(cmds) == 0 and cmds.commands() == []


@pytest.mark.stack
def test_a_transaction_runs_packed_and_plain_commands_in_order(redis_client: redis.Redis) -> None:
    cmds = CommandList()
    cmds.add_mapping("HSET", "t:h:{1}", {"a": b"1", "b": 2.5})
    with _connection(redis_client) as connection:
        replies = exec_transaction(
            connection, [("SET", "t:s:{1}", 7), cmds.plain(), ("HINCRBY", "t:h:{1}", "n", 3)]
        )
        assert replies == [b"OK", 2, 3]
        assert exec_transaction(connection, []) == []
        assert connection.is_connected  # in step: the next command reads its own reply
    assert redis_client.get("t:s:{1}") == b"7"
    assert redis_client.hgetall("t:h:{1}") == {b"a": b"1", b"b": b"2.5", b"n": b"3"}


def test_pieces_are_sent_in_order_small_ones_joined() -> None:
    big = b"x" * (64 * 1024)
    pieces = [b"a", b"b", big, b"c", big + b"y", b"d", b"e"]
    sent = coalesced(pieces)
    assert b"".join(sent) == b"".join(pieces)
    assert sent == [b"ab", big, b"c", big + b"y", b"de"]
    assert coalesced([]) == [] and coalesced([b"a", b"b"]) == [b"ab"]


@pytest.mark.stack
def test_large_values_among_small_commands_land_whole(redis_client: redis.Redis) -> None:
    """A transaction and a run whose commands are large and small pieces, sent apart."""
    cmds = CommandList()
    values = [bytes([k]) * (70_000 + k) for k in range(3)]
    cmds.add_columns("SET", ["t:big:{1}", "t:big:{2}", "t:big:{3}"], values)
    cmds.add("SET", "t:small:{1}", "s")
    cmds.add_columns("SET", ["t:big:{4}"], [b"z" * 200_000])
    with _connection(redis_client) as connection:
        replies = exec_transaction(connection, [("SET", "t:first:{1}", 1), cmds.plain()])
    assert replies == [b"OK"] * 6
    got = redis_client.mget(["t:big:{1}", "t:big:{2}", "t:big:{3}", "t:small:{1}", "t:big:{4}"])
    assert got == [*values, b"s", b"z" * 200_000]
    reads = CommandList()
    reads.add_columns("GET", ["t:big:{1}", "t:small:{1}", "t:big:{4}"])
    assert reads.run(redis_client) == [values[0], b"s", b"z" * 200_000]


def test_a_command_framed_around_its_arguments_is_what_hiredis_packs() -> None:
    """`as_they_are` frames a command around its arguments without copying them: joined, its
    pieces are hiredis's bytes, and a large argument is one of the pieces itself."""
    big = b"x\r\n" * 100_000
    for args in [("ch", b"m"), ("ch\u00e9", big), ("k", "v\u00e9", b"")]:
        packed = as_they_are("PUBLISH" if len(args) == 2 else "SET", *args)
        command = ("PUBLISH" if len(args) == 2 else "SET", *args)
        assert b"".join(packed.parts) == hiredis.pack_command(command)
        assert packed.count == 1
    assert any(part is big for part in as_they_are("PUBLISH", "ch", big).parts)


@pytest.mark.stack
def test_a_large_message_published_in_a_transaction_arrives_whole(
    redis_client: redis.Redis,
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe("t:live:{1}")
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        message = b'{"user_id":"u"}' * 40_000  # ~600 KB: sent apart, as it is
        with _connection(redis_client) as connection:
            publish = as_they_are("PUBLISH", "t:live:{1}", message)
            replies = exec_transaction(connection, [("SET", "t:p:{1}", 1), publish])
        assert replies == [b"OK", 1]
        got = pubsub.get_message(timeout=5)
        assert got is not None and got["data"] == message
    finally:
        pubsub.close()


@pytest.mark.stack
def test_a_transaction_after_a_watched_key_changed_applies_nothing(
    redis_client: redis.Redis,
) -> None:
    pipe = redis_client.pipeline(transaction=True)
    pipe.watch("t:w:{1}")
    redis_client.set("t:w:{1}", "moved")  # another client
    with pytest.raises(redis.WatchError):
        exec_transaction(pipe.connection, [("SET", "t:x:{1}", 1)])
    pipe.reset()
    assert redis_client.get("t:x:{1}") is None


@pytest.mark.stack
def test_a_transaction_raises_the_error_a_command_met(redis_client: redis.Redis) -> None:
    redis_client.set("t:str:{1}", "a string")
    with _connection(redis_client) as connection:
        # refused when queued (wrong arity): EXEC aborts, nothing applies, the error says why
        with pytest.raises(redis.ResponseError, match="wrong number of arguments") as refused:
            exec_transaction(connection, [("SET", "t:y:{1}", 1), ("SET", "t:y:{1}")])
        assert not isinstance(refused.value, redis.exceptions.ExecAbortError)
        assert redis_client.get("t:y:{1}") is None
        # failed when run (a hash command on a string): the others ran, as Redis does
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            exec_transaction(connection, [("HSET", "t:str:{1}", "f", 1), ("SET", "t:z:{1}", 2)])
        assert redis_client.get("t:z:{1}") == b"2"
        assert exec_transaction(connection, [("GET", "t:z:{1}")]) == [b"2"]  # still in step


@pytest.mark.stack
@pytest.mark.parametrize("bad_at", [0, 2_999, 5_999, None])
def test_many_queued_replies_are_read_as_bytes_and_an_error_among_them_still_raises(
    redis_client: redis.Redis, bad_at: int | None
) -> None:
    """MULTI's and the QUEUED replies are read as bytes (~54 KB for 6,000 commands: several
    reads) and compared with success's: a command refused when queued, first, deep inside or
    last, is still the error raised, nothing applies, and the connection stays in step."""
    commands: list[tuple[Any, ...]] = [("SET", f"t:q{i}:{{1}}", i) for i in range(6_000)]
    if bad_at is not None:
        commands[bad_at] = ("SET", "t:bad:{1}")  # wrong arity: refused when queued
    with _connection(redis_client) as connection:
        if bad_at is None:
            assert exec_transaction(connection, commands) == [b"OK"] * 6_000
            assert redis_client.get("t:q5999:{1}") == b"5999"
        else:
            with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
                exec_transaction(connection, commands)
            assert redis_client.get("t:q1:{1}") is None
        assert exec_transaction(connection, [("GET", "t:q0:{1}")]) == [
            b"0" if bad_at is None else None
        ]  # still in step


_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1])
return 1
"""


@pytest.mark.stack
def test_a_transaction_held_past_the_socket_timeout_raises_a_timeout(
    redis_client: redis.Redis,
) -> None:
    """Redis busy past the client's socket timeout while the QUEUED replies are due: a
    redis TimeoutError, as redis-py's reader raises it (the store takes it for an outcome it
    cannot know), and the connection dropped."""
    pool = redis_client.connection_pool
    slow = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class,
        **{**pool.connection_kwargs, "socket_timeout": 0.1},
    ))  # fmt: skip
    busy = threading.Thread(target=redis_client.eval, args=(_BUSY, 0, 500_000))
    try:
        with _connection(slow) as connection:
            connection.connect()
            busy.start()
            time.sleep(0.1)  # (the script runs)
            with pytest.raises(redis.TimeoutError, match="Timeout reading from socket"):
                exec_transaction(connection, [("SET", f"t:h{i}:{{1}}", i) for i in range(10)])
            assert connection._sock is None  # dropped: its replies' state is unknown
    finally:
        busy.join()
        slow.close()


class _HoldingReader:
    """hiredis's reader, saying it holds bytes (as it would with a reply read ahead)."""

    def __init__(self, reader: Any) -> None:
        self.reader, self.replies = reader, 0

    def has_data(self) -> bool:
        return True

    def gets(self, *args: Any) -> Any:
        self.replies += 1
        return self.reader.gets(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


@pytest.mark.stack
def test_queued_replies_are_left_to_the_reader_when_it_holds_bytes(
    redis_client: redis.Redis,
) -> None:
    """Bytes the reader holds come before any read from the socket: then the QUEUED replies
    are not read around it, but through it, one by one, as before."""
    with _connection(redis_client) as connection:
        connection.connect()
        parser = connection._parser
        parser._reader = _HoldingReader(parser._reader)
        try:
            commands = [("SET", "t:r:{1}", 1), ("GET", "t:r:{1}"), ("SET", "t:r:{1}")]
            with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
                exec_transaction(connection, commands)
            before = parser._reader.replies
            assert exec_transaction(connection, commands[:2]) == [b"OK", b"1"]
            assert parser._reader.replies - before >= 4  # MULTI's, two QUEUED, EXEC's
        finally:
            if isinstance(parser._reader, _HoldingReader):
                parser._reader = parser._reader.reader


@pytest.mark.stack
def test_a_run_survives_a_dropped_connection_and_an_error_reply(
    redis_client: redis.Redis,
) -> None:
    """`run` sends its packed call on a pooled connection: one the server dropped while it
    sat in the pool is replaced, and an error reply is raised with the connection left
    usable for the next call."""
    redis_client.set("r:s:{1}", "a")
    cmds = CommandList()
    cmds.add("GET", "r:s:{1}")
    assert cmds.run(redis_client) == [b"a"]
    with _connection(redis_client) as used:  # the pooled connection `run` used
        used.send_command("CLIENT", "ID")
        own = used.read_response()
        with _connection(redis_client) as other:
            other.send_command("CLIENT", "KILL", "ID", own)
            assert other.read_response() == 1
    assert cmds.run(redis_client) == [b"a"]  # reconnected
    redis_client.set("r:t:{1}", "text")
    wrong = CommandList()
    wrong.add("HGETALL", "r:t:{1}")  # a string, not a hash: WRONGTYPE
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        wrong.run(redis_client)
    assert cmds.run(redis_client) == [b"a"]


@pytest.mark.stack
@pytest.mark.parametrize("kind", ["pooled", "resp2", "resp3", "single connection", "no hiredis"])
def test_replies_asked_as_texts_come_decoded_and_the_rest_as_bytes(
    settings: Any, kind: str
) -> None:
    """`run(texts=...)`: the item sets (SMEMBERS) come back as str, decoded by hiredis's
    reader as it reads them, on every path (RESP2, RESP3 bracketed to RESP2, a pipeline, no
    hiredis); the replies before and after them stay bytes, and the reader of the pooled
    connection is left decoding nothing."""
    from redis._parsers import _RESP2Parser

    from engage.redis_client import connect

    options: dict[str, Any] = {
        "pooled": {}, "resp2": {"protocol": 2}, "resp3": {"protocol": 3},
        "single connection": {"single_connection_client": True},
        "no hiredis": {"parser_class": _RESP2Parser, "protocol": 2},
    }[kind]  # fmt: skip
    client = connect(settings, **options)
    client.delete("t:h:{1}", "t:s:{1}", "t:s:{2}", "t:s:{3}")
    client.hset("t:h:{1}", mapping={"st": b"\xff\x00bin"})
    client.sadd("t:s:{1}", "a", "東京", "")
    client.sadd("t:s:{3}", "x")
    for _ in range(2):  # twice: the second run on the connection the first one gave back
        cmds = CommandList()
        cmds.add_columns("HGETALL", ["t:h:{1}"])
        cmds.add_columns("SMEMBERS", ["t:s:{1}", "t:s:{2}", "t:s:{3}"])
        cmds.add_columns("HGETALL", ["t:h:{1}"])
        replies = cmds.run(client, texts=range(1, 4))
        assert pairs(replies[0]) == pairs(replies[4]) == {b"st": b"\xff\x00bin"}
        assert sorted(replies[1]) == ["", "a", "東京"] and replies[2] == [] and replies[3] == ["x"]
    assert client.smembers("t:s:{3}") == {b"x"}  # the connection's replies are bytes again
    client.delete("t:h:{1}", "t:s:{1}", "t:s:{3}")
    client.close()
