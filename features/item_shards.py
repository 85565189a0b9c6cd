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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
from numba import njit

from features.aggregates import State
from features.distinct import sorted_distinct
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
    return out.view(f"V{SHARD_BYTES}").tolist()  # bytes each (a fifth of slicing's time)


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


@dataclass(frozen=True)
class ShardWrites:
    """The item shards a batch writes, a partition at a time: for each partition the items
    and their packed shards (one HSET field `p<partition>` each), in item order."""

    partitions: dict[int, tuple[list[str], list[bytes]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.partitions)

    def __len__(self) -> int:
        return sum(len(items) for items, _ in self.partitions.values())

    def by_item(self) -> dict[str, dict[str, bytes]]:
        """The same shards as item -> {field: shard} (a store that writes an item's hash)."""
        out: dict[str, dict[str, bytes]] = {}
        for partition, (items, blobs) in self.partitions.items():
            name = shard_field(partition)
            for item, blob in zip(items, blobs, strict=True):
                out.setdefault(item, {})[name] = blob
        return out

    @classmethod
    def of(cls, by_item: Mapping[str, Mapping[str, bytes]]) -> ShardWrites:
        """From item -> {field: shard} (tests, and shards made elsewhere)."""
        partitions: dict[int, tuple[list[str], list[bytes]]] = {}
        for item, shards in by_item.items():
            for name, blob in shards.items():
                items, blobs = partitions.setdefault(_partition_of(name.encode()), ([], []))
                items.append(item)
                blobs.append(blob)
        return cls(partitions)


class LoadedItems:
    """The shards of a batch's items as read: their sums (what the features see) and each
    (item, partition) shard, which the batch's increments are added to before it is written.

    Shards are found by number, not by (item, partition) tuples in a dict: each item gets a
    code when first seen, and `rows[code, partition]` is its shard's row (-1: none), so a
    batch's ~1,400 shards are looked up and recorded by array indexing."""

    def __init__(self, item_ids: Sequence[str], raws: Sequence[dict[bytes, bytes]]) -> None:
        self.codes: dict[str, int] = {}  # item -> its code (first seen first; never moves)
        self.rows = np.full((0, 0), -1, dtype=np.int64)  # [code, partition] -> shard row
        self.values = np.zeros((0, N_FIELDS), dtype=np.float64)
        self.present = np.zeros((0, N_FIELDS), dtype=bool)
        self.offsets = np.zeros(0, dtype=np.int64)
        self.held = 0  # shard rows in use (the arrays above have room for more)
        self.items: set[str] = set()  # the items whose shards are all here
        self._written: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                             np.ndarray] | None  # fmt: skip
        self._written = None
        self.totals, self.total_present = self.extend(item_ids, raws)

    def _codes_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Each item's code; items not seen yet get new ones."""
        codes = self.codes
        got = np.fromiter(map(codes.get, item_ids, repeat(-1)), np.int64, len(item_ids))
        missing = np.flatnonzero(got < 0).tolist()
        if missing:
            new = dict.fromkeys(map(item_ids.__getitem__, missing))
            codes.update(zip(new, range(len(codes), len(codes) + len(new)), strict=True))
            got[missing] = list(map(codes.__getitem__, map(item_ids.__getitem__, missing)))
        return got

    def _fit(self, partitions: int) -> None:
        """Room in `rows` for every code and partitions 0 .. partitions - 1."""
        have_codes, have_parts = self.rows.shape
        need_codes, need_parts = len(self.codes), max(partitions, have_parts)
        if need_codes <= have_codes and need_parts == have_parts:
            return
        grown = np.full((max(need_codes, 2 * have_codes, 64), need_parts), -1, dtype=np.int64)
        grown[:have_codes, :have_parts] = self.rows
        self.rows = grown

    def _append(self, values: np.ndarray, present: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Store new shard rows; their row numbers. Room doubles when it runs out: copying
        every shard held on each batch's new ones cost 0.3 ms a batch at 30,000 shards."""
        base, k = self.held, len(offsets)
        if base + k > len(self.offsets):
            room = max(base + k, 2 * len(self.offsets), 1024)
            self.values = np.resize(self.values, (room, N_FIELDS))
            self.present = np.resize(self.present, (room, N_FIELDS))
            self.offsets = np.resize(self.offsets, room)
        self.values[base : base + k] = values
        self.present[base : base + k] = present
        self.offsets[base : base + k] = offsets
        self.held = base + k
        return np.arange(base, base + k)

    def extend(
        self, item_ids: Sequence[str], raws: Sequence[dict[bytes, bytes]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add items not held yet (their hashes as read); returns their sums and presence
        flags (what the features see), in `item_ids` order."""
        blobs: list[bytes] = []
        owner: list[int] = []
        parts: list[int] = []
        for k, raw in enumerate(raws):
            for field_name, blob in raw.items():
                blobs.append(blob)
                owner.append(k)
                parts.append(_partition_of(field_name))
        values, present, offsets = unpack_shards(blobs)
        totals = np.zeros((len(item_ids), N_FIELDS), dtype=np.float64)
        total_present = np.zeros((len(item_ids), N_FIELDS), dtype=bool)
        codes = self._codes_of(item_ids)
        self._fit(max(parts, default=-1) + 1)
        if blobs:
            np.add.at(totals, owner, values)
            np.logical_or.at(total_present, owner, present)
            self.rows[codes[owner], parts] = self._append(values, present, offsets)
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
    ) -> ShardWrites:
        """The shards a batch writes: per event its item (`item_loc` into `item_ids`, -1 for
        none), partition, offset and increments; per (item, partition) the shard as read
        plus the sum of its events' increments, with the largest offset."""
        self._written = None
        if not (item_loc >= 0).any():
            return ShardWrites()
        item_codes = self._codes_of(item_ids)
        self._fit(int(partitions.max()) + 1)
        group_loc, group_part, codes, old, sums, sets, last = _merged_groups(
            item_loc, partitions, offsets, delta, delta_set, item_codes,
            self.rows, self.values, self.present, self.offsets,
        )  # fmt: skip
        group_items = list(map(item_ids.__getitem__, group_loc.tolist()))
        blobs = pack_shards(sums, sets, last)
        parts = sorted_distinct(group_part)
        bounds = np.searchsorted(group_part, parts, side="right").tolist()
        out: dict[int, tuple[list[str], list[bytes]]] = {}
        lo = 0
        for p, hi in zip(parts.tolist(), bounds, strict=True):
            out[p] = (group_items[lo:hi], blobs[lo:hi])
            lo = hi
        self._written = (codes, group_part, old, sums, sets, last)
        return ShardWrites(out)

    def absorb(self) -> None:
        """Take the shards `updated` computed as the ones held (once they were committed), so
        the next batch can start from them without reading them back."""
        if self._written is None:
            return
        codes, parts, rows, sums, sets, last = self._written  # rows: as `updated` found them
        self._written = None
        unheld = rows < 0
        if unheld.any():  # read since (a shard's row never moves)
            rows[unheld] = self.rows[codes[unheld], parts[unheld]]
        held = rows >= 0
        self.values[rows[held]] = sums[held]
        self.present[rows[held]] = sets[held]
        self.offsets[rows[held]] = last[held]
        new = np.flatnonzero(~held)
        if len(new):
            self.rows[codes[new], parts[new]] = self._append(sums[new], sets[new], last[new])


@njit(cache=True, nogil=True)
def _merged_groups(
    loc: np.ndarray, part: np.ndarray, offsets: np.ndarray, delta: np.ndarray,
    delta_set: np.ndarray, item_codes: np.ndarray, rows: np.ndarray, values: np.ndarray,
    present: np.ndarray, held_offsets: np.ndarray,
) -> tuple[np.ndarray, ...]:  # fmt: skip  # pragma: no cover
    """`LoadedItems.updated`'s groups in one compiled pass: the (partition, item) pairs of
    the events with an item (`loc` >= 0), ordered by partition then item; each group's
    increments summed in event order from its first event's, presence or-ed, offset the
    largest; then the shard held for it (`rows[code, partition]`, -1: none) added in.

    Why: as numpy (a stable sort, three reduceat, masked merges) it was ~0.9 us an event on
    the consumer thread, mostly calls and temporary arrays over 8 fields a row."""
    n = len(loc)
    n_items = len(item_codes)
    top = 0
    for i in range(n):
        if loc[i] >= 0 and part[i] > top:
            top = part[i]
    dense = np.full(top + 1, -1, np.int64)  # partition -> its place among the batch's
    for i in range(n):
        if loc[i] >= 0:
            dense[part[i]] = 0
    n_parts = 0
    for p in range(top + 1):
        if dense[p] == 0:
            dense[p] = n_parts
            n_parts += 1
    slot = np.full(n_parts * n_items, -1, np.int64)  # (partition place, item) -> its group
    for i in range(n):
        if loc[i] >= 0:
            slot[dense[part[i]] * n_items + loc[i]] = -2  # taken: numbered below, in order
    k = 0
    for s in range(n_parts * n_items):
        if slot[s] == -2:
            slot[s] = k
            k += 1
    group_loc = np.full(k, -1, np.int64)  # -1 until the group's first event
    group_part = np.empty(k, np.int64)
    sums = np.zeros((k, delta.shape[1]), np.float64)
    sets = np.zeros((k, delta.shape[1]), np.bool_)
    last = np.empty(k, np.int64)
    for i in range(n):
        if loc[i] < 0:
            continue
        g = slot[dense[part[i]] * n_items + loc[i]]
        if group_loc[g] < 0:
            group_loc[g] = loc[i]
            group_part[g] = part[i]
            sums[g] = delta[i]
            sets[g] = delta_set[i]
            last[g] = offsets[i]
        else:
            for c in range(delta.shape[1]):
                sums[g, c] = sums[g, c] + delta[i, c]
                sets[g, c] = sets[g, c] or delta_set[i, c]
            if offsets[i] > last[g]:
                last[g] = offsets[i]
    codes = np.empty(k, np.int64)
    old = np.empty(k, np.int64)
    for g in range(k):
        codes[g] = item_codes[group_loc[g]]
        row = rows[codes[g], group_part[g]]
        old[g] = row
        if row >= 0:
            for c in range(delta.shape[1]):
                sums[g, c] = values[row, c] + sums[g, c]
                sets[g, c] = sets[g, c] or present[row, c]
            if held_offsets[row] > last[g]:
                last[g] = held_offsets[row]
    return group_loc, group_part, codes, old, sums, sets, last


def decode_item(raw: dict[bytes, bytes]) -> State:
    """An `i:{item}` hash (as redis-py returns it) to the dict form: its shards summed."""
    if not raw:
        return {}
    loaded = LoadedItems(["item"], [raw])
    values, present = loaded.totals[0].tolist(), loaded.total_present[0]
    return {FIELDS[c]: values[c] for c in np.flatnonzero(present).tolist()}
