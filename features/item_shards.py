"""An item's aggregates as Redis stores them: one packed shard per events-topic partition.

`i:{item}` holds one field per partition whose events touched the item, `p<partition>`, the
sums of that partition's increments (`features.spec.ITEM_STATE`), packed (78 bytes):

    1 byte   codec version
    4 bytes  layout fingerprint (the item field names, in order)
    1 byte   presence bitmap, one bit per field (a field exists in the dict form)
    8 bytes  offset of the partition's last event folded into the shard, int64
    8 x 8    the values, float64 little-endian, in layout order (0.0 where absent)

Why shards: every partition's events change the same item, so the item used to be a set of
HINCRBYFLOAT increments, five per event, parsed by a Lua script: 17 us of Redis CPU per
event, more than every other command together, and a float parsed per field on every read.
Only the consumer that owns partition p writes field `p<p>` (its batch is fenced by p's
offset), so it can write the shard's new absolute value with one HSET, and a read is one
`np.frombuffer` for all of a batch's items. The item's state is the sum of its shards: exact
and independent of the order, because every item field is an integer or a multiple of 1/1024
(ratings and their squares in 0.25 steps, the rater means in 1/1024 steps) far below 2**53.
The offset is the guard a store without cross-key transactions (Redis Cluster) compares
before it writes the shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from itertools import repeat

import numpy as np

from features.aggregates import State
from features.spec import ITEM_STATE_FIELDS

CODEC_VERSION = 1
FIELDS: tuple[str, ...] = tuple(ITEM_STATE_FIELDS)
N_FIELDS = len(FIELDS)
FINGERPRINT: bytes = hashlib.sha256("\n".join(FIELDS).encode()).digest()[:4]
_MASK_BYTES = (N_FIELDS + 7) // 8
SHARD_DTYPE = np.dtype(
    [
        ("version", "u1"),
        ("fingerprint", "V4"),
        ("present", "u1", (_MASK_BYTES,)),
        ("offset", "<i8"),
        ("values", "<f8", (N_FIELDS,)),
    ]
)
SHARD_BYTES = SHARD_DTYPE.itemsize
_FINGERPRINT = np.frombuffer(FINGERPRINT, dtype="V4")[0]


class ItemFormatError(ValueError):
    """A stored item hash this code cannot read (another layout or codec, or damaged)."""


def shard_field(partition: int) -> str:
    """The `i:{item}` field of a partition's shard.

    >>> shard_field(3)
    'p3'
    """
    return f"p{partition}"


def _partition_of(field: bytes) -> int:
    if field[:1] == b"p" and field[1:].isdigit():
        return int(field[1:])
    raise ItemFormatError(
        f"item field {field[:40]!r} is not a partition shard (an item hash written by an "
        "engage before the sharded codec): replay the log into an empty database"
    )


def pack_shards(values: np.ndarray, present: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """Shards of k rows: values (k, N_FIELDS), presence flags (k, N_FIELDS), offsets (k,)."""
    k = len(offsets)
    out = np.zeros(k, dtype=SHARD_DTYPE)
    out["version"] = CODEC_VERSION
    out["fingerprint"] = _FINGERPRINT
    out["present"] = np.packbits(np.asarray(present, dtype=bool), axis=1)
    out["offset"] = offsets
    out["values"] = values
    buf = out.tobytes()
    return [buf[i : i + SHARD_BYTES] for i in range(0, k * SHARD_BYTES, SHARD_BYTES)]


def unpack_shards(blobs: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, present, offsets) of packed shards, in one pass; refuses anything else."""
    if any(len(blob) != SHARD_BYTES for blob in blobs):
        raise ItemFormatError(f"damaged item shard: not {SHARD_BYTES} bytes")
    rows = np.frombuffer(b"".join(blobs), dtype=SHARD_DTYPE)
    if len(rows) and not (rows["version"] == CODEC_VERSION).all():
        raise ItemFormatError(f"item shard codec is not {CODEC_VERSION}")
    if len(rows) and not (rows["fingerprint"] == _FINGERPRINT).all():
        raise ItemFormatError(
            "item shard packed under another field layout (written by another engage "
            "version): replay the log into an empty database"
        )
    present = np.unpackbits(rows["present"], axis=1, count=N_FIELDS).astype(bool)
    return rows["values"].astype(np.float64), present, rows["offset"].astype(np.int64)


