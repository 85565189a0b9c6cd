"""A batch's writes as guarded per-slot script calls, and the redo journal that holds them.

On a Redis Cluster a script may touch the keys of one hash slot only, so a batch's writes
(consumer/state_store.py `BatchWrites`) become one APPLY call per slot. Each call carries
*units*: a guard (a field of a small guard hash in the same slot) and the commands it
protects. A unit runs only if its guard holds a journal number below the call's, then the
guard takes the call's number, all inside the one script run, so applying a journal twice, or
an older journal after a newer one, changes nothing:

    unit                              guard hash (same slot)                field
    a user's keys (state, items set,  ug:{<user>}                           <topic>
      recent ids, sessions, score)
    one partition's item shard        ig:{<item>}                           <topic>/p<partition>
    one leaderboard member            engage:lbg:{engage:lb:<kind>}:<topic> <member>
    a partition's offset mirror       none: SETMAX (never goes back)

Journal numbers come from one counter per topic (consumer/cluster_store.py), so they order
every commit. A user's keys are written only by its partition's owner, an item shard
`p<partition>` only by that partition's, and each commit is computed from the state after every
earlier journal of its partitions (the store applies pending ones before it reads): the latest
number holds the newest value, and "apply if the guard is lower" is exactly-once per key.

The journal of a batch is the list of its slot calls without the number (which the commit
assigns), packed as length-prefixed byte strings.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.crc import key_slot

from consumer.redis_commands import MAX_ARGS
from consumer.state_store import BatchWrites
from features import keys, recent_ids
from features.item_shards import shard_field
from features.state_codec import session_value

# KEYS: the call's keys. ARGV[1]: the journal number; then units, each: guard key index (0:
# none), guard field, command count, then per command: name, key index, argument count, the
# arguments. Returns how many units ran.
APPLY_LUA = """
local seq = tonumber(ARGV[1])
local j = 2
local ran = 0
while j <= #ARGV do
  local g, guard_field, ncmd = tonumber(ARGV[j]), ARGV[j + 1], tonumber(ARGV[j + 2])
  j = j + 3
  local fresh = true
  if g > 0 then
    local held = redis.call('HGET', KEYS[g], guard_field)
    fresh = (not held) or tonumber(held) < seq
  end
  for _ = 1, ncmd do
    local name, k, n = ARGV[j], tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
    if fresh then
      if name == 'SETMAX' then
        local held = redis.call('GET', KEYS[k])
        if (not held) or tonumber(held) < tonumber(ARGV[j + 3]) then
          redis.call('SET', KEYS[k], ARGV[j + 3])
        end
      else
        redis.call(name, KEYS[k], unpack(ARGV, j + 3, j + 2 + n))
      end
    end
    j = j + 3 + n
  end
  if fresh then
    ran = ran + 1
    if g > 0 then redis.call('HSET', KEYS[g], guard_field, seq) end
  elseif g > 0 then
    -- Refused: written already, maybe by a process that died before a replica confirmed it.
    -- Writing the guard's own value makes this call's WAIT cover that write too.
    redis.call('HSET', KEYS[g], guard_field, redis.call('HGET', KEYS[g], guard_field))
  end
end
return ran
"""
ALLOWED = frozenset({"HSET", "SADD", "SET", "DEL", "EXPIRE", "ZADD", "SETMAX"})
_MAGIC = b"EJ1"


def encode(value: bytes | str | int | float) -> bytes:
    """An argument as redis-py would send it (floats by repr: they read back equal)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


@dataclass
class SlotCall:
    """One APPLY call: keys of one slot, and the units' arguments (without the number)."""

    slot: int
    keys: list[str] = field(default_factory=list)
    argv: list[bytes] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)

    def key(self, name: str) -> bytes:
        if name not in self._index:
            self.keys.append(name)
            self._index[name] = len(self.keys)
        return str(self._index[name]).encode()

    def args(self, seq: int) -> list[bytes | str]:
        """What EVALSHA takes after the script: key count, keys, the number, the units."""
        return [str(len(self.keys)), *self.keys, str(seq), *self.argv]


Command = tuple[str, str, list]


class CallBuilder:
    """Units grouped into one call per slot."""

    def __init__(self) -> None:
        self.calls: dict[int, SlotCall] = {}

    def unit(self, guard_key: str | None, guard_field: str, commands: Iterable[Command]) -> None:
        commands = list(commands)
        if not commands:
            return
        slot = key_slot((guard_key or commands[0][1]).encode())
        call = self.calls.setdefault(slot, SlotCall(slot))
        call.argv += [call.key(guard_key) if guard_key else b"0", guard_field.encode(),
                      str(len(commands)).encode()]  # fmt: skip
        for name, key, args in commands:
            if name not in ALLOWED:
                raise ValueError(f"{name} is not a command a slot call runs")
            if key_slot(key.encode()) != slot:
                raise ValueError(f"{key} is not in slot {slot} of its unit")
            call.argv += [name.encode(), call.key(key), str(len(args)).encode(),
                          *(encode(a) for a in args)]  # fmt: skip


