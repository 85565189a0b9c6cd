"""The consumer's state store on a Redis Cluster (issue 17): exactly-once per key, no CROSSSLOT.

On a Cluster a MULTI/EXEC or a script may touch the keys of one hash slot only, and a batch
writes many users (one slot each, by their `{user}` tag), many items, two leaderboards, the
counters and several partitions' offsets. The design here is a *redo journal* with per-key
guards (docs/redis-cluster.md says the same for users):

1. **Commit: one script call on one slot per topic.** Every partition's progress (stored
   offset), the journal counter, the pending journals and the stats counters live in one slot:
   `engage:progress:{engage:stats:<topic>}` (hash), `engage:journal:{engage:stats:<topic>}`
   (hash, journal number -> packed journal) and `engage:stats:<topic>` itself (a key without
   braces hashes whole, so the tag `{engage:stats:<topic>}` is its slot). The commit compares
   every partition of the batch with the offset `begin` read (compare-and-set: a zombie's or
   anyone's write fences the batch, as WATCH does on one node), takes the next journal number,
   sets the new offsets, adds the counters and stores the batch's journal: all or nothing.
   Why one slot for every partition rather than one per partition: a batch spans several
   partitions, and its processed / dead-lettered counts are totals the store cannot split
   by partition; per-partition commits could land one partition and fence another, and the
   counters would then count the fenced part twice. In one slot the batch lands whole, exactly
   as on one node. That node stores one opaque string per batch; the per-key work spreads.
2. **Apply: one script call per slot, pipelined per node** (consumer/cluster_journal.py): a
   unit runs only if its guard holds a lower journal number, then takes the number. So a
   journal applied twice (a retry, a crash between two slot calls, two consumers recovering
   it) or an older one after a newer one (a zombie waking up) changes nothing.
3. **Recovery before every read.** `begin` and `offsets` read the partitions' offsets and,
   in the same call, the journals still pending on them (committed, maybe not applied); they
   are applied (in number order) before the batch loads anything. A journal is deleted only by
   a process that applied all of it: the next call to the commit slot carries the numbers.
   Hence a batch always reads its partitions' state with every committed journal in it, and
   its own writes (a user's keys are written only by its partition's batches, an item shard
   `p<partition>` only by that partition's) are computed from the newest state.

The fold is untouched (features/): a batch folds over state that holds every committed event
and nothing else, as on one node. Counters and offsets are exactly-once through the commit;
the offset keys `engage:offset:<topic>:<p>` that `engage stats` reads are mirrors, raised
(never lowered) in the apply. Scores and dead letters stay at-least-once, pub/sub at-most-once
(published after the apply). The local copy (consumer/local_state.py) is kept as on one node
(consumer/cluster_load.py), and also dropped when a batch's first call applies a journal
another process wrote. Test hook: `ENGAGE_TEST_CLUSTER_KILL=N:K` SIGKILLs the process after K slot
calls of the apply of its Nth commit that has more than K (tests/test_cluster_store.py).

**Replicas and failover.** Replication is asynchronous: a master that dies may take writes
it acknowledged with it, and a promoted replica that lacks a commit would put the journal
counter and the offsets behind guards on other nodes (later journals refused), or lack a
slot call whose journal was already deleted (state silently behind). So when the masters
have replicas, every write of the store (the commit, the recovery read that returns pending
journals, each node's slot calls) goes in one pipeline per node that ends in `WAIT <the
master's replicas> WAIT_MS` on the same connection, and counts as done only if every replica
that CLUSTER NODES lists for that master (not failed) confirmed it: a commit is applied, and a
journal deleted, only once confirmed; otherwise the batch's outcome is unknown and recovery
redoes it (the guards make that safe). The recovery read and a refused slot call write once (the
guard's own value) so that their WAIT also covers an earlier, unconfirmed write of a dead
process. A master with no live replica (none configured, or its replica failed) is not
waited for: its writes are single-copy until a replica attaches (docs/redis-cluster.md).
The replicas are counted every RECOUNT_S and whenever the client re-reads its slot map.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from consumer import cluster_load
from consumer.cluster_journal import APPLY_LUA, SlotCall, pack, slot_calls, unpack
from consumer.item_meta import ItemMetaCache
from consumer.local_state import KeepsLocalCopy, LocalState
from consumer.state_store import BatchWrites, Fenced, Loaded
from consumer.store import CLUSTER_TROUBLE, REDIS_DOWN, OutcomeUnknown
from features import keys
from features.state_codec import STATE_FIELD
from features.stream import StreamState

KILL_HOOK = "ENGAGE_TEST_CLUSTER_KILL"
WAIT_MS = 1000  # how long a write waits for its master's replicas to confirm it
RECOUNT_S = 5.0  # how often the replicas are counted again (CLUSTER NODES)
REDIRECT_ROUNDS = 10

# KEYS: progress hash, journal hash. ARGV: n, n journal numbers done (deleted last), then the
# partitions. Returns {offsets (-1: none), {number, journal, ...} pending on them}.
# Deletions come after every other access: a deletion that empties the journal hash removes
# the key, and while its slot migrates to another master a later access to a missing key is
# refused mid-script ("non local key"; the check before the script saw the key there).
PROGRESS_LUA = """
local nd = tonumber(ARGV[1])
local done = {}
for k = 2, 1 + nd do done[ARGV[k]] = true end
local offsets, seen, pending = {}, {}, {}
for k = 2 + nd, #ARGV do
  offsets[#offsets + 1] = redis.call('HGET', KEYS[1], ARGV[k]) or '-1'
  local seq = redis.call('HGET', KEYS[1], 'j' .. ARGV[k])
  if seq and not seen[seq] and not done[seq] then
    seen[seq] = true
    local journal = redis.call('HGET', KEYS[2], seq)
    if journal then pending[#pending + 1] = seq; pending[#pending + 1] = journal end
  end
end
-- A write, so the caller's WAIT also covers the commits of the pending journals (perhaps
-- another process's, not confirmed by a replica yet) before it applies them.
if #pending > 0 then
  redis.call('HSET', KEYS[1], 'seq', redis.call('HGET', KEYS[1], 'seq') or '0')
end
for k = 2, 1 + nd do redis.call('HDEL', KEYS[2], ARGV[k]) end
return {offsets, pending}
"""
# KEYS: progress hash, stats hash, journal hash. ARGV: token, journal ('' for none), n, n
# (counter, amount) pairs, m, m journal numbers done, then (partition, expected offset, new
# offset or '') triples. Returns {1, number} (landed, also when this very call landed before:
# a retry) or {0, partition, stored offset} (fenced: nothing written but the deletions). The
# deletions come last, before each return (see PROGRESS_LUA): deleted first, they could empty
# the journal hash and make its HSET fail mid-script in a migrating slot, the offsets already
# moved and the journal never written.
COMMIT_LUA = """
local token, journal = ARGV[1], ARGV[2]
local ns = tonumber(ARGV[3])
local nd = tonumber(ARGV[4 + 2 * ns])
local first = 5 + 2 * ns + nd
local function forget()
  for k = 5 + 2 * ns, 4 + 2 * ns + nd do redis.call('HDEL', KEYS[3], ARGV[k]) end
end
local again, moved = nil, nil
for i = first, #ARGV, 3 do
  if ARGV[i + 2] ~= '' then
    moved = moved or ARGV[i]
    again = (again ~= false) and redis.call('HGET', KEYS[1], 'b' .. ARGV[i]) == token
  end
end
if again then
  local landed = tonumber(redis.call('HGET', KEYS[1], 'j' .. moved))
  forget()
  return {1, landed}
end
for i = first, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[1], ARGV[i]) or '-1'
  if held ~= ARGV[i + 1] then forget(); return {0, tonumber(ARGV[i]), tonumber(held)} end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
for i = first, #ARGV, 3 do
  if ARGV[i + 2] ~= '' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2], 'j' .. ARGV[i], seq, 'b' .. ARGV[i], token)
  end
