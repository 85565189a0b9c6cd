"""The funnel's delayed labels (issue 18, item 4): a served propensity score waits for its user's
conversion, then enters the prequential quality of the propensity score.

Why: in the funnel the outcome the propensity score is about (does the user convert?) arrives
later than the event that was scored, as another event of the same user. So a score is judged
only once its label is known: a conversion of the user (an engaged funnel event: demo request,
signup, booking, `Event.engaged`, the label training learns) at most `horizon_ms` of event
time after the score gives label 1; the partition's funnel event time passing the score's time
+ `horizon_ms` without one gives label 0 ("expired"). A user's events all go to one partition
(the key is the user id), so one `FunnelJoin` per partition sees every outcome of its users,
and its clock is the newest funnel event time it has seen (late events do not move it back).

Bounds. At most one score waits per user: the **oldest** one not yet resolved. Its whole
horizon lies ahead of it, so its label means "converts within the horizon of this score"; the
newest instead would always be the score just before the outcome (an easy, late prediction)
and a user active every day would never expire. Scores of a user already waiting are counted
(`skipped`), not kept; once the waiting score resolves, the user's next score waits. At most
`max_pending` users wait per partition; a score that finds the state full is counted
(`dropped`). The stored state is O(max_pending) whatever the traffic.

Exactly once. The consumer stores `to_bytes()` in the transaction of the batch it follows and
starts a re-read batch from the stored bytes; the state after a row depends only on the state
before it and the row (waiting scores are kept in insertion order, which the bytes keep), so
a replayed batch gives the same bytes and the same resolved rows, whatever the batching.
Probabilities and rule scores are kept as the codes `scoring.quality` judges them on (p to
1/65536, the rule score to 1/100 point), so the figures are those of the unrounded scores.
"""

from __future__ import annotations

import heapq
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scoring import state_format
from scoring.quality import P_LEVELS

#: The quality track (a `LiveQuality` "domain") the resolved propensity scores enter.
TRACK = "funnel/propensity"
FORMAT = 1
_MAGIC = b"FJ"
_HEAD = struct.Struct("<2sBqIHqqqqqI")  # magic, format, horizon, cap, len version, clock,
#                                          positive, expired, skipped, dropped, waiting
_NO_TS = -(2**62)
#: The counters `counts` gives (and `engage quality` sums over partitions).
COUNTS = ("waiting", "positive", "expired", "skipped", "dropped")


class BadState(state_format.BadState):
    """Bytes that are not a whole join state (corruption: never silently reset)."""


class StateMismatch(state_format.StateMismatch):
    """A state of another format, model version, horizon or cap: started afresh instead."""


@dataclass(frozen=True)
class FunnelRows:
    """A batch's funnel rows the model scored, in batch order, as `LiveMonitors.observe`
    takes them: each row's partition, user, event time, served propensity, the rule score
    served with it (the user's after the event) and whether the event converts (label 1)."""

    partition: np.ndarray
    users: list[str]
    ts: np.ndarray
    prob: np.ndarray
    rule: np.ndarray
    converted: np.ndarray


@dataclass(frozen=True)
class Resolved:
    """Scores whose label arrived, in the order they resolved: what the quality state takes."""

    prob: np.ndarray
    label: np.ndarray
    rule: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.prob)


def _codes(prob: float, rule: float) -> tuple[int, int]:
    """scoring.quality's codes of a probability and a rule score (NaN rule: 0, as there)."""
    pc = min(int(min(max(prob, 0.0), 1.0) * P_LEVELS), P_LEVELS - 1)
    rc = 0 if rule != rule else math.floor(min(max(rule, 0.0), 100.0) * 100.0 + 0.5)
    return pc, rc


