"""A Cluster batch's reads: what it touches, in one non-transactional pipeline (the client
splits it by node), or, over the local copy's tables (consumer/local_state.py), only what they
lack, as consumer/store.py reads one node.

The local copy is as safe on a Cluster as on one node: it is kept only while this consumer
holds every partition, so nobody else writes what it reads; it is dropped at every assignment
and revocation, every aborted batch (a fence, an unknown commit outcome) and whenever a batch's
first call applies a journal this process did not write (consumer/cluster_store.py).
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

from consumer.state_store import Loaded, fill_tables, recent_of
from features import keys
from features.items import META_FIELDS
from features.stream import StreamState

if TYPE_CHECKING:
    from consumer.cluster_store import ClusterStateStore


def load(
    store: ClusterStateStore, state: StreamState, user_items: dict[str, set[str]], items: set[str]
) -> tuple[Loaded, bool]:
    """Fill `state` with the users, their memberships of the batch's items, and the items the
    batch touches; returns what was loaded and whether `state` is the local copy's tables."""
    local = store.local
    warm = local.holds(state)
    users, item_list = list(user_items), list(items)
    read_users = [u for u in users if u not in local.committed] if warm else users
    read_items = [i for i in item_list if i not in local.shards.items] if warm else item_list
    missing_meta = store.meta.to_read(items)
    asked = [(u, sorted(user_items[u])) for u in read_users if user_items[u]]
    if local.trusted:  # the whole sets are read instead
        asked = []
    pipe = store.client.pipeline(transaction=False)
    for user in read_users:
        pipe.hgetall(keys.user_key(user))
    if local.trusted:  # the whole set: the tables keep it
        for user in read_users:
            pipe.smembers(keys.user_items_key(user))
    for user, its in asked:
        pipe.smismember(keys.user_items_key(user), its)
    for item in read_items:
        pipe.hgetall(keys.item_key(item))
    for item in missing_meta:
        pipe.hmget(keys.item_meta_key(item), META_FIELDS)
    replies = iter(pipe.execute())
    user_raws = [next(replies) for _ in read_users]
    if local.trusted:
        members = {u: {m.decode() for m in next(replies)} for u in read_users}
    else:
        members = {
            u: {i for i, hit in zip(its, next(replies), strict=True) if hit} for u, its in asked
        }
    item_raws = [next(replies) for _ in read_items]
    store.meta.learn(missing_meta, islice(replies, len(missing_meta)))

    def legacy_values(legacy: list[str]) -> list[bytes | None]:
        olds = store.client.pipeline(transaction=False)
        for user in legacy:
            olds.get(keys.legacy_recent_ids_key(user))
        return olds.execute()

    recent, legacy = recent_of(read_users, user_raws, legacy_values)
    if not warm:
        memberships = {u: user_items[u] & members.get(u, set()) for u in users}
        loaded = fill_tables(
            state, users, user_raws, memberships, recent, item_list, item_raws, store.meta.known
        )
    else:
        read = [(u, raw, members[u], ids) for u, raw, ids in zip(read_users, user_raws, recent,
                                                                    strict=True)]  # fmt: skip
        loaded = local.add_read(state, store.meta.known, users, read, read_items, item_raws)
    loaded.legacy_seen = legacy
    return loaded, warm