def _mapping(mapping: dict) -> list:
    return [x for item in mapping.items() for x in item]


def user_guard_key(user: str) -> str:
    return f"ug:{{{keys.escape_id(user)}}}"


def item_guard_key(item: str) -> str:
    return f"ig:{{{keys.escape_id(item)}}}"


def leaderboard_guard_key(kind: str, topic: str) -> str:
    """In the leaderboard's slot: a key without braces hashes whole, so tagging a name with
    the leaderboard's key puts it in the same slot."""
    return f"engage:lbg:{{{keys.leaderboard_key(kind)}}}:{topic}"


def slot_calls(writes: BatchWrites, topic: str, session_ttl_s: int) -> list[SlotCall]:
    """The batch's writes (not its offsets' CAS or its counters: the commit's) as slot calls."""
    per_user: dict[str, list[Command]] = {}

    def add(user: str, *command: Command) -> None:
        per_user.setdefault(user, []).extend(command)

    recent, states = writes.user_recent_ids, writes.user_states
    for user, fields in states.items():  # the state and the recent ids: one HSET
        seen = recent.get(user)
        add(user, ("HSET", keys.user_key(user),
                   _mapping({**fields, recent_ids.FIELD: seen} if seen else fields)))  # fmt: skip
    for user, seen in recent.items():  # (a user whose every event was refused)
        if seen and user not in states:
            add(user, ("HSET", keys.user_key(user), [recent_ids.FIELD, seen]))
    for user in writes.legacy_seen:
        add(user, ("DEL", keys.legacy_recent_ids_key(user), []))
    for user, new_items in writes.user_new_items.items():
        members = sorted(new_items)
        for i in range(0, len(members), MAX_ARGS):
            add(user, ("SADD", keys.user_items_key(user), members[i : i + MAX_ARGS]))
    for (user, session), closed in writes.closed_sessions.items():
        key = keys.session_key(user, session)
        add(user, ("SET", key, [session_value(closed), "EX", session_ttl_s]))
    for user, score in writes.scores.items():
        add(user, ("HSET", keys.user_score_key(user), _mapping(score)))
    builder = CallBuilder()
    for user, commands in per_user.items():
        builder.unit(user_guard_key(user), topic, commands)
    for partition, (items, blobs) in writes.item_shards.partitions.items():
        shard = shard_field(partition)
        for item, blob in zip(items, blobs, strict=True):
            builder.unit(item_guard_key(item), f"{topic}/{shard}",
                         [("HSET", keys.item_key(item), [shard, blob])])  # fmt: skip
    for kind, ranked in writes.leaderboard.items():
        guard = leaderboard_guard_key(kind, topic)
        for member, value in ranked.items():
            builder.unit(guard, member, [("ZADD", keys.leaderboard_key(kind), [value, member])])
    for partition, offset in writes.offsets.items():  # what `engage stats` reads
        builder.unit(None, "", [("SETMAX", keys.offset_key(topic, partition), [offset])])
    return list(builder.calls.values())


def pack(calls: list[SlotCall]) -> bytes:
    """The journal: every call's slot, keys and arguments, length-prefixed."""
    parts = [_MAGIC, struct.pack("<I", len(calls))]
    for call in calls:
        parts.append(struct.pack("<III", call.slot, len(call.keys), len(call.argv)))
        for token in [*(k.encode() for k in call.keys), *call.argv]:
            parts += [struct.pack("<I", len(token)), token]
    return b"".join(parts)


def unpack(blob: bytes) -> list[SlotCall]:
    if blob[:3] != _MAGIC:
        raise ValueError("not a journal of this engage version")
    view, at = memoryview(blob), 3
    (n,) = struct.unpack_from("<I", view, at)
    at += 4
    calls = []
    for _ in range(n):
        slot, n_keys, n_argv = struct.unpack_from("<III", view, at)
        at += 12
        tokens = []
        for _ in range(n_keys + n_argv):
            (size,) = struct.unpack_from("<I", view, at)
            tokens.append(bytes(view[at + 4 : at + 4 + size]))
            at += 4 + size
        call = SlotCall(slot, [t.decode() for t in tokens[:n_keys]], tokens[n_keys:])
        calls.append(call)
    return calls
