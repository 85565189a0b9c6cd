"""The Redis key layout, documented here once (the README points here). Every key that embeds
an id goes through `escape_id`.

    u:{<user>}                 hash   user aggregates, incl. the current session: `cs_id` and
                                      `st`, the fields of features.spec.USER_STATE packed by
                                      features.state_codec (counts by type, engaged, ratings,
                                      first/last time, decayed sums, sessions, per-genre counts)
    u:{<user>}:items           set    distinct items the user touched
    u:{<user>}:score           hash   the user's current scores: rule score, label, reasons,
                                      model propensity and reasons, model version, the event
                                      scored (id, time) and the update time
    s:{<user>}:<session>       string one closed session's aggregates, features.spec.SESSION_STATE,
                                      a JSON object written when it closes, expiring
                                      `session_ttl_s` later
                                      (the open session is the user's `cs_*` state fields)
    i:{<item>}                 hash   item aggregates, features.spec.ITEM_STATE: one field
                                      `p<partition>` per partition that touched the item, its
                                      sums packed by features.item_shards (the item = their sum)
    im:{<item>}                hash   item metadata (genres, year), written at replay start
    engage:offset:<topic>:<p>  string last applied offset of partition p (same transaction as state)
    engage:stats:<topic>       hash   processed / dead-lettered counters (same transaction)
    engage:lb:rule / lb:model  zset   leaderboards by rule score / model propensity
    engage:events-topics       set    the events topics consumed into this database (a second
                                      one is warned about: users and leaderboards are shared)
    engage:scores:<topic>      pubsub channel of score updates (published with the transaction)

The `{...}` is a Redis Cluster hash tag: all of one user's keys share a slot. Escaping makes
`:`, `{`, `}`, `%` and control characters impossible inside a tag, so no two ids collide.
"""

from __future__ import annotations

import re
from urllib.parse import quote

_SAFE = "!\"#$&'()*+,-./;<=>?@[\\]^_`|~"
#: Ids `quote` would return unchanged (its always-safe characters and `_SAFE`): most ids. The
#: match costs 0.8 us where `quote` costs 1.5, and the store builds ~1.5 keys per event.
_unchanged = re.compile("[A-Za-z0-9" + re.escape("_.-~" + _SAFE) + "]*").fullmatch


#: `quote`'s escape of each ASCII character it escapes: an ASCII id is escaped by one
#: `str.translate` (0.24 us for a session id like "s:17:3"; `quote` 0.83 us), a batch's ids
#: together by `_escape_ascii`.
_ASCII_ESCAPES = {
    code: f"%{code:02X}" for code in range(128) if not _unchanged(chr(code))
}  # fmt: skip


#: Each ASCII character `_ASCII_ESCAPES` escapes, "%" first (the others' escapes hold one).
_ESCAPE_ORDER = sorted(map(chr, _ASCII_ESCAPES), key=lambda char: char != "%")


def _escape_ascii(text: str) -> str:
    """`text.translate(_ASCII_ESCAPES)` by a `str.replace` of each character it holds: a
    translate looks every character up (~40 ns each: 475 us for a funnel batch's 773 session
    ids, all of them holding ":"), a search and replace runs over the text in C (44 us). For
    one short id a translate is faster (0.84 against 1.21 us)."""
    for char in _ESCAPE_ORDER:
        if char in text:
            text = text.replace(char, _ASCII_ESCAPES[ord(char)])
    return text


def escape_id(raw: str) -> str:
    """Percent-encode everything that could break the key grammar; injective by construction.

    >>> escape_id("alice")
    'alice'
    >>> escape_id("a:b{c}%")  # separators, hash-tag braces and the escape character itself
    'a%3Ab%7Bc%7D%25'
    >>> user_key("a}b"), session_key("u", "s:1")
    ('u:{a%7Db}', 's:{u}:s%3A1')
    """
    if _unchanged(raw):
        return raw
    return raw.translate(_ASCII_ESCAPES) if raw.isascii() else quote(raw, safe=_SAFE)


def _tagged(prefix: str, raw_id: str, suffix: str = "") -> str:
    """`prefix:{escaped id}suffix`: the braces make the id the Redis Cluster hash tag."""
    return f"{prefix}:{{{escape_id(raw_id)}}}{suffix}"