class FunnelJoin:
    """One partition's funnel propensity scores waiting for their label."""

    def __init__(self, horizon_ms: int, max_pending: int, model_version: str = "") -> None:
        if horizon_ms < 0 or not 1 <= max_pending < 2**32:
            raise ValueError(f"horizon_ms >= 0 and 1 <= max_pending < 2**32, got "
                             f"{horizon_ms}, {max_pending}")  # fmt: skip
        self.horizon_ms = int(horizon_ms)
        self.max_pending = int(max_pending)
        self.model_version = model_version
        self.clock = _NO_TS
        #: user -> (event time, probability code, rule score code), oldest first.
        self.pending: dict[str, tuple[int, int, int]] = {}
        self.positive = self.expired = self.skipped = self.dropped = 0
        self._deadlines: list[tuple[int, str]] = []  # (time + horizon, user); may be stale

    def counts(self) -> dict[str, int]:
        return {"waiting": len(self.pending), "positive": self.positive,
                "expired": self.expired, "skipped": self.skipped,
                "dropped": self.dropped}  # fmt: skip

    def observe(
        self,
        users: Sequence[str],
        ts: np.ndarray,
        prob: np.ndarray,
        rule: np.ndarray,
        converted: np.ndarray,
    ) -> Resolved:
        """Feed the partition's funnel rows the model scored, in the partition's order: each
        user's id, event time (ms), served propensity, rule score and whether the event is a
        conversion. Per row: scores whose horizon the row's time passed expire (label 0),
        a waiting score of the row's user resolves positive if the row converts, then the
        row's own score waits if its user has none waiting. Returns what resolved."""
        out_p: list[int] = []
        out_y: list[float] = []
        out_r: list[int] = []
        out_t: list[int] = []
        pending, deadlines, horizon = self.pending, self._deadlines, self.horizon_ms
        clock = self.clock

        def resolve(held: tuple[int, int, int], label: float) -> None:
            out_t.append(held[0])
            out_p.append(held[1])
            out_r.append(held[2])
            out_y.append(label)

        for user, t, p, r, c in zip(users, np.asarray(ts).tolist(), np.asarray(prob).tolist(),
                                    np.asarray(rule).tolist(), np.asarray(converted).tolist(),
                                    strict=True):  # fmt: skip
            if t > clock:
                clock = t
                while deadlines and deadlines[0][0] < clock:
                    deadline, who = heapq.heappop(deadlines)
                    held = pending.get(who)
                    if held is not None and held[0] + horizon == deadline:
                        del pending[who]
                        self.expired += 1
                        resolve(held, 0.0)
            held = pending.get(user)
            if held is not None and c:
                del pending[user]
                self.positive += 1
                resolve(held, 1.0)
                held = None
            if held is not None:
                self.skipped += 1
            elif len(pending) >= self.max_pending:
                self.dropped += 1
            else:
                pc, rc = _codes(p, r)
                pending[user] = (t, pc, rc)
                heapq.heappush(deadlines, (t + horizon, user))
        self.clock = clock
        if len(deadlines) > 2 * len(pending) + 64:  # stale entries of resolved scores
            self._reheap()
        return Resolved(
            np.array(out_p, dtype=np.float64) / P_LEVELS,  # exact: the code back
            np.array(out_y, dtype=np.float64),
            np.array(out_r, dtype=np.float64) / 100.0,  # read back to the same code
            np.array(out_t, dtype=np.int64),
        )

    def _reheap(self) -> None:
        self._deadlines = [(t + self.horizon_ms, u) for u, (t, _p, _r) in self.pending.items()]
        heapq.heapify(self._deadlines)

    # ----------------------------------------------------------------------- bytes
    def to_bytes(self) -> bytes:
        """The whole state: a header, then the waiting scores in insertion order (times,
        probability codes, rule codes, user id lengths, user ids)."""
        version = self.model_version.encode()
        n = len(self.pending)
        head = _HEAD.pack(_MAGIC, FORMAT, self.horizon_ms, self.max_pending, len(version),
                          self.clock, self.positive, self.expired, self.skipped, self.dropped,
                          n)  # fmt: skip
        users = list(self.pending)
        values = np.array(list(self.pending.values()), dtype=np.int64).reshape(n, 3)
        text = "".join(users)
        names = text.encode()
        if len(names) == len(text):  # ASCII ids (the usual): a character is a byte
            lengths = np.fromiter(map(len, users), np.uint16, n)
        else:
            lengths = np.fromiter((len(u.encode()) for u in users), np.uint16, n)
        return b"".join((head, version, values[:, 0].tobytes(),
                         values[:, 1].astype(np.uint16).tobytes(),
                         values[:, 2].astype(np.uint16).tobytes(), lengths.tobytes(),
                         names))  # fmt: skip

    @classmethod
    def from_bytes(
        cls, data: bytes, horizon_ms: int, max_pending: int, model_version: str
    ) -> FunnelJoin:
        """A state `to_bytes` wrote. StateMismatch if it is of another format, model version,
        horizon or cap; BadState if the bytes are not a whole state."""
        buf = memoryview(data)
        (horizon, cap, n_version, clock, positive, expired, skipped, dropped,
         n) = state_format.read_head(_HEAD, buf, _MAGIC, FORMAT, "funnel join state", BadState,
                                     StateMismatch)  # fmt: skip
        offset = _HEAD.size
        version = bytes(buf[offset : offset + n_version]).decode(errors="replace")
        if (version, horizon, cap) != (model_version, horizon_ms, max_pending):
            raise StateMismatch(f"funnel join state of {(version, horizon, cap)}, not "
                                f"{(model_version, horizon_ms, max_pending)}")  # fmt: skip
        offset += n_version
        if n > cap or offset + 14 * n > len(buf):
            raise BadState("malformed funnel join state")
        times = np.frombuffer(buf, np.int64, n, offset).tolist()
        offset += 8 * n
        p_codes = np.frombuffer(buf, np.uint16, n, offset).tolist()
        offset += 2 * n
        r_codes = np.frombuffer(buf, np.uint16, n, offset).tolist()
        offset += 2 * n
        lengths = np.frombuffer(buf, np.uint16, n, offset).tolist()
        offset += 2 * n
        state = cls(horizon_ms, max_pending, model_version)
        state.clock = clock
        state.positive, state.expired, state.skipped, state.dropped = (
            positive, expired, skipped, dropped)  # fmt: skip
        try:
            for t, pc, rc, size in zip(times, p_codes, r_codes, lengths, strict=True):
                user = bytes(buf[offset : offset + size]).decode()
                offset += size
                state.pending[user] = (t, pc, rc)
        except UnicodeDecodeError as exc:
            raise BadState("malformed funnel join state") from exc
        if offset != len(buf) or len(state.pending) != n:
            raise BadState("malformed funnel join state: length")
        state._reheap()
        return state

    @classmethod
    def restore(
        cls, data: bytes | None, horizon_ms: int, max_pending: int, model_version: str
    ) -> FunnelJoin:
        """The stored state if it is of this model, horizon and cap, else a fresh one."""
        if data:
            try:
                return cls.from_bytes(data, horizon_ms, max_pending, model_version)
            except StateMismatch:
                pass
        return cls(horizon_ms, max_pending, model_version)


def merged_counts(states: Iterable[FunnelJoin | Mapping[str, int]]) -> dict[str, int]:
    """The counters of several partitions' joins (or their `counts()`), summed."""
    total = dict.fromkeys(COUNTS, 0)
    for state in states:
        counts = state.counts() if isinstance(state, FunnelJoin) else state
        for name in COUNTS:
            total[name] += int(counts[name])
    return total


def peek_counts(data: bytes) -> tuple[str, int, dict[str, int]]:
    """(model version, horizon in ms, counters) of stored bytes, without a horizon or cap to
    check them against (for `engage quality`). BadState if they are not a join state."""
    try:
        (magic, fmt, horizon, _cap, n_version, _clock, positive, expired, skipped, dropped,
         n) = _HEAD.unpack_from(data, 0)  # fmt: skip
    except struct.error as exc:
        raise BadState("not a funnel join state") from exc
    if magic != _MAGIC or fmt != FORMAT:
        raise BadState("not a funnel join state of this format")
    version = bytes(data[_HEAD.size : _HEAD.size + n_version]).decode(errors="replace")
    return version, horizon, {"waiting": n, "positive": positive, "expired": expired,
                              "skipped": skipped, "dropped": dropped}  # fmt: skip
