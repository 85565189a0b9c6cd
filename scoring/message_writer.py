"""Score messages written by compiled code into one buffer, without a dict per row.

Why: building a dict per score message and serialising it (`score_record.message_dicts`, then
`encode_messages`) costs ~2.7 us an event on the consumer thread, the thread that limits the
rate. Most rows of a batch have the same shape: plain ids, a rule part, the model's
probabilities, no reasons in words. This writes those rows from columns in one compiled pass:
the same bytes, key for key, as `orjson.dumps` of the dict (tests/test_message_writer.py
compares the two on random batches and on every edge the writer refuses).

It writes a batch only when every value takes the form it can reproduce exactly, and returns
None otherwise (the caller then builds dicts):

- strings (ids, digests, labels, signal names, the model version): printable ASCII with no
  quote and no backslash, so they need no escaping (orjson escapes nothing else in them);
- numbers: integers, and decimals already rounded to 2 or 6 places (Python's `round`) that are
  0 or between 1e-4 and 2**53 / 10**places (the scaled value an exact integer; orjson writes
  an exponent from 1e16 on), whose shortest form (orjson's, Python's `repr`) is then the
  fixed-point digits without trailing zeros; anything else (NaN, negative, tiny) falls back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain, repeat
from operator import is_not

import numpy as np
import orjson
from numba import njit

from engage.byte_copy import copy_bytes as _copy
from features.digest import Digests

#: A string the writer copies as is: printable ASCII, no quote, no backslash.
_PLAIN = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_SMALLEST = 1e-4  # below: orjson writes an exponent


def _plain(text: str) -> bool:
    raw = text.encode()
    match = _PLAIN.fullmatch(raw)
    return match is not None


def _decimals_ok(values: np.ndarray, places: int) -> bool:
    """0, or within [1e-4, 2**53 / 10**places): scaled by 10**places, an exact integer the
    kernel writes as fixed-point digits."""
    v = np.asarray(values, dtype=np.float64)
    ok = (v == 0.0) | ((v >= _SMALLEST) & (v < 2.0**53 / 10**places))
    return bool(ok.all())


#: "00" to "99": two digits a step (a division by 100 instead of two by 10).
_PAIRS = np.frombuffer("".join(f"{k:02d}" for k in range(100)).encode(), dtype=np.uint8)


@njit(cache=True, nogil=True, inline="always")
def write_int(out: np.ndarray, pos: int, value: int) -> int:
    """`value` in decimal digits at `pos` of `out`; returns the position after them."""
    if value < 0:
        out[pos] = 45  # -
        pos += 1
        value = -value
    digits, bound = 1, 10
    while value >= bound and digits < 19:
        bound *= 10
        digits += 1
    end = pos + digits
    i = end
    while value >= 100:
        pair = (value % 100) * 2
        value //= 100
        out[i - 1] = _PAIRS[pair + 1]
        out[i - 2] = _PAIRS[pair]
        i -= 2
    if value >= 10:
        out[i - 1] = _PAIRS[value * 2 + 1]
        out[i - 2] = _PAIRS[value * 2]
    else:
        out[i - 1] = 48 + value
    return end


@njit(cache=True, nogil=True, inline="always")
def _decimal(out: np.ndarray, pos: int, x: float, places: int, scale: int) -> int:
    """`x` (rounded to `places`, `_decimals_ok`) as Python's repr writes it. Called with
    literal `places` and `scale` (`_decimal2`, `_decimal6`), so the divisions by the scale
    compile to multiplications: by a value held in a variable they were most of the kernel."""
    k = np.int64(np.rint(x * scale))
    whole = k // scale
    frac = k - whole * scale
    pos = write_int(out, pos, whole)  # type: ignore[arg-type]  # (an int64 inside numba)
    out[pos] = 46  # .
    pos += 1
    if frac == 0:
        out[pos] = 48
        return pos + 1
    kept = places
    while frac % 10 == 0:
        frac //= 10
        kept -= 1
    for i in range(kept - 1, -1, -1):
        out[pos + i] = 48 + frac % 10
        frac //= 10
    return pos + kept


@njit(cache=True, nogil=True, inline="always")
def _decimal2(out: np.ndarray, pos: int, x: float) -> int:
    return _decimal(out, pos, x, 2, 100)


@njit(cache=True, nogil=True, inline="always")
def _decimal6(out: np.ndarray, pos: int, x: float) -> int:
    return _decimal(out, pos, x, 6, 1_000_000)


@njit(cache=True, nogil=True)
def _write(  # type: ignore[no-untyped-def]
    out, parts, part_at, text, text_at, has_item, ts, partition, offset, score, label,
    labels, label_at, signal, points, names, name_at, has_model, interaction, online,
    has_online, propensity, ends,
):  # fmt: skip
    """Every row's message into `out`; `ends[r]` is where row r's ends. `parts`: the fixed
    pieces between the values (`_PIECES`), at `part_at`; `text`: each row's user, event, item
    and digest strings, at `text_at[r, 0:8]` (start, end pairs)."""
    pos = 0
    for r in range(len(ts)):
        pos = _copy(out, pos, parts, part_at[0], part_at[1])  # {"user_id":"
        pos = _copy(out, pos, text, text_at[r, 0], text_at[r, 1])
        pos = _copy(out, pos, parts, part_at[1], part_at[2])  # ","event_id":"
        pos = _copy(out, pos, text, text_at[r, 2], text_at[r, 3])
        pos = _copy(out, pos, parts, part_at[2], part_at[3])  # ","event_ts":
        pos = write_int(out, pos, ts[r])
        if has_item[r]:
            pos = _copy(out, pos, parts, part_at[3], part_at[4])  # ,"item_id":"
            pos = _copy(out, pos, text, text_at[r, 4], text_at[r, 5])
            pos = _copy(out, pos, parts, part_at[4], part_at[5])  # ","partition":
        else:
            pos = _copy(out, pos, parts, part_at[5], part_at[6])  # ,"item_id":null,"partition":
        pos = write_int(out, pos, partition[r])
        pos = _copy(out, pos, parts, part_at[6], part_at[7])  # ,"offset":
        pos = write_int(out, pos, offset[r])
        pos = _copy(out, pos, parts, part_at[7], part_at[8])  # ,"rule":{"score":
        pos = _decimal2(out, pos, score[r])
        pos = _copy(out, pos, parts, part_at[8], part_at[9])  # ,"label":
        pos = _copy(out, pos, labels, label_at[label[r]], label_at[label[r] + 1])
        pos = _copy(out, pos, parts, part_at[9], part_at[10])  # ,"reasons":[
        for j in range(signal.shape[1]):
            if signal[r, j] < 0:
                break
            if j:
                out[pos] = 44  # ,
                pos += 1
            out[pos] = 91  # [
            pos = _copy(out, pos + 1, names, name_at[signal[r, j]], name_at[signal[r, j] + 1])
            out[pos] = 44
            pos = _decimal2(out, pos + 1, points[r, j])
            out[pos] = 93  # ]
            pos += 1
        if has_model:
            pos = _copy(out, pos, parts, part_at[10], part_at[11])  # ]},"model":{...,"interaction":
            pos = _decimal6(out, pos, interaction[r])
            if has_online:
                pos = _copy(out, pos, parts, part_at[11], part_at[12])  # ,"interaction_online":
                pos = _decimal6(out, pos, online[r])
            pos = _copy(out, pos, parts, part_at[12], part_at[13])  # ,"propensity":
            pos = _decimal6(out, pos, propensity[r])
            pos = _copy(out, pos, parts, part_at[13], part_at[14])  # },"scored_at":..,"fd":"
        else:
            pos = _copy(out, pos, parts, part_at[14], part_at[15])  # ]},"model":null|{..},..,"fd":"
        pos = _copy(out, pos, text, text_at[r, 6], text_at[r, 7])
        pos = _copy(out, pos, parts, part_at[15], part_at[16])  # "}
        ends[r] = pos
    return pos


@njit(cache=True, nogil=True)
def _text_spans(blob: np.ndarray, text_at: np.ndarray, per_row: int) -> bool:
    """Each row's `per_row` texts (user, event, item and, unless given as a block, digest) in
    `blob`, where every text is followed by a 0 byte but the last: their (start, end) pairs
    into the first columns of `text_at` (rows, 8). False when a byte is not plain JSON string
    text (`_PLAIN`) or the count is not `per_row` a row. Why: one pass instead of four `len`
    passes over the columns and a regex over the blob."""
    total = text_at.shape[0] * per_row
    field, start = 0, 0
    for i in range(len(blob)):
        b = blob[i]
        if b == 0:
            if field >= total - 1:
                return False
            text_at[field // per_row, 2 * (field % per_row)] = start
            text_at[field // per_row, 2 * (field % per_row) + 1] = i
            field += 1
            start = i + 1
        elif b < 0x20 or b == 0x22 or b == 0x5C or b > 0x7E:
            return False
    if field != total - 1:
        return False
    text_at[field // per_row, 2 * (field % per_row)] = start
    text_at[field // per_row, 2 * (field % per_row) + 1] = len(blob)
    return True


def _bytes_table(items: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    at = np.zeros(len(items) + 1, dtype=np.int64)
    at[1:] = np.cumsum([len(x) for x in items])
    return np.frombuffer(b"".join(items) or b"\0", dtype=np.uint8), at


def write_messages(
    users: Sequence[str], event_ids: Sequence[str], items: Sequence[str | None],
    ts: Sequence[int], partitions: Sequence[int], offsets: Sequence[int],
    score: np.ndarray, labels: Sequence[str], signal: np.ndarray, points: np.ndarray,
    signal_names: Sequence[str], digests: Sequence[str], scored_at: float,
    model: tuple[str, np.ndarray, np.ndarray, np.ndarray | None] | None,
    skipped: bytes | None = None, label_codes: tuple[Sequence[str], np.ndarray] | None = None,
) -> list[bytes] | None:  # fmt: skip
    """`write_packed`'s messages, one bytes object each."""
    packed = write_packed(users, event_ids, items, ts, partitions, offsets, score, labels,
                          signal, points, signal_names, digests, scored_at, model, skipped,
                          label_codes)  # fmt: skip
    if packed is None:
        return None
    buf, row_ends = packed
    starts = [0, *row_ends[:-1].tolist()]
    return list(map(bytes, map(buf.__getitem__, map(slice, starts, row_ends.tolist()))))


