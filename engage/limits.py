"""The input limits the CLI and the HTTP API share, so both accept exactly the same requests.

Ids: the event schema's limit (`features.events.Id`): a longer id can never be on an event,
so it can never have been scored; both interfaces reject it as bad input (exit 2, HTTP 422)
instead of looking it up. Top n: how many users one `engage top` or `GET /users/top` returns.
"""

from __future__ import annotations

from typing import get_args

from features.events import Id


def _id_limits() -> tuple[int, int]:
    (constraints,) = (m for m in get_args(Id)[1:] if hasattr(m, "max_length"))
    return constraints.min_length, constraints.max_length


#: Characters in a user or item id, as the event schema allows them.
MIN_ID_CHARS, MAX_ID_CHARS = _id_limits()
#: `engage top N` and `GET /users/top?n=N`: 1 <= N <= TOP_N_MAX.
TOP_N_MIN, TOP_N_MAX = 1, 10_000


def id_problem(value: str) -> str | None:
    """Why `value` cannot be a user or item id, or None when it can."""
    if len(value) < MIN_ID_CHARS:
        return "empty"
    if len(value) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} characters ({len(value)}); no event can carry it"
    try:
        value.encode()
    except UnicodeEncodeError:  # e.g. undecodable bytes in a command-line argument
        return "not valid UTF-8 text"
    return None