end
if journal ~= '' then redis.call('HSET', KEYS[3], seq, journal) end
for k = 4, 3 + 2 * ns, 2 do redis.call('HINCRBY', KEYS[2], ARGV[k], ARGV[k + 1]) end
forget()
return {1, seq}
"""


class _Script:
    """EVALSHA, and EVAL when the node does not know the script yet (a restarted or new
    master): NOSCRIPT means it did not run, so the second try is safe."""

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()

    def __call__(self, client: RedisCluster, keys_and_args: list) -> Any:
        try:
            return client.evalsha(self.sha, *keys_and_args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.lua, *keys_and_args)


PROGRESS, COMMIT, APPLY = _Script(PROGRESS_LUA), _Script(COMMIT_LUA), _Script(APPLY_LUA)


class NotReplicated(redis.exceptions.ClusterError):
    """A master's replicas did not confirm a write within WAIT_MS: a failover may lose it."""


class Replicas:
    """How many replicas each master has that are not failed, from CLUSTER NODES (CLUSTER
    SLOTS, the client's slot map, leaves out a replica until it has replicated something, so a
    fresh cluster would look replica-less), counted again every RECOUNT_S, whenever the client
    re-reads its slot map, and on `refresh`."""

    def __init__(self, client: RedisCluster) -> None:
        self.client = client
        self._map_id = -1
        self._due = 0.0
        self._counts: dict[str, int] = {}

    def _recount(self, force: bool = False) -> None:
        slots = self.client.nodes_manager.slots_cache
        if not force and id(slots) == self._map_id and time.monotonic() < self._due:
            return
        self._map_id, self._due = id(slots), time.monotonic() + RECOUNT_S
        try:
            node = self.client.get_default_node() or self.client.get_primaries()[0]
            nodes = self.client.get_redis_connection(node).execute_command("CLUSTER NODES")
        except (redis.RedisError, OSError, IndexError):
            return  # keep the last count; the caller's own call meets the trouble
        names = {v["node_id"]: name for name, v in nodes.items() if "master" in v["flags"]}
        counts = dict.fromkeys(names.values(), 0)
        for v in nodes.values():
            flags = set(v["flags"].split(","))
            if "slave" in flags and not flags & {"fail", "noaddr", "handshake"}:
                master = names.get(v["master_id"])
                if master is not None:
                    counts[master] += 1
        self._counts = counts

    def any(self) -> bool:
        self._recount()
        return any(self._counts.values())

    def of(self, node: ClusterNode) -> int:
        self._recount()
        if node.name not in self._counts:  # a master the map learnt from a MOVED: re-read it
            self.refresh()
        return self._counts.get(node.name, 0)

    def refresh(self) -> None:
        """Re-read the slot map and the replicas (after a failover, a failed replica, a MOVED
        to a new node); if no node answers, the caller's own error says so."""
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.nodes_manager.initialize()
        self._recount(force=True)


