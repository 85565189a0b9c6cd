"""Prequential model quality, live: how good the served probability is, from the labels that
arrive in the stream (issue 18).

Every labelled event the model scored is judged once, right after it is scored (prequential:
predict, then learn the outcome). Per domain (movielens / funnel: their base rates differ) a
`LiveQuality` keeps

- the last `WINDOWS` = 1,000 and 10,000 labelled events (one ring of the last 10,000: the
  1,000 window is its newest tenth), and
- one aggregate per UTC day of event time, for the last `days` days,

and `summary()` gives, for each: ROC-AUC, log loss, ECE and the reliability curve of the served
probability, the positive rate against the mean prediction, and the rule score's ROC-AUC
against the same labels.

Exactness. The consumer stores the state (`to_bytes`) in the Redis transaction of the batch it
follows, so a replayed batch must reproduce it bit for bit, and the figures must not depend on
how the stream was cut into batches. So everything is kept in integers: the probability as a
16-bit code (p rounded down to 1/65536, read back as the middle of its step), the rule score
(0-100) as a code of 1/100 point, each row's log loss as an integer number of 2**-32
(`LOSS_SCALE`), and counts. Integer sums do not depend on the order they are added in, never
drift, and feeding rows one at a time or in any batches gives the same bytes
(tests/test_quality.py). The windows' figures are computed from the ring's codes when asked
(`summary`): the window ROC-AUC is exact on the codes (ties count half); a day keeps 200-bin
histograms (`DAY_BINS`: p to 1/200, the rule score to 1/2 point), so a day's AUCs count rows of
one bin as ties. These are the definitions: `prequential_quality`, the offline function, runs
this very object over a sequence of events, so live and offline figures agree exactly.

Across partitions. The consumer keeps one `LiveQuality` per partition (a partition's rows
arrive in one order, whatever the batches); `merged_summary` combines partitions exactly: a
day is the sum of the partitions' days, a window the union of each partition's last N
labelled events.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from scoring import state_format

#: The sliding windows, in labelled events (the ring holds the largest).
WINDOWS: tuple[int, ...] = (1_000, 10_000)
DEFAULT_DAYS = 7
DAY_MS = 86_400_000
P_LEVELS = 65_536  # probability codes: floor(p * 65536), 0 .. 65535
RULE_LEVELS = 10_001  # rule score codes: round(score * 100), 0 .. 10000 (scores are 0-100)
DAY_BINS = 200  # a day's histogram bins (of p, of the rule score); 20 per ECE bin
ECE_BINS = 10
LOSS_SCALE = float(2**32)
FORMAT = 1
_MAGIC = b"LQ"
_HEAD = struct.Struct("<2sBIHH")  # magic, format, ring size, days kept, tracks
_TRACK = struct.Struct("<HHqqqqqI")  # len domain, len version, head, filled, total, late,
#                                     max day, days stored
_NO_DAY = -(2**62)
_LABEL_BIT = np.uint32(1 << 31)


class BadState(state_format.BadState):
    """Bytes that are not a whole quality state (corruption: never silently reset)."""


class StateMismatch(state_format.StateMismatch):
    """A state of another format or other windows / days: `LiveQuality.restore` starts
    afresh rather than apply it."""


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probability code: its value (the middle of its step) and the log loss of a
    negative and of a positive label, in integer units of 2**-32."""
    p = (np.arange(P_LEVELS, dtype=np.float64) + 0.5) / P_LEVELS
    loss0 = np.rint(-np.log1p(-p) * LOSS_SCALE).astype(np.int64)
    loss1 = np.rint(-np.log(p) * LOSS_SCALE).astype(np.int64)
    return p, loss0, loss1


P_VALUE, LOSS0, LOSS1 = _tables()


def p_codes(p: np.ndarray) -> np.ndarray:
    """The 16-bit code of each probability (what every figure here is computed on)."""
    q = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return np.minimum((q * P_LEVELS).astype(np.int64), P_LEVELS - 1)


