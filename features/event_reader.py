"""Messages to an `EventBatch` in one compiled pass, with pydantic as the definition.

Why: validating each message with the `Event` model costs ~1.4 us, and making the object and
reading its fields back ~0.8 more: the largest part of the consumer thread's front end. Most
messages are in the canonical encoding (`Event.to_json`: the fields in declaration order,
no whitespace, no context), which a numba loop reads in ~0.2 us, its ids cut out of the batch
text afterwards: the user, item and session ids interned (`CodedColumns`: a string per distinct id,
the fold's tables then work per distinct id), the event ids split out of one joined text.

The compiled reader takes a message only if it is sure of the outcome: the canonical layout
(each optional field present or not), ids of printable ASCII with no escapes (so a byte is a
character), integers and plain decimals it converts exactly, every check of the model met.
Anything else, valid or not (a context, an escape, an exponent, a key out of order, a wrong
value), it declines, and `decode_event` (pydantic) decides, with the error reasons it always
gave. So the reader never accepts what validation refuses nor reads a field differently:
tests/test_event_reader.py checks that on random and mutated messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import numpy as np
from numba import njit

from features.event_batch import CodedColumns, EventBatch
from features.events import (
    MAX_MESSAGE_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    SCHEMA_VERSION,
    DecodeError,
    Event,
    EventType,
    decode_event,
)  # fmt: skip
from features.vector import N_CONTEXT_FACTS, context_fact_columns

#: The fields in the canonical order; which are required; the longest id each may hold.
_KEYS = ("event_id", "user_id", "ts", "event_type", "item_id", "session_id", "value", "context",
         "source", "schema_version")  # fmt: skip
_EVENT_ID, _USER_ID, _TS, _TYPE, _ITEM_ID, _SESSION_ID, _VALUE, _CONTEXT, _SOURCE, _VERSION = range(
    10
)
#: The keys a message must have, as bits (1 << key).
_REQUIRED_MASK = sum(1 << k for k in (_EVENT_ID, _USER_ID, _TS, _TYPE, _SOURCE, _VERSION))
_MAX_LEN = np.array([256, 256, 0, 0, 256, 256, 0, 0, 64, 0], dtype=np.int64)
#: A context: at most this many entries, keys of at most 64 characters, strings of 256.
_MAX_ENTRIES, _MAX_CONTEXT_KEY, _MAX_CONTEXT_TEXT = 32, 64, 256
#: Kinds of context values, as `read_events` makes them: str, int, float, True, False.
_TEXT, _INT, _FLOAT, _TRUE, _FALSE = range(5)
#: Distinct context keys and texts a batch may hold (beyond: its other contexts go to the model).
_MAX_WORDS = 512
_TYPES = tuple(EventType)
_TYPE_OBJECTS = np.array(_TYPES, dtype=object)  # (indexed by a batch's type codes at once)
_RATING = _TYPES.index(EventType.RATING)


def _table(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words as a padded byte table and their lengths (for the compiled comparisons)."""
    encoded = [w.encode() for w in words]
    table = np.zeros((len(encoded), max(map(len, encoded))), dtype=np.uint8)
    for k, word in enumerate(encoded):
        table[k, : len(word)] = np.frombuffer(word, dtype=np.uint8)
    return table, np.array([len(w) for w in encoded], dtype=np.int64)


_KEY_TABLE, _KEY_LEN = _table(_KEYS)
_TYPE_TABLE, _TYPE_LEN = _table([t.value for t in _TYPES])
#: Powers of ten a float holds exactly: a decimal of at most 15 digits is then read exactly
#: (an exact integer divided by an exact power: one correctly rounded division).
_POW10 = np.array([10.0**k for k in range(23)])
_MAX_DIGITS = 15
_QUOTE, _BACKSLASH, _COLON, _COMMA, _OPEN, _CLOSE = 34, 92, 58, 44, 123, 125
_DOT, _MINUS, _ZERO, _NINE, _E, _LOWER_E = 46, 45, 48, 57, 69, 101
#: Columns of the spans table: start and end of event_id, user_id, item_id, session_id, source.
_SPAN_OF = np.array([0, 1, -1, -1, 2, 3, -1, -1, 4, -1], dtype=np.int64)
_TRUE_TEXT, _FALSE_TEXT = np.frombuffer(b"true", np.uint8), np.frombuffer(b"false", np.uint8)


