"""Replay pacing against a fake clock (one short real wait: stopping cuts a sleep short)."""

from __future__ import annotations

import threading
import time

import pytest

from producer import synthetic
from producer.pacing import MAX, REALTIME, Pacer, RatePacer, Speed, parse_speed, throttle


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.mark.parametrize(
    ("text", "factor"),
    [("max", None), ("MAX", None), ("realtime", 1.0), ("10", 10.0), ("2.5", 2.5), ("60x", 60.0)],
)
def test_parse_speed(text: str, factor: float | None) -> None:
    assert parse_speed(text) == Speed(factor)


@pytest.mark.parametrize("text", ["fast", "0", "-3", "inf", "nan", ""])
def test_parse_speed_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="speed"):
        parse_speed(text)


def test_gaps_are_divided_by_n() -> None:
    clock = FakeClock()
    pacer = Pacer(Speed(10.0), clock)
    for ts in [5_000, 6_000, 6_000, 26_000, 27_500]:
        pacer.wait(ts)
    assert clock.sleeps == pytest.approx([0.1, 2.0, 0.15])
    assert clock.t - 1000.0 == pytest.approx((27_500 - 5_000) / 1000 / 10)


def test_realtime_is_n_equals_one() -> None:
    clock = FakeClock()
    pacer = Pacer(REALTIME, clock)
    for ts in [0 + 1_000_000_000_000, 1_000_000_003_000]:
        pacer.wait(ts)
    assert clock.sleeps == pytest.approx([3.0])


def test_max_never_waits() -> None:
    clock = FakeClock()
    pacer = Pacer(MAX, clock)
    for ts in [0, 10_000_000, 99_000_000]:
        pacer.wait(ts)
    assert clock.sleeps == []


def test_time_spent_sending_counts_against_the_wait() -> None:
    """Anchored to the first event: a slow send shortens the next sleep, no drift builds up."""
    clock = FakeClock()
    pacer = Pacer(Speed(2.0), clock)
    pacer.wait(0)
    clock.t += 0.4  # sending took 0.4 s
    pacer.wait(2_000)  # due 1.0 s after the first
    assert clock.sleeps == pytest.approx([0.6])
    clock.t += 5.0  # fell far behind
    pacer.wait(4_000)  # due at 2.0 s: already late, so no sleep
    assert clock.sleeps == pytest.approx([0.6])
    assert str(Speed(2.0)) == "2x" and str(REALTIME) == "realtime" and str(MAX) == "max"


def test_a_rate_ignores_event_times_and_does_not_drift() -> None:
    """--rate N: the k-th event is due k/N s after the first, whatever the event times."""
    clock = FakeClock()
    pacer = RatePacer(4.0, clock)
    for ts in [0, 0, 10**12, 5]:
        pacer.wait(ts)
    assert clock.sleeps == pytest.approx([0.25, 0.25, 0.25])
    clock.t += 1.0  # sending fell behind: the next events are already due
    pacer.wait(0)
    pacer.wait(0)
    assert len(clock.sleeps) == 3
    with pytest.raises(ValueError, match="rate"):
        RatePacer(0.0)


def test_stopping_cuts_a_pacing_sleep_short() -> None:
    """A Ctrl-C (or a demo's end) during a long wait ends it at once, yielding nothing more."""
    stop = threading.Event()
    events = list(synthetic.events(synthetic.SyntheticConfig(users=2, days=1, seed=1)))[:3]
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert len(list(throttle(events, 0.1, stop))) == 1  # the second is due after 10 s
    assert time.monotonic() - started < 5