def user_key(user_id: str) -> str:
    return _tagged("u", user_id)


def user_items_key(user_id: str) -> str:
    return _tagged("u", user_id, ":items")


def user_score_key(user_id: str) -> str:
    return _tagged("u", user_id, ":score")


def legacy_recent_ids_key(user_id: str) -> str:
    """Where an engage before the `seen` field of `u:{user}` kept the duplicate guard's ids:
    read once if a user's hash lacks the field, deleted when the field is written."""
    return _tagged("u", user_id, ":seen")


def session_key(user_id: str, session_id: str) -> str:
    return _tagged("s", user_id, f":{escape_id(session_id)}")


def item_key(item_id: str) -> str:
    return _tagged("i", item_id)


def item_meta_key(item_id: str) -> str:
    return _tagged("im", item_id)


def escape_ids(raw_ids: list[str]) -> list[str]:
    """`escape_id` of each id, with one match over their joined text when none needs it (the
    match is a character class: the whole text matches when every id does): a batch writes
    ~1,200 item keys: 237 -> 51 ns a key (`item_keys` against `item_key` one by one).

    >>> escape_ids(["31", "a.b"]), escape_ids(["31", "a:b", "", "%00"])
    (['31', 'a.b'], ['31', 'a%3Ab', '', '%2500'])

    (An escaped ASCII id holds "%00" only where it had a NUL: its "%" is escaped too.)
    """
    joined = "".join(raw_ids)
    if _unchanged(joined):
        return raw_ids
    if joined.isascii() and "\x00" not in joined:  # escaped at once, split at the NULs' "%00"
        return _escape_ascii("\x00".join(raw_ids)).split("%00")
    return [escape_id(raw) for raw in raw_ids]


def user_keys(user_ids: list[str], suffix: str = "") -> list[str]:
    """`u:{user}<suffix>` of each id (`user_key` with `suffix` "", `user_items_key` with
    ":items", `user_score_key` with ":score"), escaped as `escape_ids` does: a batch of the
    1M-event synthetic run builds ~850 users' keys three times over.

    >>> ids = ["7", "a}b"]
    >>> user_keys(ids, ":score") == [user_score_key(i) for i in ids] and user_keys([]) == []
    True
    """
    return [f"u:{{{escaped}}}{suffix}" for escaped in escape_ids(user_ids)]


def session_keys(user_ids: list[str], session_ids: list[str]) -> list[str]:
    """`s:{user}:<session>` of each pair (`session_key` one by one), escaped as `escape_ids`
    does: a synthetic batch closes a session every ~5 events (0.4 -> 0.1 us a key).

    >>> session_keys(["u", "a}b"], ["s:1", "2"]) == [session_key("u", "s:1"),
    ...                                               session_key("a}b", "2")]
    True
    """
    pairs = zip(escape_ids(user_ids), escape_ids(session_ids), strict=True)
    return [f"s:{{{user}}}:{session}" for user, session in pairs]


def item_keys(item_ids: list[str]) -> list[str]:
    """`item_key` of each id.

    >>> ids = ["31", "a}b", "", "x%y"]
    >>> item_keys(ids) == [item_key(i) for i in ids] and item_keys([]) == []
    True
    """
    return [f"i:{{{escaped}}}" for escaped in escape_ids(item_ids)]


def item_meta_keys(item_ids: list[str]) -> list[str]:
    """`item_meta_key` of each id.

    >>> item_meta_keys(["31", "a:b"]) == [item_meta_key("31"), item_meta_key("a:b")]
    True
    """
    return [f"im:{{{escaped}}}" for escaped in escape_ids(item_ids)]


def offset_key(topic: str, partition: int) -> str:
    return f"engage:offset:{topic}:{partition}"


def stats_key(topic: str) -> str:
    return f"engage:stats:{topic}"


def leaderboard_key(kind: str) -> str:
    return f"engage:lb:{kind}"


def scores_channel(topic: str) -> str:
    return f"engage:scores:{topic}"


def unescape_user(key: str) -> str:
    """The user id inside a `u:{...}` key (for listings)."""
    from urllib.parse import unquote

    return unquote(key[key.index("{") + 1 : key.index("}")])