@njit(cache=True, nogil=True)
def _match(
    buf: np.ndarray, start: int, end: int, table: np.ndarray, lengths: np.ndarray, first: int
) -> int:  # the row (>= first) equal to buf[start:end]
    n = end - start
    for k in range(first, len(lengths)):
        if lengths[k] == n:
            same = True
            for j in range(n):
                if buf[start + j] != table[k, j]:
                    same = False
                    break
            if same:
                return k
    return -1


@njit(cache=True, nogil=True)
def _string_end(
    buf: np.ndarray, p: int, end: int
) -> int:  # the closing quote of a plain string opened before p (-1)
    while p < end:
        c = buf[p]
        if c == _QUOTE:
            return p
        if c < 32 or c > 126 or c == _BACKSLASH:
            return -1
        p += 1
    return -1


@njit(cache=True, nogil=True)
def _digits(buf: np.ndarray, p: int, end: int) -> int:  # the position after a run of digits from p
    while p < end and _ZERO <= buf[p] <= _NINE:
        p += 1
    return p


@njit(cache=True, nogil=True)
def _number(buf: np.ndarray, p: int, end: int, signed: bool) -> tuple[int, int, float, int]:
    """A JSON number at p it reads exactly: (_INT or _FLOAT, or -1 to decline; its integer
    value, its float value, the position after it). Integers of at most 18 digits; decimals
    of at most 15 digits in all, no exponent; a sign only if `signed`."""
    negative = p < end and buf[p] == _MINUS
    if negative:
        if not signed:
            return -1, 0, 0.0, p
        p += 1
    q = _digits(buf, p, end)
    if q == p or q - p > 18 or (buf[p] == _ZERO and q - p > 1):  # none, too many, leading 0
        return -1, 0, 0.0, p
    int_digits = q - p
    mantissa = 0
    for j in range(p, q):
        mantissa = mantissa * 10 + (buf[j] - _ZERO)
    kind, frac, p = _INT, 0, q
    if p < end and buf[p] == _DOT:
        q = _digits(buf, p + 1, end)
        frac = q - p - 1
        if frac == 0 or int_digits + frac > _MAX_DIGITS:
            return -1, 0, 0.0, p
        for j in range(p + 1, q):
            mantissa = mantissa * 10 + (buf[j] - _ZERO)
        kind, p = _FLOAT, q
    if p < end and (buf[p] == _E or buf[p] == _LOWER_E):  # an exponent
        return -1, 0, 0.0, p
    value = mantissa / _POW10[frac]
    if negative:
        return kind, -mantissa, -value, p
    return kind, mantissa, value, p


@njit(cache=True, nogil=True)
def _same(buf: np.ndarray, a: int, b: int, length: int) -> bool:  # buf[a:a+n] == buf[b:b+n]
    j = 0
    while j < length and buf[a + j] == buf[b + j]:
        j += 1
    return j == length


@njit(cache=True, nogil=True)
def _literal(buf: np.ndarray, p: int, end: int, word: np.ndarray) -> bool:
    j, n = 0, len(word)
    while j < n and p + j < end and buf[p + j] == word[j]:
        j += 1
    return j == n


@njit(cache=True, nogil=True)
def _word(buf: np.ndarray, a: int, b: int, words: np.ndarray, used: np.ndarray) -> int:
    """The id of the text `buf[a:b]` in `words` (spans of distinct texts, `used[1]` of them),
    added if new; -1 when the table is full. Context keys and texts repeat from event to
    event: each distinct one is cut out once."""
    n = b - a
    held: int = used[1]
    for k in range(held):
        if words[k, 1] - words[k, 0] == n and _same(buf, words[k, 0], a, n):
            return k
    if held == len(words):
        return -1
    words[held, 0], words[held, 1] = a, b
    used[1] = held + 1
    return held


