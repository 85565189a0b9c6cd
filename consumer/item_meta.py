"""Items' metadata as a consumer holds it: read from Redis when a batch first meets an item,
and again once `refresh_s` seconds have passed.

Why: the catalogue can change while a consumer runs (an item's metadata written after its
first events, a genre list corrected). Read every batch, it would cost an HMGET an item a
batch (~1,200 items in a batch of 4,000 synthetic events); held for ever, as before, a change
reached the features only when the consumer restarted. Replays write an item's metadata
before its events, so what they score is the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from features.items import ItemMeta, MetaDecoder


class ItemMetaCache:
    """Every held item's metadata (`known`, the dict the fold's tables read), dropped whole
    every `refresh_s` seconds so that each item is read again when a batch next meets it."""

    def __init__(self, refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.known: dict[str, ItemMeta] = {}
        self._decoder = MetaDecoder()
        self._refresh_s = refresh_s
        self._clock = clock
        self._due = clock() + refresh_s

    def to_read(self, items: set[str]) -> list[str]:
        """Those of a batch's `items` whose metadata is to be read now: the ones not held
        (all of them once the refresh is due)."""
        now = self._clock()
        if now >= self._due:
            self.known.clear()  # (the same dict: tables folding over it see the reads)
            self._due = now + self._refresh_s
        return list(items.difference(self.known))  # walks `items`, not the ~10,000 held

    def learn(self, items: Sequence[str], replies: Iterable[Sequence[bytes | None]]) -> None:
        """Hold what was read: `replies` are the items' HMGETs of META_FIELDS, in order."""
        self.known.update(zip(items, self._decoder.decode(replies), strict=True))