class LoadedItems:
    """The shards of a batch's items as read: their sums (what the features see) and each
    (item, partition) shard, which the batch's increments are added to before it is written."""

    def __init__(self, item_ids: Sequence[str], raws: Sequence[dict[bytes, bytes]]) -> None:
        self.index: dict[tuple[str, int], int] = {}
        self.values = np.zeros((0, N_FIELDS), dtype=np.float64)
        self.present = np.zeros((0, N_FIELDS), dtype=bool)
        self.offsets = np.zeros(0, dtype=np.int64)
        self.items: set[str] = set()  # the items whose shards are all here
        self._written: tuple[list[tuple[str, int]], np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray] | None  # fmt: skip
        self._written = None
        self.totals, self.total_present = self.extend(item_ids, raws)

    def extend(
        self, item_ids: Sequence[str], raws: Sequence[dict[bytes, bytes]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add items not held yet (their hashes as read); returns their sums and presence
        flags (what the features see), in `item_ids` order."""
        blobs: list[bytes] = []
        owner: list[int] = []
        parts: list[int] = []
        for k, raw in enumerate(raws):
            for field, blob in raw.items():
                blobs.append(blob)
                owner.append(k)
                parts.append(_partition_of(field))
        values, present, offsets = unpack_shards(blobs)
        totals = np.zeros((len(item_ids), N_FIELDS), dtype=np.float64)
        total_present = np.zeros((len(item_ids), N_FIELDS), dtype=bool)
        if blobs:
            np.add.at(totals, owner, values)
            np.logical_or.at(total_present, owner, present)
        base = len(self.offsets)
        self.values = np.concatenate([self.values, values])
        self.present = np.concatenate([self.present, present])
        self.offsets = np.concatenate([self.offsets, offsets])
        shards = zip(map(item_ids.__getitem__, owner), parts, strict=True)
        self.index.update(zip(shards, range(base, base + len(owner)), strict=True))
        self.items.update(item_ids)
        return totals, total_present

    @classmethod
    def empty(cls) -> LoadedItems:
        return cls([], [])

    def updated(
        self,
        item_ids: Sequence[str],
        item_loc: np.ndarray,
        partitions: np.ndarray,
        offsets: np.ndarray,
        delta: np.ndarray,
        delta_set: np.ndarray,
    ) -> dict[str, dict[str, bytes]]:
        """The shards a batch writes: per event its item (`item_loc` into `item_ids`, -1 for
        none), partition, offset and increments; per (item, partition) the shard as read
        plus the sum of its events' increments, with the largest offset."""
        self._written = None
        has = item_loc >= 0
        if not has.any():
            return {}
        loc, part = item_loc[has], partitions[has]
        parts = np.flatnonzero(np.bincount(part))  # the partitions, sorted (np.unique: 10x)
        key = loc * len(parts) + np.searchsorted(parts, part)
        order = np.argsort(key, kind="stable")  # each group's events stay in event order
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        sums = np.add.reduceat(delta[has][order], starts, axis=0)
        sets = np.logical_or.reduceat(delta_set[has][order], starts, axis=0)
        last = np.maximum.reduceat(offsets[has][order], starts)
        group = sorted_key[starts]
        group_items = [item_ids[k] for k in (group // len(parts)).tolist()]
        part_at, parts_list = (group % len(parts)).tolist(), parts.tolist()
        group_parts = [parts_list[j] for j in part_at]
        keys = list(zip(group_items, group_parts, strict=True))
        index = self.index
        old = np.fromiter(map(index.get, keys, repeat(-1)), np.int64, len(keys))
        read = old >= 0
        if read.any():
            sums[read] = self.values[old[read]] + sums[read]
            sets[read] |= self.present[old[read]]
            last[read] = np.maximum(last[read], self.offsets[old[read]])
        fields = [shard_field(p) for p in parts_list]
        out: dict[str, dict[str, bytes]] = {}
        for item, j, blob in zip(group_items, part_at, pack_shards(sums, sets, last), strict=True):
            out.setdefault(item, {})[fields[j]] = blob
        self._written = (keys, old, sums, sets, last)
        return out

    def absorb(self) -> None:
        """Take the shards `updated` computed as the ones held (once they were committed), so
        the next batch can start from them without reading them back."""
        if self._written is None:
            return
        keys, rows, sums, sets, last = self._written  # rows: each shard's as `updated` found
        self._written = None
        index = self.index
        if unheld := np.flatnonzero(rows < 0).tolist():  # held since (rows never move)
            rows[unheld] = list(map(index.get, map(keys.__getitem__, unheld), repeat(-1)))
        held = rows >= 0
        self.values[rows[held]] = sums[held]
        self.present[rows[held]] = sets[held]
        self.offsets[rows[held]] = last[held]
        new = np.flatnonzero(~held)
        if len(new):
            base = len(self.offsets)
            self.values = np.concatenate([self.values, sums[new]])
            self.present = np.concatenate([self.present, sets[new]])
            self.offsets = np.concatenate([self.offsets, last[new]])
            new_keys = map(keys.__getitem__, new.tolist())
            self.index.update(zip(new_keys, range(base, base + len(new)), strict=True))


def decode_item(raw: dict[bytes, bytes]) -> State:
    """An `i:{item}` hash (as redis-py returns it) to the dict form: its shards summed."""
    if not raw:
        return {}
    loaded = LoadedItems(["item"], [raw])
    values, present = loaded.totals[0].tolist(), loaded.total_present[0]
    return {FIELDS[c]: values[c] for c in np.flatnonzero(present).tolist()}