@njit(cache=True, nogil=True)
def _context(
    buf: np.ndarray, p: int, end: int, entries: np.ndarray, floats: np.ndarray,
    words: np.ndarray, used: np.ndarray,
) -> tuple[int, int, int]:  # fmt: skip
    """A flat context object at p into `entries` (key's word, kind, text's word, integer)
    and `floats`, from `used[0]` on: (its first entry, how many, the position after it), or
    a count of -1 to decline (no room left counts)."""
    if buf[p] != _OPEN:
        return 0, -1, p
    first, count = used[0], 0
    p += 1
    if p < end and buf[p] == _CLOSE:
        return first, 0, p + 1
    while True:
        if p >= end or buf[p] != _QUOTE:
            return 0, -1, p
        key_end = _string_end(buf, p + 1, end)
        if key_end < 0 or key_end - p - 1 > _MAX_CONTEXT_KEY:
            return 0, -1, p
        at = first + count
        if count == _MAX_ENTRIES or at >= len(entries):
            return 0, -1, p
        key = _word(buf, p + 1, key_end, words, used)
        if key < 0:
            return 0, -1, p
        for k in range(first, at):  # a repeated key: left to the model
            if entries[k, 0] == key:
                return 0, -1, p
        entries[at, 0] = key
        p = key_end + 1
        if p + 1 >= end or buf[p] != _COLON:
            return 0, -1, p
        p += 1
        c = buf[p]
        if c == _QUOTE:
            e = _string_end(buf, p + 1, end)
            if e < 0 or e - p - 1 > _MAX_CONTEXT_TEXT:
                return 0, -1, p
            word = _word(buf, p + 1, e, words, used)
            if word < 0:
                return 0, -1, p
            entries[at, 1], entries[at, 2] = _TEXT, word
            p = e + 1
        elif _literal(buf, p, end, _TRUE_TEXT):
            entries[at, 1] = _TRUE
            p += 4
        elif _literal(buf, p, end, _FALSE_TEXT):
            entries[at, 1] = _FALSE
            p += 5
        else:
            kind, integer, number, p = _number(buf, p, end, True)
            if kind < 0:
                return 0, -1, p
            entries[at, 1], entries[at, 3] = kind, integer
            floats[at] = number
        count += 1
        if p >= end:
            return 0, -1, p
        if buf[p] == _CLOSE:
            used[0] = first + count
            return first, count, p + 1
        if buf[p] != _COMMA:
            return 0, -1, p
        p += 1


@njit(cache=True, nogil=True)
def _read_one(
    buf: np.ndarray, start: int, end: int, row: int, spans: np.ndarray, ts: np.ndarray,
    kinds: np.ndarray, values: np.ndarray, has_value: np.ndarray, contexts: np.ndarray,
    entries: np.ndarray, floats: np.ndarray, words: np.ndarray, used: np.ndarray,
) -> bool:  # fmt: skip
    """Reads one message (`buf[start:end]`) into row `row`; False to decline it."""
    if end - start > MAX_MESSAGE_BYTES or end - start < 2 or buf[start] != _OPEN:
        return False
    p = start + 1
    last = -1
    seen = 0
    while True:
        if p >= end or buf[p] != _QUOTE:
            return False
        key_end = _string_end(buf, p + 1, end)
        if key_end < 0:
            return False
        key = _match(buf, p + 1, key_end, _KEY_TABLE, _KEY_LEN, last + 1)
        if key < 0:  # unknown, repeated or out of order
            return False
        last = key
        seen |= 1 << key
        p = key_end + 1
        if p >= end or buf[p] != _COLON:
            return False
        p += 1
        if p >= end:
            return False
        if _MAX_LEN[key] > 0 or key == _TYPE:  # a string: an id, the source or the type
            if buf[p] != _QUOTE:
                return False
            s = p + 1
            e = _string_end(buf, s, end)
            if e < 0:
                return False
            if key == _TYPE:
                kind = _match(buf, s, e, _TYPE_TABLE, _TYPE_LEN, 0)
                if kind < 0:
                    return False
                kinds[row] = kind
            else:
                if e - s < 1 or e - s > _MAX_LEN[key]:
                    return False
                spans[row, 2 * _SPAN_OF[key]] = s
                spans[row, 2 * _SPAN_OF[key] + 1] = e
            p = e + 1
        elif key == _VERSION:  # schema_version: exactly the one understood
            if buf[p] - _ZERO != SCHEMA_VERSION or p + 1 >= end or _ZERO <= buf[p + 1] <= _NINE:
                return False
            p += 1
        elif key == _CONTEXT:
            first, count, p = _context(buf, p, end, entries, floats, words, used)
            if count < 0:
                return False
            contexts[row, 0], contexts[row, 1] = first, count
        else:  # ts (an integer), value (an integer or a plain decimal of at most 15 digits)
            # (no sign: -0 reads as 0.0 there, -0.0 as -0.0; left to the model)
            kind, integer, number, q = _number(buf, p, end, False)
            if kind < 0:
                return False
            if key == _TS:
                if kind != _INT or integer < MIN_TS_MS or integer > MAX_TS_MS:
                    return False
                ts[row] = integer
            else:
                if kind == _INT and q - p > _MAX_DIGITS:
                    return False
                values[row] = number
                has_value[row] = True
            p = q
        if p >= end:
            return False
        if buf[p] == _CLOSE:
            p += 1
            break
        if buf[p] != _COMMA:
            return False
        p += 1
    if p != end:
        return False
    if seen & _REQUIRED_MASK != _REQUIRED_MASK:
        return False
    # The model's own check: a rating has a value in [0, 10].
    rated: bool = has_value[row] and 0.0 <= values[row] <= 10.0
    return kinds[row] != _RATING or rated


