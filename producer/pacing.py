"""Replay pacing: map event time onto wall time, N times faster (or not at all).

The pacer anchors the first event to the wall clock and aims every later event at
`anchor + (ts - first_ts) / N`, so rounding and slow sends never accumulate drift: a replay
that fell behind simply does not sleep until it has caught up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from features.events import Event


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The wall clock; `stop` (when given) cuts a sleep short the moment it is set, so a
    Ctrl-C or a demo's end never waits out a long gap between events."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if self.stop is None:
            time.sleep(seconds)
        else:
            self.stop.wait(seconds)


@dataclass(frozen=True)
class Speed:
    """How many times faster than real time event time runs; None = as fast as possible."""

    factor: float | None

    @property
    def is_max(self) -> bool:
        return self.factor is None

    def __str__(self) -> str:
        if self.factor is None:
            return "max"
        return "realtime" if self.factor == 1 else f"{self.factor:g}x"


MAX = Speed(None)
REALTIME = Speed(1.0)


def parse_speed(text: str) -> Speed:
    """`max`, `realtime` or a positive number N (event time runs N times faster than wall).

    >>> parse_speed("max").is_max, parse_speed(" Realtime ").factor
    (True, 1.0)
    >>> str(parse_speed("86400")), str(parse_speed("2.5x"))
    ('86400x', '2.5x')
    >>> parse_speed("0")
    Traceback (most recent call last):
    ...
    ValueError: speed must be a number > 0, not '0'
    """
    word = text.strip().lower()
    if word == "max":
        return MAX
    if word == "realtime":
        return REALTIME
    try:
        factor = float(word.removesuffix("x"))
    except ValueError:
        raise ValueError(f"speed must be 'max', 'realtime' or a number > 0, not {text!r}") from None
    if not factor > 0 or factor == float("inf"):
        raise ValueError(f"speed must be a number > 0, not {text!r}")
    return Speed(factor)


class Pacer:
    """Sleeps before each event until its scaled event time has come."""

    def __init__(self, speed: Speed, clock: Clock | None = None) -> None:
        self.speed = speed
        self.clock = clock or SystemClock()
        self._anchor: tuple[float, int] | None = None
        self.slept = 0.0

    def wait(self, ts_ms: int) -> None:
        factor = self.speed.factor
        if factor is None:
            return
        if self._anchor is None:
            self._anchor = (self.clock.now(), ts_ms)
            return
        wall0, ts0 = self._anchor
        delay = wall0 + (ts_ms - ts0) / 1000.0 / factor - self.clock.now()
        if delay > 0:
            self.clock.sleep(delay)
            self.slept += delay


class RatePacer:
    """Sleeps before each event until its turn at `rate` events per second of wall time,
    whatever the event times (`--rate`, demos, latency benchmarks). Anchored like Pacer."""

    def __init__(self, rate: float, clock: Clock | None = None) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be a number of events per second > 0, not {rate!r}")
        self.rate = rate
        self.clock = clock or SystemClock()
        self._started: float | None = None
        self._n = 0

    def wait(self, ts_ms: int) -> None:
        if self._started is None:
            self._started = self.clock.now()
        delay = self._started + self._n / self.rate - self.clock.now()
        self._n += 1
        if delay > 0:
            self.clock.sleep(delay)


def throttle(
    events: Iterable[Event], rate: float, stop: threading.Event | None = None
) -> Iterator[Event]:
    """Yield events at about `rate` per second of wall time until `stop` is set."""
    pacer = RatePacer(rate, SystemClock(stop))
    for event in events:
        if stop is not None and stop.is_set():
            return
        pacer.wait(event.ts)
        if stop is not None and stop.is_set():
            return
        yield event
