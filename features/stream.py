"""The batch step the consumer serves with and the offline module trains with.

A batch of events (a polled Kafka batch online; the whole log, in consumer order, offline) is
admitted by the duplicate guard and lateness policy (`features.admission`), then folded into
the state in one compiled call (`features.fold`): the point-in-time interaction features
before each event, the user's propensity features after it, and every state change. So the
features a model trains on are, by construction, the features it is served, and both sides
get the compiled speed. (`features.pipeline.MemoryState.step` is the same definition written
plainly, one event at a time, over dicts: the readable form the fold is tested against.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from features.admission import AdmissionPolicy
from features.aggregates import FeatureParams
from features.digest import digest_block
from features.event_batch import EventBatch
from features.event_reader import read_events
from features.events import Event
from features.fold import FoldOutput, FoldState, fold
from features.fold_layout import USER_COLUMN
from features.item_shards import LoadedItems

_LAST_TS = USER_COLUMN["last_ts"]


@dataclass
class FoldedBatch:
    """A batch admitted and folded: which events were applied, which refused and why, and the
    fold's output for the applied ones (its rows are the `admitted` events, in order)."""

    admitted: list[int]  # positions in the batch of the applied events
    refused: list[tuple[int, str]]  # positions of the refused events, with the reason
    out: FoldOutput


@dataclass
class StreamState:
    """Users, items and item metadata in `FoldState`'s tables, and each user's recent event ids
    (the duplicate guard): what one batch is folded over."""

    params: FeatureParams = field(default_factory=FeatureParams)
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    tables: FoldState = field(default_factory=FoldState)
    recent: dict[str, bytes] = field(default_factory=dict)  # features.recent_ids, packed

    def apply(self, events: Sequence[Event]) -> FoldedBatch:
        """Admit each event against what its predecessors left, then fold the admitted ones
        (`events`: best an `EventBatch`, whose columns both read). Admission reads only the
        user's latest applied event time (`last_ts`, a running maximum), so it can run ahead
        of the fold."""
        batch = EventBatch.of(events)
        index, users = self.tables.user_index, self.tables.users

        def last_applied(ids: list[str]) -> np.ndarray:
            rows = np.fromiter(map(index.get, ids, repeat(-1)), np.int64, len(ids))
            return np.where(rows >= 0, users[rows, _LAST_TS], 0.0)  # (-1: a new user)

        admitted, refused = self.admission.admit_all(batch, last_applied, self.recent)
        out = fold(self.tables, batch.take(admitted) if refused else batch, self.params)
        return FoldedBatch(admitted, refused, out)


def warm_up(params: FeatureParams | None = None) -> None:
    """Load the compiled reader, fold, vector digests and item-shard grouping (numba's
    on-disk cache, or a compile on first use) now, so the first batch a consumer takes is not
    seconds late."""
    from features.events import EventType

    probes = [
        Event(
            event_id=f"warm-up-{k}",
            user_id="warm-up",
            ts=946_684_800_000 + k,
            event_type=EventType.RATING,
            item_id="warm-up",
            value=4.0,
            source="warm-up",
        )
        for k in range(8)
    ]  # fmt: skip  (8 events of one user)
    folded = StreamState(params or FeatureParams()).apply(
        read_events([p.to_json() for p in probes])[0]
    )
    out = folded.out
    digest_block(out.before)  # the score messages' digests (compiled too)
    n = len(out.item_loc)  # and the item shards' grouping, with the arrays the consumer passes
    LoadedItems.empty().updated(out.item_ids, out.item_loc, np.zeros(n, dtype=np.int64),
                                np.arange(n, dtype=np.int64), out.item_delta,
                                out.item_delta_set)  # fmt: skip