_MIXED, _ALL_ABSENT, _ALL_SAME = 0, 1, 2


@njit(cache=True, nogil=True)
def _uniform(buf: np.ndarray, spans: np.ndarray, at: int) -> int:
    """Whether id column `at` is absent in every row, the same text in every row, or mixed:
    a batch's source is nearly always one text, and a MovieLens batch has no session ids, so
    the column is one object repeated instead of a string cut per row."""
    n = spans.shape[0]
    if n == 0:
        return _MIXED
    s0, e0 = spans[0, 2 * at], spans[0, 2 * at + 1]
    for i in range(1, n):
        s, e = spans[i, 2 * at], spans[i, 2 * at + 1]
        if (s < 0) != (s0 < 0):
            return _MIXED
        if s0 >= 0:
            if e - s != e0 - s0:
                return _MIXED
            for k in range(e - s):
                if buf[s + k] != buf[s0 + k]:
                    return _MIXED
    return _ALL_ABSENT if s0 < 0 else _ALL_SAME


@njit(cache=True, nogil=True)
def _read_all(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every message (`buf[starts[i]:ends[i]]`): whether it was read, its id spans, time,
    type, value and whether it has one, its context (first entry and count, -1: none) and
    the context entries (`_context`)."""
    n = len(ends)
    contexts = np.full((n, 2), -1, dtype=np.int64)
    entries = np.empty((8 * n + 64, 4), dtype=np.int64)  # more: the rest goes to the model
    floats = np.empty(len(entries), dtype=np.float64)
    words = np.empty((_MAX_WORDS, 2), dtype=np.int64)
    used = np.zeros(2, dtype=np.int64)  # entries, words
    spans = np.full((n, 10), -1, dtype=np.int64)
    ts = np.zeros(n, dtype=np.int64)
    kinds = np.zeros(n, dtype=np.int64)
    values = np.zeros(n, dtype=np.float64)
    has_value = np.zeros(n, dtype=np.bool_)
    ok = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        ok[i] = _read_one(buf, starts[i], ends[i], i, spans, ts, kinds, values, has_value,
                          contexts, entries, floats, words, used)  # fmt: skip
    used_entries, used_words = used[0], used[1]
    return (ok, spans, ts, kinds, values, has_value, contexts, entries[:used_entries],
            floats[:used_entries], words[:used_words])  # fmt: skip


@njit(cache=True, nogil=True)
def _intern(buf: np.ndarray, spans: np.ndarray, at: int) -> tuple[np.ndarray, np.ndarray]:
    """Id column `at` as codes: each row's (-1: absent), numbered in the order of the first
    row holding each distinct text, and that row of each code (open addressing on an FNV-1a
    hash of the bytes, compared byte by byte)."""
    n = spans.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    codes = np.full(n, -1, dtype=np.int64)
    firsts = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        s, e = spans[i, 2 * at], spans[i, 2 * at + 1]
        if s < 0:
            continue
        h = np.uint64(14695981039346656037)
        for p in range(s, e):
            h = (h ^ np.uint64(buf[p])) * np.uint64(1099511628211)
        slot = np.int64(h & np.uint64(mask))
        while True:
            code = table[slot]
            if code < 0:
                table[slot] = count
                firsts[count] = i
                codes[i] = count
                count += 1
                break
            j = firsts[code]
            s2, e2 = spans[j, 2 * at], spans[j, 2 * at + 1]
            if e2 - s2 == e - s and _same(buf, s, s2, e - s):
                codes[i] = code
                break
            slot = (slot + 1) & mask
    return codes, firsts[:count]


@njit(cache=True, nogil=True)
def _joined(buf: np.ndarray, spans: np.ndarray, at: int) -> np.ndarray:
    """Id column `at`'s texts one after another with a 0 byte between them (an absent one
    as empty; a read id holds no 0 byte), for one `str.split`: a string per row made in C."""
    n = spans.shape[0]
    total = max(n - 1, 0)
    for i in range(n):
        if spans[i, 2 * at] >= 0:
            total += spans[i, 2 * at + 1] - spans[i, 2 * at]
    out = np.empty(total, dtype=np.uint8)
    p = 0
    for i in range(n):
        if i:
            out[p] = 0
            p += 1
        s, e = spans[i, 2 * at], spans[i, 2 * at + 1]
        for k in range(s, e):  # (an absent id: s < 0 and e < 0, nothing to copy)
            out[p] = buf[k]
            p += 1
    return out


#: The valid events, the positions of their messages, and each invalid one's with its error.
Read = tuple[EventBatch, list[int], list[tuple[int, DecodeError]]]


def read_events(messages: Sequence[bytes | None]) -> Read:
    """The valid messages as an `EventBatch`, the positions (in `messages`) of its rows, and
    each invalid message's position with the reason validation gives."""
    n = len(messages)
    present: Sequence[bytes] = messages  # type: ignore[assignment]
    try:
        lengths = np.fromiter(map(len, present), np.int64, n)
    except TypeError:  # a tombstone (None) among them: read as empty, so the model says why
        present = [m or b"" for m in messages]
        lengths = np.fromiter(map(len, present), np.int64, n)
    ends = np.cumsum(lengths)
    return read_block(b"".join(present), ends - lengths, ends, messages)


