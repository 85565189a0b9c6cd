"""Online recalibration of a model's probability, prequential: predict, then learn.

Why: a calibration fitted once on the validation period learns that period's base rate
(MovieLens: 0.554 there, 0.465 in the test period after it, issue 5), and no map fitted on it
can follow the rate when it moves. In this product the outcome of a scored interaction arrives
in the stream itself (`event_label`), so a small calibrator can keep adjusting the served
probability with the labels seen *before* each score. This module is the one definition of
the online rules: `engage train` evaluates them over the test period in event order
(`offline.calibration_online`), and the consumer runs the same object over each batch.

Rules (`OnlineParams.rule`), each applied on the log-odds z = logit(p) of the offline
calibrated probability p (what `ScoringModel.predict_proba` serves), each starting from the
offline calibration itself (z unchanged):

- ``"none"``: p as served today.
- ``"intercept"``: sigmoid(z + b), with b the log-odds gap over the last `window` labelled
  events: logit(mean label) - logit(mean p). Until the window is full, the missing slots count
  as pseudo-events with label = p = 1/2, so b grows from 0 as labels arrive.
- ``"sgd_platt"``: sigmoid(a z + b), (a, b) from (1, 0), one SGD step of size `step` on the
  log loss with each label, after that row's probability is given.

Exactness: `OnlineCalibrator.process` (a numba loop) gives bit for bit the result of feeding
the same rows one at a time, whatever the batch boundaries; so a replayed batch, started from
the state stored with the previous batch, reproduces its probabilities and its new state. The
intercept rule sums the window in integers (p quantised to 2**-40), so its sums do not depend
on the order they were added in, never drift, and a reference loop can recompute them exactly.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from numba import njit

from features.events import ENGAGED_FUNNEL_TYPES, ENGAGED_RATING, Event, EventType
from scoring import state_format
from scoring.model import PROB_EPS

if TYPE_CHECKING:
    from engage.settings import Settings

OnlineRule = Literal["none", "intercept", "sgd_platt"]
RULES: tuple[str, ...] = get_args(OnlineRule)
#: The default rule (also `Settings.online_calibration`'s): in a forward-chaining backtest over
#: MovieLens' training and validation periods it had the lowest ECE (docs/calibration.md).
DEFAULT_RULE: OnlineRule = "sgd_platt"
DEFAULT_WINDOW = 250
DEFAULT_STEP = 0.01
#: p is summed as an integer number of 2**-40 (about 1e-12): exact and order-free sums.
P_SCALE = float(2**40)
#: `to_bytes` layout version; a state of another format is refused, not guessed at.
FORMAT = 1
_MAGIC = b"OC"
_HEAD = struct.Struct("<2sBBH")  # magic, format, rule index, length of the model version
_BODY = struct.Struct("<IdQIdd")  # window, step, labels seen, ring head, a, b


def event_label(event: Event) -> float:
    """The label an event carries for the interaction model, known from the event alone:
    1.0 engaged (a rating >= 4, a demo request, signup or booking), 0.0 not (a lower rating,
    a page or pricing view), NaN for events that carry none (tags). The same definition
    (`Event.engaged` / `Event.labelled`) makes the training rows in `offline.dataset`."""
    if not event.labelled:
        return math.nan
    return 1.0 if event.engaged else 0.0


#: `event_label` of every event type but ratings (whose label is their value's): what
#: `event_labels` looks up, the consumer's hot path (~0.1 µs an event, not ~0.5).
_LABEL_OF_TYPE: dict[EventType, float] = {t: (math.nan if t is EventType.TAG else
                      1.0 if t in ENGAGED_FUNNEL_TYPES else 0.0)
                  for t in EventType if t is not EventType.RATING}  # fmt: skip
_RATING = -1.0


def event_labels(events: Iterable[Event]) -> np.ndarray:
    """`event_label` of each event, as the float array `OnlineCalibrator.process` takes."""
    events = events if isinstance(events, list) else list(events)
    return labels_of([e.event_type for e in events], [e.value for e in events])


def labels_of(event_types: Sequence[EventType], values: Sequence[float | None]) -> np.ndarray:
    """`event_labels` of events given as their types and values (an `EventBatch`'s columns)."""
    n = len(event_types)
    out = np.fromiter(map(_LABEL_OF_TYPE.get, event_types, repeat(_RATING, n)), np.float64, n)
    ratings = np.flatnonzero(out == _RATING)
    if len(ratings):
        rated = values if len(ratings) == n else [values[i] for i in ratings.tolist()]
        out[ratings] = [1.0 if v is not None and v >= ENGAGED_RATING else 0.0 for v in rated]
    return out


#: `_LABEL_OF_TYPE` by each type's index in `tuple(EventType)`, ratings as `_RATING`.
_LABEL_BY_INDEX = np.array([_LABEL_OF_TYPE.get(t, _RATING) for t in EventType])
_RATING_INDEX = tuple(EventType).index(EventType.RATING)


def labels_of_codes(type_index: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`labels_of` from the event reader's arrays (`CodedColumns.type_index`, `.values`):
    each type's label looked up, a rating's from its value, with no Python step a row
    (~0.13 us an event on the consumer thread as `labels_of`, a MovieLens batch's ratings)."""
    out: np.ndarray = _LABEL_BY_INDEX[type_index]
    ratings = type_index == _RATING_INDEX
    out[ratings] = np.asarray(values)[ratings] >= ENGAGED_RATING  # (NaN: False, as None is)
    return out


@dataclass(frozen=True)
class OnlineParams:
    """Which online rule, and its parameter (the window for "intercept", the step for
    "sgd_platt"; the other is carried but unused)."""

    rule: OnlineRule = DEFAULT_RULE
    window: int = DEFAULT_WINDOW
    step: float = DEFAULT_STEP

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown online calibration rule {self.rule!r}, one of {RULES}")
        if not 1 <= self.window < 2**23:  # int64 sums of 2**40-scaled p cannot overflow
            raise ValueError(f"window must be 1 .. 2**23 - 1, got {self.window}")
        if not (self.step > 0 and math.isfinite(self.step)):
            raise ValueError(f"step must be a positive number, got {self.step}")

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "window": self.window, "step": self.step}

    @classmethod
    def served(
        cls,
        rule: OnlineRule,
        window: int | None = None,
        step: float | None = None,
        chosen: Mapping[str, Any] | None = None,
    ) -> OnlineParams:
        """The parameters to serve: `window` / `step` when set (the settings
        `online_calibration_window` / `_step`), else the ones `engage train` chose on the
        validation period for this rule (`chosen`: the bundle's
        `metrics["online_calibration"]["chosen"]`), else the defaults."""
        picked = (chosen or {}).get(rule) or {}
        return cls(
            rule=rule,
            window=int(window if window is not None else picked.get("window", DEFAULT_WINDOW)),
            step=float(step if step is not None else picked.get("step", DEFAULT_STEP)),
        )

    @classmethod
    def for_model(cls, settings: Settings, metrics: Mapping[str, Any]) -> OnlineParams:
        """What the consumer serves for a model bundle: the settings' rule, with `served`'s
        parameters (`metrics`: the bundle's, where `engage train` stores its choice)."""
        chosen = (metrics.get("online_calibration") or {}).get("chosen")
        return cls.served(settings.online_calibration, settings.online_calibration_window,
                          settings.online_calibration_step, chosen)  # fmt: skip


class StateMismatch(state_format.StateMismatch):
    """A stored state of another model version, other parameters or another format: it must
    not be applied (`OnlineCalibrator.restore` starts afresh instead)."""


class BadState(state_format.BadState):
    """Bytes that are not a whole calibrator state (corruption: never silently reset)."""


# --------------------------------------------------------------------------- kernels
# Helpers mirror the reference loop in tests/test_online_calibration.py expression for
# expression (math.log / math.exp are the C library's in both), so the two agree bit for bit.


@njit(cache=True, nogil=True)
def _logit(p: float) -> float:
    p = min(max(p, PROB_EPS), 1.0 - PROB_EPS)
    return math.log(p / (1.0 - p))


@njit(cache=True, nogil=True)
def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


@njit(cache=True, nogil=True)
def _clip(q: float) -> float:
    return min(max(q, PROB_EPS), 1.0 - PROB_EPS)


@njit(cache=True, nogil=True)
def _gap(sum_y: int, sum_p: int, count: int, window: int) -> float:
    """logit(mean label) - logit(mean p) over the window, empty slots as label = p = 1/2."""
    empty = 0.5 * (window - count)
    mean_y = (sum_y + empty) / window
    mean_p = (sum_p / P_SCALE + empty) / window
    return _logit(mean_y) - _logit(mean_p)


@njit(cache=True, nogil=True)
def _intercept_kernel(
    p: np.ndarray,
    y: np.ndarray,
    ring_y: np.ndarray,
    ring_p: np.ndarray,
    ints: np.ndarray,
    out: np.ndarray,
) -> None:
    """ints = [labels in the window, next ring slot, sum of ring_y, sum of ring_p]."""
    window = ring_y.shape[0]
    count, head, sum_y, sum_p = ints[0], ints[1], ints[2], ints[3]
    b = _gap(sum_y, sum_p, count, window)
    for i in range(p.shape[0]):
        out[i] = _clip(_sigmoid(_logit(p[i]) + b))
        label = y[i]
        if label == label:  # not NaN: learn from it, after its own probability
            qp = np.int64(math.floor(min(max(p[i], PROB_EPS), 1.0 - PROB_EPS) * P_SCALE + 0.5))
            qy = np.int64(1) if label > 0.5 else np.int64(0)
            sum_y += qy - ring_y[head]
            sum_p += qp - ring_p[head]
            ring_y[head] = qy
            ring_p[head] = qp
            head = head + 1 if head + 1 < window else 0
            if count < window:
                count += 1
            b = _gap(sum_y, sum_p, count, window)
    ints[0], ints[1], ints[2], ints[3] = count, head, sum_y, sum_p


@njit(cache=True, nogil=True)
def _sgd_platt_kernel(
    p: np.ndarray, y: np.ndarray, step: float, ab: np.ndarray, seen: np.ndarray, out: np.ndarray
) -> None:
    """ab = [a, b]; seen = [labels learnt from]."""
    a, b = ab[0], ab[1]
    n = seen[0]
    for i in range(p.shape[0]):
        z = _logit(p[i])
        q = _sigmoid(a * z + b)
        out[i] = _clip(q)
        label = y[i]
        if label == label:
            g = q - label
            a -= step * g * z
            b -= step * g
            n += 1
    ab[0], ab[1] = a, b
    seen[0] = n


class OnlineCalibrator:
    """One model version's online calibrator (keep one per model and per domain).

    `process(p, labels)` is the whole online API: for every row in order, the calibrated
    probability from the state before the row, then the row's label (if any) is learnt.
    """

    def __init__(self, params: OnlineParams, model_version: str) -> None:
        self.params = params
        self.model_version = model_version
        size = params.window if params.rule == "intercept" else 0
        self._ring_y = np.zeros(size, dtype=np.int64)
        self._ring_p = np.zeros(size, dtype=np.int64)
        self._ints = np.zeros(4, dtype=np.int64)  # intercept: count, head, sum_y, sum_p
        self._ab = np.array([1.0, 0.0])  # sgd_platt: from the offline calibration
        self._seen = np.zeros(1, dtype=np.int64)

    @property
    def labels_seen(self) -> int:
        """Labels in the window ("intercept", at most `window`) or learnt from ("sgd_platt")."""
        return int(self._ints[0] if self.params.rule == "intercept" else self._seen[0])

    @property
    def adjustment(self) -> tuple[float, float]:
        """(a, b) of the current map sigmoid(a * logit(p) + b)."""
        if self.params.rule == "intercept":
            ints = self._ints
            return 1.0, float(_gap(ints[2], ints[3], ints[0], self.params.window))
        if self.params.rule == "sgd_platt":
            return float(self._ab[0]), float(self._ab[1])
        return 1.0, 0.0

    def process(self, p: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of `p` (the offline calibrated ones, in event order); row
        i uses only the labels of rows before it (and of earlier calls), then learns its own.

        labels: 1.0 / 0.0, NaN for a row without one (`event_label`). Raises ValueError on
        other values or mismatched lengths, before changing any state.
        """
        p = np.ascontiguousarray(p, dtype=np.float64)
        y = np.ascontiguousarray(labels, dtype=np.float64)
        if p.ndim != 1 or p.shape != y.shape:
            raise ValueError(f"p and labels must be 1-D of one length, got {p.shape}, {y.shape}")
        if not np.all((y == 0.0) | (y == 1.0) | np.isnan(y)):
            raise ValueError("labels must be 0.0, 1.0 or NaN")
        if not np.all(np.isfinite(p)):
            raise ValueError("probabilities must be finite")
        rule = self.params.rule
        if rule == "none":
            return p.copy()
        out = np.empty_like(p)
        if rule == "intercept":
            _intercept_kernel(p, y, self._ring_y, self._ring_p, self._ints, out)
        else:
            _sgd_platt_kernel(p, y, self.params.step, self._ab, self._seen, out)
        return out

    # ----------------------------------------------------------------------- state
    def to_bytes(self) -> bytes:
        """The whole state, to store beside the batch it follows (same transaction)."""
        version = self.model_version.encode()
        head = _HEAD.pack(_MAGIC, FORMAT, RULES.index(self.params.rule), len(version))
        count, ring_head = int(self._ints[0]), int(self._ints[1])
        if self.params.rule == "sgd_platt":
            count = int(self._seen[0])
        body = _BODY.pack(self.params.window, self.params.step, count, ring_head,
                          float(self._ab[0]), float(self._ab[1]))  # fmt: skip
        rings = b""
        if self.params.rule == "intercept":
            rings = self._ring_y.astype(np.uint8).tobytes() + self._ring_p.tobytes()
        return head + version + body + rings

    @classmethod
    def from_bytes(cls, data: bytes, model_version: str, params: OnlineParams) -> OnlineCalibrator:
        """A state written by `to_bytes`. StateMismatch if it is of another format, another
        model version or other parameters; BadState if the bytes are not a whole state."""
        rule_index, n_version = state_format.read_head(
            _HEAD, data, _MAGIC, FORMAT, "online calibrator state", BadState, StateMismatch
        )
        offset = _HEAD.size
        stored_version = bytes(data[offset : offset + n_version]).decode(errors="replace")
        if stored_version != model_version:
            raise StateMismatch(
                f"online calibrator state of model {stored_version}, not {model_version}"
            )
        offset += n_version
        try:
            window, step, count, ring_head, a, b = _BODY.unpack_from(data, offset)
        except struct.error as exc:
            raise BadState("truncated online calibrator state") from exc
        stored = (RULES[rule_index] if rule_index < len(RULES) else "?", window, step)
        if stored != (params.rule, params.window, params.step):
            raise StateMismatch(f"online calibrator state for {stored}, not {params}")
        offset += _BODY.size
        calibrator = cls(params, model_version)
        if params.rule == "intercept":
            end = offset + 9 * window
            if len(data) != end or count > window or ring_head >= window:
                raise BadState("malformed online calibrator state")
            calibrator._ring_y[:] = np.frombuffer(data, np.uint8, window, offset)
            calibrator._ring_p[:] = np.frombuffer(data, np.int64, window, offset + window)
            ints = calibrator._ints
            ints[0], ints[1] = count, ring_head
            ints[2], ints[3] = calibrator._ring_y.sum(), calibrator._ring_p.sum()
        elif len(data) != offset:
            raise BadState("malformed online calibrator state")
        else:
            calibrator._ab[:] = (a, b)
            calibrator._seen[0] = count
        return calibrator

    @classmethod
    def restore(
        cls, data: bytes | None, model_version: str, params: OnlineParams
    ) -> OnlineCalibrator:
        """The stored state if it is this model's and these parameters', else a fresh
        calibrator (a new model version, or changed settings, start from the offline
        calibration)."""
        if data:
            try:
                return cls.from_bytes(data, model_version, params)
            except StateMismatch:
                pass
        return cls(params, model_version)


# --------------------------------------------------------------------------- per partition
#: `domains_to_bytes` layout: magic, format, number of domains; then per domain (sorted by
#: name) the name's length, the name, the state's length and `OnlineCalibrator.to_bytes()`.
_SET_MAGIC = b"OS"
_SET_HEAD = struct.Struct("<2sBH")
_SET_ITEM = struct.Struct("<HI")


def domains_to_bytes(calibrators: Mapping[str, OnlineCalibrator]) -> bytes:
    """One partition's calibrators (one per domain) as the bytes the consumer stores beside
    the partition's offset (scoring.quality_keys.calibration_key)."""
    parts = [_SET_HEAD.pack(_SET_MAGIC, FORMAT, len(calibrators))]
    for domain in sorted(calibrators):
        name, state = domain.encode(), calibrators[domain].to_bytes()
        parts += [_SET_ITEM.pack(len(name), len(state)), name, state]
    return b"".join(parts)


def domains_from_bytes(data: bytes) -> dict[str, bytes]:
    """Domain -> that domain's calibrator bytes (for `OnlineCalibrator.restore`) of a
    `domains_to_bytes` state. BadState if the bytes are not a whole one (a state of another
    format is read as none: its calibrators start afresh)."""
    try:
        magic, fmt, count = _SET_HEAD.unpack_from(data, 0)
    except struct.error as exc:
        raise BadState("not a partition's online calibrator state") from exc
    if magic != _SET_MAGIC:
        raise BadState("not a partition's online calibrator state")
    if fmt != FORMAT:
        return {}
    out: dict[str, bytes] = {}
    offset = _SET_HEAD.size
    try:
        for _ in range(count):
            n_name, n_state = _SET_ITEM.unpack_from(data, offset)
            offset += _SET_ITEM.size
            name = bytes(data[offset : offset + n_name]).decode()
            offset += n_name
            state = bytes(data[offset : offset + n_state])
            if len(state) != n_state:
                raise BadState("truncated partition's online calibrator state")
            offset += n_state
            out[name] = state
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadState("truncated partition's online calibrator state") from exc
    if offset != len(data):
        raise BadState("malformed partition's online calibrator state: trailing bytes")
    return out
