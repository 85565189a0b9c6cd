"""The head every live state's bytes start with (quality, drift, online calibration, funnel
join): a magic, a format number, then fields of the state's own. One reading of it, so each
state refuses foreign or corrupt bytes the same way: bytes that are not a whole state are a
`BadState` (corruption: never silently reset), a whole state of another format a
`StateMismatch` (the caller starts afresh)."""

from __future__ import annotations

import struct
from typing import Any


class BadState(ValueError):
    """Bytes that are not a whole state."""


class StateMismatch(ValueError):
    """A whole state that must not be applied (another format, model, configuration)."""


def read_head(
    head: struct.Struct, data: bytes | memoryview, magic: bytes, fmt: int, name: str,
    bad: type[BadState] = BadState, mismatch: type[StateMismatch] = StateMismatch,
) -> tuple[Any, ...]:  # fmt: skip
    """The fields of `head` after its magic and format (the first two), checked: `bad` if
    the bytes are too short or another magic, `mismatch` if another format. `name` names the
    state in the messages ("drift state")."""
    article = "an" if name[:1] in "aeiou" else "a"
    try:
        fields = head.unpack_from(data, 0)
    except struct.error as exc:
        raise bad(f"not {article} {name}") from exc
    if fields[0] != magic:
        raise bad(f"not {article} {name}")
    if fields[1] != fmt:
        raise mismatch(f"{name} of format {fields[1]}, not {fmt}")
    return tuple(fields[2:])