def read_block(
    joined: bytes, starts: np.ndarray, ends: np.ndarray, messages: Sequence[bytes | None]
) -> Read:
    """`read_events` of messages that lie in one buffer already, message i at
    `joined[starts[i]:ends[i]]` (a tombstone empty), whatever lies between them (a fetched
    batch's record framing and keys); `messages` is read only for the ones declined."""
    n = len(ends)
    buf = np.frombuffer(joined, dtype=np.uint8)
    ok, spans, ts, kinds, values, has_value, contexts, entries, floats, words = _read_all(
        buf, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    )
    text = joined.decode("latin-1")  # one character per byte: the spans index it as they are

    def cut(at: int) -> list[Any]:  # a required id: absent only where declined
        uniform = _uniform(buf, spans, at)
        if uniform == _ALL_ABSENT:
            return [None] * n
        if uniform == _ALL_SAME:  # one string for every row (a source, a session's id)
            return [text[spans[0, 2 * at] : spans[0, 2 * at + 1]]] * n
        return _joined(buf, spans, at).tobytes().decode("latin-1").split("\x00")

    def interned(at: int) -> tuple[list[str | None], list[str], np.ndarray]:
        codes, firsts = _intern(buf, spans, at)
        names = _joined(buf, spans[firsts], at).tobytes().decode("latin-1").split("\x00")
        if not len(firsts):
            names = []  # (split gives [""])
        column = np.array([*names, None], dtype=object)[codes].tolist()  # -1: the None
        return column, names, codes

    context_dicts, facts = _contexts(text, ok, contexts, entries, floats, words)
    users, user_names, user_codes = interned(_SPAN_OF[_USER_ID])
    items, item_names, item_codes = interned(_SPAN_OF[_ITEM_ID])
    sessions, session_names, session_codes = interned(_SPAN_OF[_SESSION_ID])
    given = values.tolist()
    if not has_value.all():
        for row in np.flatnonzero(~has_value).tolist():
            given[row] = None
    batch = EventBatch(
        cut(_SPAN_OF[_EVENT_ID]), users, ts.tolist(), _TYPE_OBJECTS[kinds].tolist(),  # type: ignore[arg-type]
        items, sessions, given, context_dicts, cut(_SPAN_OF[_SOURCE]),
        codes=CodedColumns(user_names, user_codes, item_names, item_codes, kinds, ts,
                           np.where(has_value, values, np.nan), facts,
                           session_names, session_codes),
    )  # fmt: skip
    declined = np.flatnonzero(~ok).tolist()
    if not declined:
        return batch, list(range(n)), []
    return _patched(batch, messages, declined)


