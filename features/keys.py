"""The Redis key layout. Every key that embeds an id goes through `escape_id`.

    u:{<user>}                 hash   user aggregates (incl. the current session)
    u:{<user>}:items           set    distinct items the user touched
    u:{<user>}:score           hash   the user's current scores, label, reasons, model version
    u:{<user>}:seen            zset   the user's recent event ids, score = event time (dedupe)
    s:{<user>}:<session>       hash   one session's aggregates (expires once finished)
    i:{<item>}                 hash   item aggregates (atomic increments: shared by partitions)
    im:{<item>}                hash   item metadata (genres, year), written at replay start
    engage:offset:<topic>:<p>  string last applied offset of partition p (same transaction as state)
    engage:stats:<topic>       hash   processed / dead-lettered counters (same transaction)
    engage:lb:rule / lb:model  zset   leaderboards by rule score / model propensity

The `{...}` is a Redis Cluster hash tag: all of one user's keys share a slot. Escaping makes
`:`, `{`, `}`, `%` and control characters impossible inside a tag, so no two ids collide.
"""

from __future__ import annotations

from urllib.parse import quote

_SAFE = "!\"#$&'()*+,-./;<=>?@[\\]^_`|~"


def escape_id(raw: str) -> str:
    """Percent-encode everything that could break the key grammar; injective by construction."""
    return quote(raw, safe=_SAFE)


def _tagged(prefix: str, raw_id: str, suffix: str = "") -> str:
    """`prefix:{escaped id}suffix`: the braces make the id the Redis Cluster hash tag."""
    return f"{prefix}:{{{escape_id(raw_id)}}}{suffix}"


def user_key(user_id: str) -> str:
    return _tagged("u", user_id)


def user_items_key(user_id: str) -> str:
    return _tagged("u", user_id, ":items")


def user_score_key(user_id: str) -> str:
    return _tagged("u", user_id, ":score")


def user_recent_ids_key(user_id: str) -> str:
    return _tagged("u", user_id, ":seen")


def session_key(user_id: str, session_id: str) -> str:
    return _tagged("s", user_id, f":{escape_id(session_id)}")


def item_key(item_id: str) -> str:
    return _tagged("i", item_id)


def item_meta_key(item_id: str) -> str:
    return _tagged("im", item_id)


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
