"""Which events get applied: the duplicate guard and the lateness policy.

One definition for the consumer (the recent ids live in Redis, `u:{user}:seen`) and the offline
module (in memory), so both refuse exactly the same events.

- Duplicates: an event whose `event_id` is among the user's recent ids is refused. "Recent" is
  bounded by count, not time: the ids of at least the user's last `recent_ids` applied events
  are kept (at most twice that many are stored; trimming keeps the newest by event time, ties by
  id, so the outcome does not depend on how the log was cut into batches).
- Lateness: an event more than `max_lateness_ms` older (in event time) than the user's latest
  applied event is refused as late. A less late event is applied: counts, sums and item
  aggregates take it in; time-based state never goes backwards (see features.aggregates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np
from numba import njit

from features.aggregates import State
from features.event_batch import CodedColumns, EventBatch
from features.events import Event

#: A user's recent event ids and their event times.
RecentIds = dict[str, float]
#: The trim's order of (id, time) pairs: by time, ties by id (a C key, no call per pair).
_TIME_THEN_ID = itemgetter(1, 0)
#: A batch takes the per-user way (`_admit_by_user`) when it has at least this many events a
#: user: its cost is a few us a user, the per-event loop's ~0.5 us an event.
_EVENTS_A_USER = 8


@njit(cache=True, nogil=True)
def _any_late(user_codes: np.ndarray, ts: np.ndarray, lasts: np.ndarray, lateness: float) -> bool:
    """Whether any row is more than `lateness` behind its user's running latest time (which
    starts at `lasts[user]`; 0: none yet), every row before it counted as applied."""
    latest = lasts.copy()
    for i in range(len(ts)):
        user = user_codes[i]
        last = latest[user]
        if last != 0.0 and last - ts[i] > lateness:
            return True
        if ts[i] > last:
            latest[user] = ts[i]
    return False


@dataclass(frozen=True)
class AdmissionPolicy:
    recent_ids: int = 32
    max_lateness_ms: float | None = 24 * 3_600_000.0

    def refusal(self, user: State, recent: RecentIds, event: Event) -> str | None:
        """Why `event` must not be applied to `user`, or None to apply it."""
        return self.refusal_after(float(user.get("last_ts", 0.0)), recent, event)

    def refusal_after(self, last_ts: float, recent: RecentIds, event: Event) -> str | None:
        """`refusal` given the user's latest applied event time (0: none yet)."""
        if event.event_id in recent:
            return "duplicate: this event_id was already applied for this user"
        if self.max_lateness_ms is not None and last_ts:
            behind = last_ts - event.ts
            if behind > self.max_lateness_ms:
                return (
                    f"late: {behind / 1000:.0f} s behind the user's latest event "
                    f"(max lateness {self.max_lateness_ms / 1000:.0f} s)"
                )
        return None

    def admit(self, last_ts: float, recent: RecentIds, event: Event) -> str | None:
        """`refusal_after`, and `remember` the event when it is admitted (None): the
        consumer's per-event step, one call."""
        reason = self.refusal_after(last_ts, recent, event)
        if reason is None:
            self.remember(recent, event)
        return reason

    def remember(self, recent: RecentIds, event: Event) -> None:
        """Add an applied event's id; past 2x the bound, keep the newest `recent_ids`."""
        recent[event.event_id] = float(event.ts)
        if len(recent) > 2 * self.recent_ids:
            self._trim(recent)

    def _trim(self, recent: RecentIds) -> None:
        newest = sorted(recent.items(), key=_TIME_THEN_ID)[-self.recent_ids :]
        recent.clear()
        recent.update(newest)

    def admit_all(
        self, events: Sequence[Event], last_applied: Callable[[str], float],
        recents: dict[str, RecentIds],
    ) -> tuple[list[int], list[tuple[int, str]]]:  # fmt: skip
        """`admit` for each event in order, each against what the events before it in the
        call left (its user's latest applied event time, a running maximum that starts at
        `last_applied(user)`; the user's recent ids in `recents`, created when missing).
        Returns the admitted indices and the refused ones with their reasons.

        Why: the consumer's per-event step, and three method calls an event were a tenth of
        its admission; the common case (a new id, not late) is inlined here, and a refusal's
        reason still comes from `refusal_after`, the one definition. (`events`: best an
        `EventBatch`, whose columns are read; an `Event` is made only for a refusal.)"""
        batch = EventBatch.of(events)
        codes = batch.codes
        if (
            codes is not None
            and len(codes.users) * _EVENTS_A_USER <= len(batch)
            and self._admit_by_user(batch, codes, last_applied, recents)
        ):
            return list(range(len(batch))), []
        admitted: list[int] = []
        refused: list[tuple[int, str]] = []
        latest: dict[str, float] = {}
        lateness, bound = self.max_lateness_ms, 2 * self.recent_ids
        rows = zip(batch.user_ids, batch.event_ids, batch.ts, strict=True)
        for i, (user, event_id, event_ts) in enumerate(rows):
            last = latest.get(user)
            if last is None:
                last = latest[user] = last_applied(user)
            recent = recents.get(user)
            if recent is None:
                recent = recents[user] = {}
            ts = float(event_ts)
            if event_id in recent or (lateness is not None and last and last - ts > lateness):
                reason = self.refusal_after(last, recent, batch[i])
                assert reason is not None  # the same two tests
                refused.append((i, reason))
                continue
            admitted.append(i)
            recent[event_id] = ts
            if len(recent) > bound:
                self._trim(recent)
            if ts > last:
                latest[user] = ts
        return admitted, refused

    def _admit_by_user(
        self, batch: EventBatch, codes: CodedColumns, last_applied: Callable[[str], float],
        recents: dict[str, RecentIds],
    ) -> bool:  # fmt: skip
        """`admit_all` when it refuses nothing, a user at a time: True when every event was
        admitted and remembered; False (nothing changed) when one must be refused, for the
        per-event loop to say which and why. Each user's ids end as the loop leaves them (row
        order, trimmed where the loop trims last), by `dict.update` over slices."""
        users = codes.users
        lasts = np.array([last_applied(user) for user in users], np.float64)
        ts = codes.ts.astype(np.float64)
        lateness = np.inf if self.max_lateness_ms is None else float(self.max_lateness_ms)
        if _any_late(codes.user_codes, ts, lasts, lateness):
            return False
        order = np.argsort(codes.user_codes, kind="stable")  # each user's rows, in row order
        ends = np.cumsum(np.bincount(codes.user_codes, minlength=len(users))).tolist()
        ids = np.array(batch.event_ids, dtype=object)[order].tolist()
        times = ts[order].tolist()
        spans = list(zip(users, [0, *ends[:-1]], ends, strict=True))
        for user, start, end in spans:  # check first: nothing changes unless all pass
            recent = recents.get(user)
            mine = ids[start:end]
            if (recent and not recent.keys().isdisjoint(mine)) or len(set(mine)) < len(mine):
                return False
        bound, kept = 2 * self.recent_ids, self.recent_ids
        for user, start, end in spans:
            recent = recents.get(user)
            if recent is None:
                recent = recents[user] = {}
            # The loop trims after `first` inserts, then after every `bound + 1 - kept` more;
            # trimming twice keeps what trimming once at the last of them keeps (the newest
            # `kept` of all of it), in the same order: so one trim, at the last point.
            first = max(1, bound + 1 - len(recent))
            upto = start
            if first <= end - start:
                every = bound + 1 - kept
                upto = start + first + (end - start - first) // every * every
                recent.update(zip(ids[start:upto], times[start:upto], strict=True))
                self._trim(recent)
            recent.update(zip(ids[upto:end], times[upto:end], strict=True))
        return True