class ReadContexts(Sequence[dict[str, Any] | None]):
    """A read batch's contexts, each made into its dict only when read (a refused or
    dead-lettered event, a taken row): the fold reads the facts it needs from the reader's
    table (`CodedColumns.context_facts`). A dict a row was 4.2 us of the 5.9 an event of
    reading a funnel batch (4,000 synthetic events of four context keys each)."""

    def __init__(
        self, spans: np.ndarray, entries: np.ndarray, floats: np.ndarray, texts: list[str]
    ) -> None:
        self.spans = spans  # per row: its first entry and count (-1: no context)
        self.entries, self.floats, self.texts = entries, floats, texts

    def __len__(self) -> int:
        return len(self.spans)

    def subset(self, rows: Sequence[int]) -> ReadContexts:
        """Rows `rows`, in that order, still unmade: a batch's shown rows are taken for their
        ids, and making their contexts cost ~2 us a row there (1M synthetic events)."""
        return ReadContexts(
            self.spans[np.asarray(rows, dtype=np.int64)], self.entries, self.floats, self.texts
        )

    @overload
    def __getitem__(self, index: int) -> dict[str, Any] | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any] | None]: ...

    def __getitem__(
        self, index: int | slice
    ) -> dict[str, Any] | list[dict[str, Any] | None] | None:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        first, count = self.spans[index].tolist()
        if count < 0:
            return None
        texts = self.texts
        context: dict[str, Any] = {}
        for at in range(first, first + count):
            key, kind, word, integer = self.entries[at].tolist()
            context[texts[key]] = (
                texts[word] if kind == _TEXT else integer if kind == _INT
                else float(self.floats[at]) if kind == _FLOAT else kind == _TRUE
            )  # fmt: skip
        return context


def _contexts(
    text: str, ok: np.ndarray, contexts: np.ndarray, entries: np.ndarray, floats: np.ndarray,
    words: np.ndarray,
) -> tuple[Sequence[dict[str, Any] | None], np.ndarray]:  # fmt: skip
    """Each message's context (None: none, or a message the model reads), as a column that
    makes a row's dict when read, and every row's context facts
    (`vector.context_fact_columns`)."""
    if not (ok & (contexts[:, 1] >= 0)).any():
        return [None] * len(ok), np.zeros((len(ok), N_CONTEXT_FACTS), dtype=np.float64)
    texts = [text[a:b] for a, b in words.tolist()]
    spans = np.where(ok[:, None], contexts, -1)
    return ReadContexts(spans, entries, floats, texts), _facts(ok, contexts, entries, floats,
                                                               texts)  # fmt: skip


def _facts(
    ok: np.ndarray, contexts: np.ndarray, entries: np.ndarray, floats: np.ndarray,
    texts: list[str],
) -> np.ndarray:  # fmt: skip
    """The context facts of every row from the entry table (rows with no context: zeros)."""
    rows = np.flatnonzero(ok & (contexts[:, 1] > 0))
    counts = contexts[rows, 1]
    block = np.cumsum(counts) - counts  # where each row's entries start once concatenated
    at = np.arange(int(counts.sum())) + np.repeat(contexts[rows, 0] - block, counts)
    key, kind, word, integer = entries[at].T
    numeric = np.select(
        [kind == _INT, kind == _FLOAT, kind == _TRUE, kind == _FALSE],
        [integer.astype(np.float64), floats[at], 1.0, 0.0], np.nan,
    )  # fmt: skip
    value_word = np.where(kind == _TEXT, word, -1)
    return context_fact_columns(len(ok), np.repeat(rows, counts), key, value_word, numeric, texts)


def _patched(batch: EventBatch, messages: Sequence[bytes | None], declined: list[int]) -> Read:
    """`batch` with the rows the reader declined validated by the model: the valid ones
    written in, the invalid ones removed with their reasons."""
    errors: list[tuple[int, DecodeError]] = []
    batch.codes = None  # rows change: the codes are made again where wanted
    batch.contexts = list(batch.contexts)  # (a `ReadContexts` is not written in)
    for i in declined:
        try:
            event = decode_event(messages[i])
        except DecodeError as exc:
            errors.append((i, exc))
            continue
        _put(batch, i, event)
    if not errors:
        return batch, list(range(len(batch))), []
    bad = {i for i, _ in errors}
    rows = [i for i in range(len(batch)) if i not in bad]
    return batch.take(rows), rows, errors


def _put(batch: EventBatch, i: int, event: Event) -> None:
    batch.event_ids[i], batch.user_ids[i], batch.ts[i] = event.event_id, event.user_id, event.ts
    batch.event_types[i], batch.item_ids[i] = event.event_type, event.item_id
    batch.session_ids[i], batch.values[i] = event.session_id, event.value
    contexts = batch.contexts
    assert isinstance(contexts, list)  # (`_patched`)
    contexts[i], batch.sources[i] = event.context, event.source
