"""Many Redis commands sent as one write: a list of (command, key, arguments), pipelined.

Why: redis-py spends ~9 us of client CPU per command in a pipeline (building the command
object, packing it, parsing and post-processing its reply), and a batch sends two or three
commands per item and per user it touches: about 1.5 commands per event on MovieLens, more
than everything else the store does. Here the list is packed by hiredis (commands of one
shape repeated, from columns by compiled code: consumer/resp_frames.py) and its replies are
taken from hiredis's reader as they arrive: ~0.9 us of client CPU a read, ~1.5 a write.

The commands go as themselves, not inside a server-side script: Redis spent ~2.5 us more on
each command called from a Lua runner script (its arguments and replies converted to and
from Lua) than on the same command sent plainly, a third of its CPU on a 1M-event run. A
batch's reads need no snapshot (its fence WATCHes the offsets that every state write moves);
its writes go inside MULTI/EXEC (`exec_transaction`), so they land with the offsets or not at
all. Single node only: the keys of one list may lie in any slot (a Redis Cluster store groups
commands by slot instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA

from consumer import resp_frames, resp_replies
from consumer.resp_frames import Column, Same

#: The commands a list may hold: what the store reads and writes, nothing else.
ALLOWED = frozenset(
    {"HGETALL", "HMGET", "SMEMBERS", "SMISMEMBER", "GET", "HSET", "SADD", "SET", "DEL", "EXPIRE"}
)
#: Longer member lists are split (the Cluster store's scripts pass them to Lua's `unpack`,
#: bounded by its C stack: 8,000 values).
MAX_ARGS = 4_000


class CommandList:
    """Commands to run in one call, each on one key: each held as its argument tuple, or many
    of one shape as columns (`add_columns`), framed together when packed."""

    def __init__(self) -> None:
        self._commands: list[tuple[Any, ...] | _Columns | _Sets] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, command: str, key: str, *args: Any) -> None:
        _allowed(command)
        self._commands.append((command, key, *args))
        self._count += 1

    def add_mapping(self, command: str, key: str, mapping: dict[str, Any]) -> None:
        """HSET key field value ... (as redis-py's `hset(key, mapping=...)`)."""
        _allowed(command)
        self._commands.append((command, key, *chain.from_iterable(mapping.items())))
        self._count += 1

    def add_columns(self, command: str, keys: Sequence[str], *args: Column) -> None:
        """`command key arg ...` for each key, each argument from its column (a value per
        key, or `Same` for all): framed together (consumer/resp_frames.py)."""
        _allowed(command)
        if any(not isinstance(a, Same) and len(a) != len(keys) for a in args):
            raise ValueError(f"{command}: every column needs one value per key")
        if keys:
            self._commands.append(_Columns(command, (keys, *args)))
            self._count += len(keys)

    def add_each(self, command: str, keys: list[str], shared: Any, values: list[Any]) -> None:
        """`command key shared value` for each key and its value (HSET of one field in many
        hashes: an item shard per item)."""
        self.add_columns(command, keys, Same(shared), values)

    def add_rows(
        self, command: str, keys: list[str], fields: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """`command key field1 value1 ...` for each key and its row of values (HSET of the
        same fields in many hashes: a served score per user), the rows taken as they are (no
        dict walked per user)."""
        _allowed(command)
        if not fields or len(fields) > MAX_ARGS // 2:
            raise ValueError("add_rows needs 1 to MAX_ARGS / 2 fields")
        rows = list(rows)
        if len(rows) != len(keys):
            raise ValueError("add_rows needs one row per key")
        if any(len(row) != len(fields) for row in rows):
            raise ValueError("add_rows needs one value per field in every row")
        values = list(zip(*rows, strict=True)) if rows else [()] * len(fields)
        pairs: list[Column] = []
        for field, column in zip(fields, values, strict=True):
            pairs += (Same(field), column)
        self.add_columns(command, keys, *pairs)

    def add_members(self, command: str, key: str, members: list[str]) -> int:
        """SADD / SMISMEMBER with any number of members, split under MAX_ARGS; returns the
        number of commands added (their replies come one per command)."""
        chunks = [members[i : i + MAX_ARGS] for i in range(0, len(members), MAX_ARGS)]
        for chunk in chunks:
            self.add(command, key, *chunk)
        return len(chunks)

    def add_sets(self, command: str, keys: Sequence[str], members: Iterable[list[str]]) -> None:
        """`add_members` for each key and its members (SADD of each user's new items)."""
        _allowed(command)
        group_keys: list[str] = []
        group: list[list[str]] = []
        for key, its in zip(keys, members, strict=True):
            if 0 < len(its) <= MAX_ARGS:
                group_keys.append(key)
                group.append(its)
                continue
            self._add_sets(command, group_keys, group)  # (in order: what came before)
            group_keys, group = [], []
            self.add_members(command, key, its)  # none for no members; split past MAX_ARGS
        self._add_sets(command, group_keys, group)

    def _add_sets(self, command: str, keys: list[str], members: list[list[str]]) -> None:
        if keys:
            self._commands.append(_Sets(command, keys, members))
            self._count += len(keys)

    def run(self, client: Any, texts: range = range(0)) -> list[Any]:
        """Run the commands now; every command's reply, in order (not atomically: a batch's
        reads need no snapshot, its fence guards them). On a single-node client all in one
        write on a pooled connection, the replies read in one pass, in RESP2 (a hash as its
        field, value list: `pairs`): hiredis makes RESP3's maps at ~1.7 us a reply, RESP2's
        lists at ~0.9 (2,000 item hashes). Retried as redis-py retries a command; an error
        reply is raised once all are read. Any other client: a redis-py pipeline.
        The replies at the positions `texts` (lists of bulk strings: SMEMBERS) come back as
        lists of str, decoded as UTF-8 (by hiredis's reader when it reads them)."""
        if not self._commands:
            return []
        if not isinstance(client, redis.Redis) or client.connection is not None:
            pipe = client.pipeline(transaction=False)
            for command in self.commands():
                pipe.execute_command(*command)
            return _decoded(list(pipe.execute()), texts)
        return run_packed(client, self.plain().parts, self._count, resp2=True, texts=texts)

    def read(self, client: Any, texts: range = range(0)) -> resp_replies.RawReplies | list[Any]:
        """`run`, its replies kept as bytes and spans (`resp_replies.RawReplies`, whose
        `replies` makes them as `run` does) where a single-node client's connection allows
        and every reply is an array of bulk strings; else `run`'s list."""
        if not self._commands:
            return []
        if not isinstance(client, redis.Redis) or client.connection is not None:
            return self.run(client, texts)
        return run_packed(client, self.plain().parts, self._count, resp2=True, texts=texts,
                          raw=True)  # fmt: skip

    def commands(self) -> list[tuple[Any, ...]]:
        """Each command as its argument tuple, in order."""
        out: list[tuple[Any, ...]] = []
        for entry in self._commands:
            if isinstance(entry, tuple):
                out.append(entry)
            else:
                out += entry.tuples()
        return out

    def plain(self) -> PackedCommands:
        """Every command packed for the wire, for `exec_transaction`."""
        packed = [
            hiredis.pack_command(entry) if isinstance(entry, tuple) else entry.framed()
            for entry in self._commands
        ]
        return PackedCommands(coalesced(packed), self._count)


@dataclass(frozen=True, slots=True)
class _Columns:
    """Commands of one shape as columns: `command`, then a value from each column per row
    (the first: the keys)."""

    command: str
    columns: tuple[Column, ...]

    def tuples(self) -> list[tuple[Any, ...]]:
        return [(self.command, *row) for row in resp_frames.rows_of(self.columns)]

    def framed(self) -> bytes:
        return resp_frames.frame(self.command, self.columns)


@dataclass(frozen=True, slots=True)
class _Sets:
    """`command key member ...` for each key and its members (one to MAX_ARGS each)."""

    command: str
    keys: list[str]
    members: list[list[str]]

    def tuples(self) -> list[tuple[Any, ...]]:
        return [(self.command, key, *its) for key, its in zip(self.keys, self.members,
                                                                strict=True)]  # fmt: skip

    def framed(self) -> bytes:
        return resp_frames.frame_sets(self.command, self.keys, self.members)


def _allowed(command: str) -> None:
    if command not in ALLOWED:
        raise ValueError(f"{command} is not a command a CommandList runs")


def run_packed(
    client: redis.Redis, packed: bytes | list[bytes], replies: int | None = None,
    resp2: bool = False, texts: range = range(0), raw: bool = False,
) -> Any:  # fmt: skip
    """One packed command's reply (or the list of `replies` replies of as many packed
    commands, in one or more pieces) on a connection of `client`'s pool, with the client's
    retry policy (a lost connection is dropped and the commands sent again): for commands
    that may run twice, as reads. An error reply is raised after the last reply is read.
    `resp2`: a RESP3 connection answers these commands in RESP2 (HELLO 2 before them, HELLO 3
    after, in the same write: the connection goes back to the pool as it came). `texts`: as
    `CommandList.run`'s. `raw`: as `run_on`'s."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return run_on(connection, packed, replies, resp2, texts, raw)
    finally:
        pool.release(connection)


def run_on(
    connection: Any, packed: bytes | list[bytes], replies: int | None = None,
    resp2: bool = False, texts: range = range(0), raw: bool = False,
) -> Any:  # fmt: skip
    """`run_packed` on one `connection` the caller holds (a WATCHing one: a lost connection
    lost its WATCH too, and the commands, sent again, set it again). `raw`: the `replies`
    replies as `resp_replies.RawReplies` (bytes and spans) where the connection allows and
    every reply is an array of bulk strings; else their list, as without it."""
    bracket = resp2 and replies is not None and str(getattr(connection, "protocol", 2)) == "3"
    pieces = [packed] if isinstance(packed, bytes) else list(packed)
    if bracket:
        pieces = [_HELLO_2, *pieces, _HELLO_3]

    def send() -> Any:
        connection.send_packed_command(coalesced(pieces))
        if replies is None:
            return connection.read_response()
        shift = 1 if bracket else 0
        shifted = range(texts.start + shift, texts.stop + shift)
        if raw and resp_replies.reads_raw(connection):
            got = resp_replies.read_raw(connection, replies, bracket,
                                        lambda: _read_replies(connection, replies + 2 * shift,
                                                              shifted))  # fmt: skip
            if isinstance(got, resp_replies.RawReplies):
                return got
            out = got
        else:
            out = _read_replies(connection, replies + 2 * shift, shifted)
        if bracket:
            out = out[1:-1]
        for reply in out:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return out

    def dropped(_error: Exception) -> None:
        connection.disconnect()

    try:
        return connection.retry.call_with_retry(send, dropped)
    except redis.ResponseError:
        raise  # the whole reply was read: the connection is fine
    except BaseException:
        connection.disconnect()  # mid-reply, perhaps: its protocol state is unknown
        raise


def _reply_or_error(connection: Any) -> Any:
    """One reply; an error reply as its exception, not raised (as hiredis's reader gives it)."""
    try:
        return connection.read_response(disable_decoding=True)
    except redis.ResponseError as exc:
        return exc


_HELLO_2, _HELLO_3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n", b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


def _read_replies(connection: Any, n: int, texts: range = range(0)) -> list[Any]:
    """`n` replies, taken from redis-py's hiredis reader as they arrive (its `read_response`
    costs ~1 us of Python a reply); redis-py's own way without hiredis. The replies at
    `texts` with their bulk strings as str: hiredis's reader decodes them while it reads
    them (its encoding set from the first to the last; `bytes.decode` a member afterwards
    was ~0.05 us, ~10 members a user's item set), else they are decoded afterwards."""
    parser = connection._parser
    reader = getattr(parser, "_reader", None)
    if reader is None or not hasattr(parser, "read_from_socket"):
        return _decoded([_reply_or_error(connection) for _ in range(n)], texts)
    if getattr(connection.encoder, "decode_responses", False):
        texts = range(0)  # (the reader decodes every reply already)
    out: list[Any] = []
    gets, fill, pending = reader.gets, parser.read_from_socket, _NOT_ENOUGH_DATA
    phases = [(texts.start, None), (texts.stop, "utf-8"), (n, None)] if texts else [(n, None)]
    try:
        for upto, encoding in phases:
            if texts:  # (set only between replies: a reply is made as its last byte is read)
                reader.set_encoding(encoding)
            while len(out) < upto:
                reply = gets()
                if reply is pending:
                    fill()
                else:
                    out.append(reply)
    except OSError as exc:  # (redis-py's read_response wraps these; its parser does not)
        raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
    finally:
        if texts:
            reader.set_encoding(None)
    return out


def _decoded(replies: list[Any], texts: range) -> list[Any]:
    """`replies` with the ones at `texts` (lists or sets of bulk strings) as lists of str."""
    for i in texts:
        if isinstance(replies[i], list | set):
            replies[i] = [v.decode() if isinstance(v, bytes) else v for v in replies[i]]
    return replies


#: MULTI's reply and each queued command's, as Redis sends them when nothing failed.
_OK, _QUEUED = b"+OK\r\n", b"+QUEUED\r\n"


def _queued_errors(connection: Any, count: int) -> list[redis.ResponseError]:
    """The error replies among MULTI's and its `count` commands' (none, as a rule). Why:
    a batch queues ~3,500 commands, and each "+QUEUED" read through hiredis is a reply object
    and a Python step (~0.3 us). The replies are read from the socket as bytes and compared
    with what success sends; at the first byte that differs, what was read goes to hiredis's
    reader and the replies are read from it one by one (`_read_replies`). Only the bytes of
    those replies are read: EXEC's reply stays for `read_response`."""
    parser = connection._parser
    reader, sock = getattr(parser, "_reader", None), getattr(parser, "_sock", None)
    if reader is None or sock is None or reader.has_data():
        queued = _read_replies(connection, count + 1)
    else:
        expected = memoryview(_OK + _QUEUED * count)
        buffer = bytearray(len(expected))
        view, got = memoryview(buffer), 0
        try:
            while got < len(buffer):
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise redis.ConnectionError("Connection closed by server.")
                if view[got : got + n] != expected[got : got + n]:
                    reader.feed(buffer, 0, got + n)  # (an error, or another reply)
                    break
                got += n
            else:
                return []
        except OSError as exc:  # as redis-py's parser raises them (the store's outcome unknown)
            if isinstance(exc, TimeoutError) and exc.errno is None:  # the socket's timeout
                raise redis.TimeoutError("Timeout reading from socket") from exc
            raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc
        queued = _read_replies(connection, count + 1)
    return [reply for reply in queued if isinstance(reply, redis.ResponseError)]


@dataclass(frozen=True, slots=True)
class PackedCommands:
    """`count` commands already packed for the wire, back to back in `parts`
    (`CommandList.plain`)."""

    parts: list[bytes]
    count: int


def as_they_are(command: str, *args: bytes | str) -> PackedCommands:
    """One command framed around its arguments, which are sent as they are (str as UTF-8),
    not copied into a packed command: a batch's live message (~400 KB from 1M synthetic
    events) took hiredis's `pack_command` ~0.5 ms a batch to copy."""
    parts = [b"*%d\r\n" % (len(args) + 1)]
    for arg in (command, *args):
        raw = arg.encode() if isinstance(arg, str) else arg
        parts += (b"$%d\r\n" % len(raw), raw, b"\r\n")
    return PackedCommands(parts, 1)


#: Pieces from this size on are sent as they are; smaller ones are joined into one send.
_SEND_APART = 64 * 1024


def coalesced(pieces: Sequence[bytes]) -> list[bytes]:
    """`pieces` to send one after the other: runs of small ones joined (a send call each
    would cost a system call), large ones as they are. Why: a batch of 1M synthetic events
    writes ~1.2 MB in a few large frames (packed states, score hashes, sessions); joining
    them into one bytes copied it twice more, into freshly faulted pages (~890 page faults
    a commit), ~10% of the committing thread."""
    out: list[bytes] = []
    small: list[bytes] = []
    for piece in pieces:
        if len(piece) < _SEND_APART:
            small.append(piece)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(piece)
    if small:
        out.append(b"".join(small))
    return out


def _packed(connection: Any, command: tuple[Any, ...]) -> list[bytes]:
    """A command's bytes: hiredis packs it in C (~1,700 arguments a batch in a 1M synthetic
    run's leaderboard ZADD: redis-py's Python encoder took ~3 us a user); the connection's
    packer for anything hiredis refuses (which raises its own error, or packs it)."""
    try:
        return [hiredis.pack_command(command)]
    except TypeError:
        return list(connection.pack_command(*command))


def exec_transaction(
    connection: Any, commands: Sequence[bytes | PackedCommands | tuple[Any, ...]]
) -> list[Any]:
    """MULTI, the commands, EXEC, sent as one write on `connection` (one that WATCHes the keys
    the transaction depends on); EXEC's replies, one a command. A command is its arguments
    or, already packed, its bytes, or many (`PackedCommands`, `CommandList.plain`). As
    redis-py's transactional pipeline: a WatchError if a watched key changed (nothing
    applied), the first error a command met otherwise; a lost connection is disconnected and
    raised as it came (the EXEC may have run)."""
    chunks: list[bytes] = [*connection.pack_command("MULTI")]
    count = 0
    for command in commands:
        if isinstance(command, PackedCommands):
            chunks += command.parts
            count += command.count
            continue
        if isinstance(command, bytes):
            chunks.append(command)
        else:
            chunks += _packed(connection, command)
        count += 1
    chunks += connection.pack_command("EXEC")
    try:
        connection.send_packed_command(coalesced(chunks))
        errors = _queued_errors(connection, count)
        try:
            replies = connection.read_response()
        except redis.exceptions.ExecAbortError:
            raise errors[0] if errors else redis.exceptions.ExecAbortError("EXECABORT") from None
    except redis.ResponseError:
        raise
    except BaseException:
        connection.disconnect()  # mid-reply: the connection's protocol state is unknown
        raise
    if replies is None:
        raise redis.WatchError("Watched variable changed.")
    if len(replies) != count:
        connection.disconnect()
        raise redis.ResponseError("wrong number of replies from a transaction's EXEC")
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return list(replies)


def pairs(flat: list[bytes] | dict[bytes, bytes]) -> dict[bytes, bytes]:
    """An HGETALL reply to a dict: RESP3's map as it is, RESP2's field, value, ... list
    paired."""
    if isinstance(flat, dict):
        return flat
    it = iter(flat)
    return dict(zip(it, it, strict=True))