def run_confirmed(
    client: RedisCluster, replicas: Replicas, calls: list[tuple[int, _Script, list]]
) -> list[Any]:
    """Script calls (slot, script, keys-and-args), each node's in one pipeline on one
    connection ending in WAIT for that master's replicas: the replies, once every call ran
    and each master's live replicas confirmed it. MOVED, ASK (ASKING on the target), TRYAGAIN and
    NOSCRIPT are retried in a next round; a WAIT short of the replicas raises NotReplicated."""
    replies: list[Any] = [None] * len(calls)
    todo: dict[int, tuple[str | None, bool]] = {i: (None, False) for i in range(len(calls))}
    for _ in range(REDIRECT_ROUNDS):
        if not todo:
            return replies
        groups: dict[str, tuple[ClusterNode, list[tuple[int, bool, bool]]]] = {}
        for i, (ask, eval_) in todo.items():
            if ask is not None:
                target = client.get_node(node_name=ask)
                if target is None:  # a node the map does not know yet
                    replicas.refresh()
                    target = client.get_node(node_name=ask)
                if target is None:
                    raise redis.exceptions.ClusterError(f"ASK to {ask}, a node not in the map")
            else:
                target = client.nodes_manager.get_node_from_slot(calls[i][0])
            groups.setdefault(target.name, (target, []))[1].append((i, ask is not None, eval_))
        todo = {}
        for target, items in groups.values():
            pipe = client.get_redis_connection(target).pipeline(transaction=False)
            for i, asking, eval_ in items:
                _slot, script, args = calls[i]
                if asking:
                    pipe.execute_command("ASKING")
                if eval_:
                    pipe.execute_command("EVAL", script.lua, *args)
                else:
                    pipe.execute_command("EVALSHA", script.sha, *args)
            want = replicas.of(target)
            if want:
                pipe.execute_command("WAIT", want, WAIT_MS)
            try:
                results = iter(pipe.execute(raise_on_error=False))
            except (redis.ConnectionError, redis.TimeoutError):
                replicas.refresh()
                raise
            for i, asking, eval_ in items:
                if asking:
                    next(results)  # ASKING's OK
                result = next(results)
                if isinstance(result, redis.exceptions.AskError):
                    todo[i] = (f"{result.host}:{result.port}", eval_)
                elif isinstance(result, redis.exceptions.MovedError):
                    client.nodes_manager.move_slot(result)
                    todo[i] = (None, eval_)
                elif isinstance(result, redis.exceptions.TryAgainError):
                    todo[i] = (target.name if asking else None, eval_)
                elif isinstance(result, redis.exceptions.NoScriptError):
                    todo[i] = (target.name if asking else None, True)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if want:
                confirmed = next(results)
                if isinstance(confirmed, Exception) or int(confirmed) < want:
                    replicas.refresh()  # a failed replica leaves the map: not waited for
                    raise NotReplicated(
                        f"{target.name}: {confirmed} of {want} replicas confirmed within "
                        f"{WAIT_MS} ms"
                    )
        if any(ask is None for ask, _ in todo.values()):
            time.sleep(0.02)  # TRYAGAIN / a slot in migration: a moment
    raise redis.exceptions.ClusterError(f"{len(todo)} script calls still redirected")