# --------------------------------------------------------------------------- kernel
@njit(cache=True, nogil=True)
def _observe_kernel(
    p: np.ndarray,
    y: np.ndarray,
    r: np.ndarray,
    ts: np.ndarray,
    ring: np.ndarray,
    ints: np.ndarray,
    day_no: np.ndarray,
    day_ints: np.ndarray,
    day_ece: np.ndarray,
    day_ph: np.ndarray,
    day_rh: np.ndarray,
    loss0: np.ndarray,
    loss1: np.ndarray,
) -> None:
    """ints = [ring head, ring filled, labelled rows seen, rows too late for a kept day,
    newest day]. Rows without a label or a probability (NaN) are passed over."""
    size = ring.shape[0]
    kept = day_no.shape[0]
    head, filled, total, late, max_day = ints[0], ints[1], ints[2], ints[3], ints[4]
    for i in range(p.shape[0]):
        label, prob = y[i], p[i]
        if label != label or prob != prob:
            continue
        q = min(max(prob, 0.0), 1.0)
        pc = np.int64(q * 65536.0)
        if pc > 65535:
            pc = np.int64(65535)
        score = r[i]
        rc = np.int64(0)
        if score == score:
            rc = np.int64(math.floor(min(max(score, 0.0), 100.0) * 100.0 + 0.5))
        positive = label > 0.5
        entry = np.uint32(pc) | (np.uint32(rc) << np.uint32(16))
        if positive:
            entry |= np.uint32(1 << 31)
        ring[head] = entry
        head = head + 1 if head + 1 < size else 0
        if filled < size:
            filled += 1
        total += 1
        day = ts[i] // 86_400_000
        if max_day == -(2**62) or day > max_day:
            first = max_day + 1
            if max_day == -(2**62) or day - max_day >= kept:
                first = day - kept + 1
            for d in range(first, day + 1):
                s = d % kept
                day_no[s] = d
                day_ints[s, :] = 0
                day_ece[s, :] = 0
                day_ph[s, :, :] = 0
                day_rh[s, :, :] = 0
            max_day = day
        elif day <= max_day - kept:
            late += 1
            continue
        s = day % kept
        lab = 1 if positive else 0
        day_ints[s, 0] += 1
        day_ints[s, 1] += lab
        day_ints[s, 2] += loss1[pc] if positive else loss0[pc]
        day_ece[s, (pc * 10) >> 16] += pc
        day_ph[s, (pc * 200) >> 16, lab] += 1
        day_rh[s, (rc * 200) // 10001, lab] += 1
    ints[0], ints[1], ints[2], ints[3], ints[4] = head, filled, total, late, max_day


# --------------------------------------------------------------------------- figures
def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """ROC-AUC from positives and negatives per score bin (bins ascending; a bin's rows are
    ties and count half), as `offline.metrics.roc_auc` computes it on distinct scores.
    None without both classes."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    total = float(pos.sum()) * float(neg.sum())
    if total == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float((pos * (neg_below + 0.5 * neg)).sum() / total)


@dataclass
class _Agg:
    """The integer aggregates every figure is computed from (a window's or a day's)."""

    n: int
    positives: int
    loss: int  # sum of per-row log loss, units of 2**-32
    ece_n: np.ndarray  # (10,) rows per ECE bin
    ece_pos: np.ndarray  # (10,) positives per ECE bin
    ece_codes: np.ndarray  # (10,) sum of probability codes per ECE bin
    p_pos: np.ndarray  # positives / negatives per probability bin (ascending)
    p_neg: np.ndarray
    r_pos: np.ndarray  # ... per rule score bin
    r_neg: np.ndarray

    def figures(self) -> dict[str, Any]:
        n = self.n
        if n == 0:
            return {"n": 0}
        mean_p = (float(self.ece_codes.sum()) + 0.5 * n) / P_LEVELS / n
        used = self.ece_n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            bin_p = (self.ece_codes + 0.5 * self.ece_n) / P_LEVELS / self.ece_n
            bin_rate = self.ece_pos / self.ece_n
        ece = float(np.sum(self.ece_n[used] / n * np.abs(bin_p[used] - bin_rate[used])))
        reliability = [
            {"bin": b, "n": int(self.ece_n[b]), "mean_p": float(bin_p[b]),
             "rate": float(bin_rate[b])}
            for b in range(ECE_BINS) if used[b]
        ]  # fmt: skip
        return {
            "n": n,
            "positive_rate": self.positives / n,
            "mean_p": mean_p,
            "roc_auc": auc_from_counts(self.p_pos, self.p_neg),
            "log_loss": self.loss / LOSS_SCALE / n,
            "ece": ece,
            "rule_roc_auc": auc_from_counts(self.r_pos, self.r_neg),
            "reliability": reliability,
        }


def _window_agg(entries: np.ndarray) -> _Agg:
    """Aggregates of ring entries (p code | rule code << 16 | label << 31)."""
    e = entries.astype(np.int64)
    pc = e & 0xFFFF
    rc = (e >> 16) & 0x7FFF
    lab = (e >> 31) & 1
    pos = lab == 1
    ece_bin = (pc * ECE_BINS) >> 16
    return _Agg(
        n=len(e),
        positives=int(pos.sum()),
        loss=int(LOSS1[pc[pos]].sum() + LOSS0[pc[~pos]].sum()),
        ece_n=np.bincount(ece_bin, minlength=ECE_BINS),
        ece_pos=np.bincount(ece_bin[pos], minlength=ECE_BINS),
        ece_codes=np.bincount(ece_bin, weights=pc, minlength=ECE_BINS).astype(np.int64),
        p_pos=np.bincount(pc[pos], minlength=P_LEVELS),
        p_neg=np.bincount(pc[~pos], minlength=P_LEVELS),
        r_pos=np.bincount(rc[pos], minlength=RULE_LEVELS),
        r_neg=np.bincount(rc[~pos], minlength=RULE_LEVELS),
    )


def _day_agg(ints: np.ndarray, ece: np.ndarray, ph: np.ndarray, rh: np.ndarray) -> _Agg:
    ece_n = ph.sum(axis=1).reshape(ECE_BINS, -1).sum(axis=1)
    ece_pos = ph[:, 1].reshape(ECE_BINS, -1).sum(axis=1)
    return _Agg(int(ints[0]), int(ints[1]), int(ints[2]), ece_n, ece_pos, ece,
                ph[:, 1], ph[:, 0], rh[:, 1], rh[:, 0])  # fmt: skip


# --------------------------------------------------------------------------- state
@dataclass
class _Track:
    """One domain's state."""

    ring_size: int
    days: int
    model_version: str = ""
    ring: np.ndarray = field(init=False)
    ints: np.ndarray = field(init=False)
    day_no: np.ndarray = field(init=False)
    day_ints: np.ndarray = field(init=False)
    day_ece: np.ndarray = field(init=False)
    day_ph: np.ndarray = field(init=False)
    day_rh: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.ring = np.zeros(self.ring_size, dtype=np.uint32)
        self.ints = np.array([0, 0, 0, 0, _NO_DAY], dtype=np.int64)
        self.day_no = np.full(self.days, _NO_DAY, dtype=np.int64)
        self.day_ints = np.zeros((self.days, 3), dtype=np.int64)
        self.day_ece = np.zeros((self.days, ECE_BINS), dtype=np.int64)
        self.day_ph = np.zeros((self.days, DAY_BINS, 2), dtype=np.uint32)
        self.day_rh = np.zeros((self.days, DAY_BINS, 2), dtype=np.uint32)

    def last(self, n: int) -> np.ndarray:
        """The newest min(n, filled) ring entries, oldest first."""
        head, filled = int(self.ints[0]), int(self.ints[1])
        k = min(n, filled)
        idx = (np.arange(head - k, head) % self.ring_size) if k else np.empty(0, np.int64)
        return self.ring[idx]

    def live_days(self) -> list[int]:
        """Slots of the kept days that hold rows, oldest first."""
        slots = [s for s in range(self.days) if self.day_no[s] != _NO_DAY and self.day_ints[s, 0]]
        return sorted(slots, key=lambda s: int(self.day_no[s]))


def _as_domains(
    domain: str | Sequence[str] | np.ndarray, n: int
) -> list[tuple[str, np.ndarray | None]]:
    """(domain, rows) groups, rows None meaning all; a row keeps its order within its group."""
    if isinstance(domain, str):
        return [(domain, None)]
    names = np.asarray(domain, dtype=object)
    if len(names) != n:
        raise ValueError(f"domain has {len(names)} entries for {n} rows")
    distinct = set(names.tolist())
    if len(distinct) == 1:
        return [(str(distinct.pop()), None)]
    return [(str(name), np.flatnonzero(names == name)) for name in sorted(distinct)]


class LiveQuality:
    """Prequential quality of the served probability, per domain; keep one per partition.

    observe(prob, label, rule_score, event_ts_ms, domain, model_version) per batch, in the
    partition's order; to_bytes() beside the batch; restore(bytes) on start.
    """

    def __init__(self, windows: Sequence[int] = WINDOWS, days: int = DEFAULT_DAYS) -> None:
        windows = tuple(sorted(int(w) for w in windows))
        if not windows or windows[0] < 1 or windows[-1] >= 2**31:
            raise ValueError(f"windows must be 1 .. 2**31 - 1 labelled events, got {windows}")
        if not 1 <= days < 2**16:
            raise ValueError(f"days must be 1 .. 65535, got {days}")
        self.windows = windows
        self.days = days
        self.tracks: dict[str, _Track] = {}

    @property
    def ring_size(self) -> int:
        return self.windows[-1]

    def observe(
        self,
        prob: np.ndarray,
        label: np.ndarray,
        rule_score: np.ndarray,
        event_ts_ms: np.ndarray,
        domain: str | Sequence[str] | np.ndarray = "",
        model_version: str = "",
    ) -> None:
        """Judge each labelled, scored row (label 0.0 / 1.0, NaN: none; prob NaN: not scored)
        in order. `domain`: one for all rows, or one per row. A domain's state starts afresh
        when `model_version` changes (its windows judge one model). ValueError, before any
        change, on mismatched lengths or a label other than 0, 1 or NaN."""
        p = np.ascontiguousarray(prob, dtype=np.float64)
        y = np.ascontiguousarray(label, dtype=np.float64)
        r = np.ascontiguousarray(rule_score, dtype=np.float64)
        ts = np.ascontiguousarray(event_ts_ms, dtype=np.int64)
        n = len(p)
        if p.ndim != 1 or y.shape != (n,) or r.shape != (n,) or ts.shape != (n,):
            raise ValueError(
                f"prob, label, rule_score, event_ts_ms must be 1-D of one length: "
                f"{p.shape}, {y.shape}, {r.shape}, {ts.shape}"
            )
        if not np.all((y == 0.0) | (y == 1.0) | np.isnan(y)):
            raise ValueError("labels must be 0.0, 1.0 or NaN")
        for name, rows in _as_domains(domain, n):
            track = self.tracks.get(name)
            if track is None or track.model_version != model_version:
                track = self.tracks[name] = _Track(self.ring_size, self.days, model_version)
            if rows is None:
                pb, yb, rb, tb = p, y, r, ts
            else:
                pb, yb, rb, tb = p[rows], y[rows], r[rows], ts[rows]
            _observe_kernel(pb, yb, rb, tb, track.ring, track.ints, track.day_no, track.day_ints,
                            track.day_ece, track.day_ph, track.day_rh, LOSS0, LOSS1)  # fmt: skip

    # ----------------------------------------------------------------------- figures
    def summary(self) -> dict[str, Any]:
        """The figures of this partition (see `merged_summary`)."""
        return merged_summary([self])

    # ----------------------------------------------------------------------- bytes
    def to_bytes(self) -> bytes:
        """The whole state: a header, then per domain its counters, the filled part of the
        ring (4 bytes a row) and the kept days that hold rows (~3.3 KB a day)."""
        windows = struct.pack(f"<B{len(self.windows)}I", len(self.windows), *self.windows)
        parts = [_HEAD.pack(_MAGIC, FORMAT, self.ring_size, self.days, len(self.tracks)), windows]
        for name in sorted(self.tracks):
            t = self.tracks[name]
            domain, version = name.encode(), t.model_version.encode()
            head, filled, total, late, max_day = (int(v) for v in t.ints)
            slots = t.live_days()
            parts.append(_TRACK.pack(len(domain), len(version), head, filled, total, late,
                                     max_day, len(slots)))  # fmt: skip
            parts += [domain, version, t.ring[:filled].tobytes()]
            for s in slots:
                parts.append(struct.pack("<q", int(t.day_no[s])))
                parts += [a[s].tobytes() for a in (t.day_ints, t.day_ece, t.day_ph, t.day_rh)]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> LiveQuality:
        """A state `to_bytes` wrote. StateMismatch for another format; BadState for bytes
        that are not a whole state."""
        buf = memoryview(data)
        ring_size, days, n_tracks = state_format.read_head(
            _HEAD, buf, _MAGIC, FORMAT, "quality state", BadState, StateMismatch
        )
        try:
            offset = _HEAD.size
            (n_windows,) = struct.unpack_from("<B", buf, offset)
            windows = struct.unpack_from(f"<{n_windows}I", buf, offset + 1)
            offset += 1 + 4 * n_windows
            state = cls(windows, days)
            if state.ring_size != ring_size:
                raise BadState("malformed quality state")
            day_bytes = 8 + 3 * 8 + ECE_BINS * 8 + 2 * DAY_BINS * 2 * 4
            for _ in range(n_tracks):
                n_dom, n_ver, head, filled, total, late, max_day, n_days = _TRACK.unpack_from(
                    buf, offset
                )
                offset += _TRACK.size
                name = bytes(buf[offset : offset + n_dom]).decode()
                version = bytes(buf[offset + n_dom : offset + n_dom + n_ver]).decode()
                offset += n_dom + n_ver
                if not (0 <= filled <= ring_size and 0 <= head < ring_size and n_days <= days):
                    raise BadState("malformed quality state")
                if offset + 4 * filled + n_days * day_bytes > len(buf):
                    raise BadState("truncated quality state")
                t = _Track(ring_size, days, version)
                t.ring[:filled] = np.frombuffer(buf, np.uint32, filled, offset)
                offset += 4 * filled
                t.ints[:] = (head, filled, total, late, max_day)
                if max_day != _NO_DAY:
                    for d in range(max_day - days + 1, max_day + 1):
                        t.day_no[d % days] = d
                for _ in range(n_days):
                    (day,) = struct.unpack_from("<q", buf, offset)
                    s = day % days
                    if t.day_no[s] != day:
                        raise BadState("malformed quality state")
                    offset += 8
                    t.day_ints[s] = np.frombuffer(buf, np.int64, 3, offset)
                    offset += 24
                    t.day_ece[s] = np.frombuffer(buf, np.int64, ECE_BINS, offset)
                    offset += 8 * ECE_BINS
                    size = DAY_BINS * 2
                    t.day_ph[s] = np.frombuffer(buf, np.uint32, size, offset).reshape(-1, 2)
                    offset += 4 * size
                    t.day_rh[s] = np.frombuffer(buf, np.uint32, size, offset).reshape(-1, 2)
                    offset += 4 * size
                state.tracks[name] = t
        except (struct.error, UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, BadState):
                raise
            raise BadState(f"malformed quality state: {exc}") from exc
        if offset != len(buf):
            raise BadState("malformed quality state: trailing bytes")
        return state

    @classmethod
    def restore(
        cls, data: bytes | None, windows: Sequence[int] = WINDOWS, days: int = DEFAULT_DAYS
    ) -> LiveQuality:
        """The stored state if it has these windows and days (and this format), else a fresh
        one. BadState (corruption) is raised, never reset silently."""
        if data:
            try:
                state = cls.from_bytes(data)
            except StateMismatch:
                return cls(windows, days)
            if state.windows == tuple(sorted(windows)) and state.days == days:
                return state
        return cls(windows, days)


def merged_summary(states: Iterable[LiveQuality]) -> dict[str, Any]:
    """The figures of one or more partitions' states, per domain:

    {"domains": {domain: {"model_versions": [...], "labelled": n, "late_for_days": n,
      "windows": {"1000": figures, "10000": figures}, "days": [{"day": "YYYY-MM-DD", ...}]}}}

    A window over several partitions is the union of each one's last N labelled events; a
    day, the sum of the partitions' days. figures: n, positive_rate, mean_p, roc_auc,
    log_loss, ece, rule_roc_auc (None without both classes), reliability (per non-empty ECE
    bin: n, mean_p, rate)."""
    states = list(states)
    by_domain: dict[str, list[_Track]] = {}
    windows: tuple[int, ...] = WINDOWS
    for state in states:
        windows = state.windows
        for name, track in state.tracks.items():
            by_domain.setdefault(name, []).append(track)
    out: dict[str, Any] = {}
    for name in sorted(by_domain):
        tracks = by_domain[name]
        win = {}
        for w in windows:
            entries = np.concatenate([t.last(w) for t in tracks])
            win[str(w)] = _window_agg(entries).figures()
        days: dict[int, list[tuple[_Track, int]]] = {}
        for t in tracks:
            for s in t.live_days():
                days.setdefault(int(t.day_no[s]), []).append((t, s))
        day_rows = []
        for day in sorted(days):
            ints = np.zeros(3, dtype=np.int64)
            ece = np.zeros(ECE_BINS, dtype=np.int64)
            ph = np.zeros((DAY_BINS, 2), dtype=np.int64)
            rh = np.zeros((DAY_BINS, 2), dtype=np.int64)
            for t, s in days[day]:
                ints += t.day_ints[s]
                ece += t.day_ece[s]
                ph += t.day_ph[s]
                rh += t.day_rh[s]
            agg = _day_agg(ints, ece, ph, rh)
            date = np.datetime64(day, "D").astype(str)
            day_rows.append({"day": date, **agg.figures()})
        out[name] = {
            "model_versions": sorted({t.model_version for t in tracks}),
            "labelled": sum(int(t.ints[2]) for t in tracks),
            "late_for_days": sum(int(t.ints[3]) for t in tracks),
            "windows": win,
            "days": day_rows,
        }
    return {"partitions": len(states), "domains": out}


def prequential_quality(
    prob: np.ndarray,
    label: np.ndarray,
    rule_score: np.ndarray,
    event_ts_ms: np.ndarray,
    domain: str | Sequence[str] = "",
    partition: np.ndarray | None = None,
    model_version: str = "",
    windows: Sequence[int] = WINDOWS,
    days: int = DEFAULT_DAYS,
) -> dict[str, Any]:
    """The live figures, offline: the same `LiveQuality` run over a sequence of scored events
    in the order the consumer scores them (`partition`: each row's partition, one state per
    partition as the consumer keeps; None: one)."""
    n = len(prob)
    parts = np.zeros(n, dtype=np.int64) if partition is None else np.asarray(partition)
    domains = [domain] * n if isinstance(domain, str) else list(domain)
    states = []
    for part in np.unique(parts).tolist():
        rows = np.flatnonzero(parts == part)
        state = LiveQuality(windows, days)
        state.observe(np.asarray(prob)[rows], np.asarray(label)[rows],
                      np.asarray(rule_score)[rows], np.asarray(event_ts_ms)[rows],
                      [domains[i] for i in rows.tolist()], model_version)  # fmt: skip
        states.append(state)
    return merged_summary(states)