def write_packed(
    users: Sequence[str], event_ids: Sequence[str], items: Sequence[str | None],
    ts: Sequence[int], partitions: Sequence[int], offsets: Sequence[int],
    score: np.ndarray, labels: Sequence[str], signal: np.ndarray, points: np.ndarray,
    signal_names: Sequence[str], digests: Sequence[str], scored_at: float,
    model: tuple[str, np.ndarray, np.ndarray, np.ndarray | None] | None,
    skipped: bytes | None = None, label_codes: tuple[Sequence[str], np.ndarray] | None = None,
) -> tuple[memoryview, np.ndarray] | None:  # fmt: skip
    """Every row's score message as `orjson.dumps(message_dicts(...)[row])` would write it,
    back to back (a view of the buffer written: ~1 MB a batch not copied again), and where
    each ends; or None if a value is not in a form the writer reproduces exactly (see the
    module).

    `score`: the rule scores rounded as on the wire; `signal`/`points`: each row's top
    signals (index into `signal_names`, -1 after the last) and their points, rounded; `model`:
    (version, interaction, propensity, online or None), the probabilities rounded as on the
    wire, or None for `"model": null`, or, with `skipped`, for that JSON text on every row (a
    batch of a domain the model does not score: `score_record.skipped_part`, serialised).
    `label_codes`: the labels as (names, each row's index into them), when known: `labels`
    then need not be looked up row by row."""
    n = len(users)
    if n == 0:
        return memoryview(b""), np.zeros(0, dtype=np.int64)
    if label_codes is not None:
        label_names, label_codes_of = list(label_codes[0]), np.asarray(label_codes[1], np.int64)
    else:
        label_names, label_codes_of = list(dict.fromkeys(labels)), None
    strings = [*label_names, *signal_names, *(model[:1] if model else ())]
    if not all(map(_plain, strings)):
        return None
    decimals = [(score, 2), (points[signal >= 0], 2)]
    if model is not None:
        decimals += [(p, 6) for p in model[1:] if p is not None]
    if not all(_decimals_ok(values, places) for values, places in decimals):
        return None
    if None in items:  # (the scans and maps here run in C: no bytecode a row)
        has_item = np.fromiter(map(is_not, items, repeat(None)), np.bool_, n)
        item_text: Sequence[str] = [i or "" for i in items]
    else:
        has_item, item_text = np.ones(n, dtype=np.bool_), items  # type: ignore[assignment]
    if any(len(column) != n for column in (users, event_ids, item_text, digests)):
        raise ValueError("write_messages takes one value per row in every column")
    block = isinstance(digests, Digests)  # hex text: copied as it is, after the other texts
    columns = (users, event_ids, item_text) if block else (users, event_ids, item_text, digests)
    blob = "\x00".join(chain.from_iterable(zip(*columns, strict=True))).encode()
    text_at = np.empty((n, 8), dtype=np.int64)
    if not _text_spans(np.frombuffer(blob, np.uint8), text_at, len(columns)):
        return None  # a non-ASCII, escaped or control character somewhere: the dict path
    if isinstance(digests, Digests):
        text_at[:, 6] = len(blob) + Digests.WIDTH * np.arange(n)
        text_at[:, 7] = text_at[:, 6] + Digests.WIDTH
        blob += digests.text.encode("ascii")
    text = np.frombuffer(blob, np.uint8)
    at_row = orjson.dumps(scored_at)
    version = orjson.dumps(model[0]) if model is not None else b""
    pieces = [b'{"user_id":"', b'","event_id":"', b'","event_ts":', b',"item_id":"',
              b'","partition":', b',"item_id":null,"partition":', b',"offset":',
              b',"rule":{"score":', b',"label":', b',"reasons":[',
              b']},"model":{"version":' + version + b',"interaction":',
              b',"interaction_online":', b',"propensity":',
              b'},"scored_at":' + at_row + b',"fd":"',
              b']},"model":' + (skipped or b"null") + b',"scored_at":' + at_row + b',"fd":"',
              b'"}']  # fmt: skip
    parts, part_at = _bytes_table(pieces)
    label_bytes, label_at = _bytes_table([orjson.dumps(x) for x in label_names])
    name_bytes, name_at = _bytes_table([orjson.dumps(x) for x in signal_names])
    if label_codes_of is None:
        code = {name: k for k, name in enumerate(label_names)}
        label_codes_of = np.fromiter(map(code.__getitem__, labels), np.int64, n)
    zeros = np.zeros(n)
    interaction, propensity, online = (model[1], model[2], model[3]) if model else (zeros,) * 3
    # Room for the longest row: every piece, each number at its widest (24 bytes), each
    # signal with the longest name, the longest label; the texts as they are.
    widest = max(map(len, [*[orjson.dumps(x) for x in signal_names], b""]))
    per_row = (len(b"".join(pieces)) + 8 * 24 + signal.shape[1] * (widest + 28)
               + max(map(len, [orjson.dumps(x) for x in label_names])))  # fmt: skip
    size = len(blob) + n * per_row
    out = np.empty(size, dtype=np.uint8)
    row_ends = np.empty(n, dtype=np.int64)
    _write(out, parts, part_at, text, text_at, has_item,
           np.asarray(ts, np.int64), np.asarray(partitions, np.int64),
           np.asarray(offsets, np.int64), np.asarray(score, np.float64), label_codes_of,
           label_bytes, label_at, np.asarray(signal, np.int64), np.asarray(points, np.float64),
           name_bytes, name_at, model is not None, np.asarray(interaction, np.float64),
           np.asarray(online if online is not None else zeros, np.float64), online is not None,
           np.asarray(propensity, np.float64), row_ends)  # fmt: skip
    return memoryview(out[: row_ends[-1]].data), row_ends  # (not copied: framed from as it is)


def warm_up() -> None:
    """Load the compiled writer (numba's on-disk cache, or a compile on first use) now, so the
    consumer's first batch is not seconds late."""
    for model in (None, ("v", np.ones(1), np.ones(1), None), ("v", *[np.ones(1)] * 3)):
        write_messages(["u"], ["e"], [None], [0], [0], [0], np.zeros(1), ["low"],
                       np.zeros((1, 1), np.int64), np.ones((1, 1)), ["s"], ["d"], 0.0,
                       model)  # type: ignore[arg-type]  # fmt: skip