def _kill_hook() -> tuple[int, int] | None:
    raw = os.environ.get(KILL_HOOK)
    if not raw:
        return None
    nth, calls = raw.split(":")
    return int(nth), max(1, int(calls))


class ClusterStateStore(KeepsLocalCopy):
    def __init__(
        self, client: RedisCluster, topic: str, session_ttl_s: int, local: LocalState | None = None,
        meta_refresh_s: float = 300.0,
    ) -> None:  # fmt: skip
        self.client = client
        self.local = local if local is not None else LocalState(0, 0)
        self.topic = topic
        self.session_ttl_s = session_ttl_s
        tag = keys.stats_key(topic)  # Kafka topic names have no braces: the key is the tag
        self.progress_key = f"engage:progress:{{{tag}}}"
        self.journal_key = f"engage:journal:{{{tag}}}"
        self.stats_key = tag
        self.meta = ItemMetaCache(meta_refresh_s)
        self.done: set[int] = set()  # journals this process applied whole, not deleted yet
        self.commits = 0
        self.kill = _kill_hook()
        self.replicas = Replicas(client)

    def call(self, script: _Script, key: str, keys_and_args: list) -> Any:
        """One script call on `key`'s slot: through the client (it follows redirects), or,
        when the masters have replicas, confirmed by them (`run_confirmed`)."""
        if not self.replicas.any():
            return script(self.client, keys_and_args)
        slot = self.client.keyslot(key)
        return run_confirmed(self.client, self.replicas, [(slot, script, keys_and_args)])[0]

    def offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        """The stored offsets, once every journal pending on `partitions` is applied."""
        parts = list(partitions)
        done = sorted(self.done)
        if not parts and not done:
            return {}
        try:
            stored, pending = self.call(
                PROGRESS,
                self.progress_key,
                [2, self.progress_key, self.journal_key, len(done), *done, *parts],
            )
        except CLUSTER_TROUBLE as exc:
            raise OutcomeUnknown.of(exc) from exc
        self.done.difference_update(done)
        journals = sorted((int(pending[k]), pending[k + 1]) for k in range(0, len(pending), 2))
        if journals:  # another process's writes: the local copy may lack them
            self.local.forget()
        for seq, journal in journals:
            try:
                self.apply(seq, unpack(journal))
            except CLUSTER_TROUBLE as exc:
                raise OutcomeUnknown.of(exc) from exc
            self.done.add(seq)
        return {p: int(v) for p, v in zip(parts, stored, strict=True)}

    def begin(self, partitions: Iterable[int]) -> ClusterBatch:
        """Read the partitions' offsets (after recovery): the commit compares them."""
        parts = sorted(set(partitions))
        return ClusterBatch(self, self.offsets(parts))

    def apply(self, seq: int, calls: list[SlotCall], kill_after: int | None = None) -> None:
        """Run journal `seq`'s slot calls: pipelined (the client sends each node its calls in
        one write), or one by one up to the test hook's SIGKILL."""
        if kill_after is not None:
            for call in calls[:kill_after]:
                self.call(APPLY, call.keys[0], call.args(seq))
            os.kill(os.getpid(), signal.SIGKILL)
        if self.replicas.any():
            run_confirmed(self.client, self.replicas,
                          [(call.slot, APPLY, call.args(seq)) for call in calls])  # fmt: skip
            return
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command("EVALSHA", APPLY.sha, *call.args(seq))
        for call, result in zip(calls, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, redis.exceptions.NoScriptError):
                APPLY(self.client, call.args(seq))
            elif isinstance(result, Exception):
                raise result


class ClusterBatch:
    def __init__(self, store: ClusterStateStore, stored: dict[int, int]) -> None:
        self.store = store
        self.stored = stored
        self.token = uuid.uuid4().hex
        self.finished = False
        self.warm = False  # the batch folds over the local copy's tables

    def offsets(self) -> dict[int, int]:
        return dict(self.stored)

    def abort(self) -> None:
        self.finished = True
        self.store.forget()  # the fold changed the held tables in place: they may be ahead

    def load(self, state: StreamState, user_items: dict[str, set[str]], items: set[str]) -> Loaded:
        try:
            loaded, self.warm = cluster_load.load(self.store, state, user_items, items)
        except CLUSTER_TROUBLE as exc:
            raise OutcomeUnknown.of(exc) from exc
        return loaded

    def commit(self, writes: BatchWrites) -> None:
        """The commit call (CAS on every partition of the batch, counters, journal), then
        the journal's slot calls; `Fenced` if a partition moved since `begin`."""
        if self.finished:
            raise RuntimeError("this batch was already committed or aborted")
        self.finished = True
        store = self.store
        strangers = set(writes.offsets) - set(self.stored)
        if strangers:
            raise ValueError(f"offsets of partitions {sorted(strangers)} the batch did not begin")
        calls = slot_calls(writes, store.topic, store.session_ttl_s)
        done = sorted(store.done)
        stats = [x for name, amount in writes.stats.items() if amount for x in (name, amount)]
        argv: list = [self.token, pack(calls) if calls else b"", len(stats) // 2, *stats,
                      len(done), *done]  # fmt: skip
        for p, expected in self.stored.items():
            argv += [p, expected, writes.offsets.get(p, "")]
        keys_ = [store.progress_key, store.stats_key, store.journal_key]
        try:
            reply = store.call(COMMIT, store.progress_key, [3, *keys_, *argv])
        except REDIS_DOWN as exc:  # it may have landed: the retry knows
            raise OutcomeUnknown.of(exc) from exc
        store.done.difference_update(done)
        if reply[0] == 0:
            _, partition, held = reply
            raise Fenced(f"partition {partition} is at {held}, not {self.stored[partition]}")
        seq = int(reply[1])
        store.commits += 1
        kill_after = None
        if store.kill and store.commits >= store.kill[0] and len(calls) > store.kill[1]:
            kill_after = store.kill[1]
        try:
            store.apply(seq, calls, kill_after)
        except REDIS_DOWN as exc:  # committed: recovery applies the rest
            raise OutcomeUnknown.of(exc) from exc
        store.done.add(seq)
        if self.warm:  # what the batch wrote is what the held tables were folded to
            for user, fields in writes.user_states.items():
                blob = fields[STATE_FIELD]
                store.local.committed[user] = blob if isinstance(blob, bytes) else blob.encode()
            store.local.shards.absorb()
        if writes.publish is not None:
            with contextlib.suppress(*REDIS_DOWN):  # at most once
                store.client.publish(keys.scores_channel(store.topic), writes.publish)
