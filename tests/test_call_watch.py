"""The watch that frees a kafka-python call left waiting (engage/transport/call_watch.py).

The watch against a stand-in I/O loop that records what was done to it; the real client's
wedge is tests/test_consumer_faults.py's (`_a_call_never_returns`)."""

from __future__ import annotations

import threading
import time

import pytest

from engage.transport import call_watch
from engage.transport.call_watch import CallWatch, CallWedged


class _Loop:
    """What the watch touches of kafka-python's NetworkSelector: wakeup and the waiters."""

    def __init__(self) -> None:
        self.woken = 0
        self.waiting = threading.Event()
        self._pending_waiters: dict[object, object] = {}
        self.failed_with: BaseException | None = None

    def wakeup(self) -> None:
        self.woken += 1

    def _fail_pending_waiters(self, exc: BaseException) -> None:
        self._pending_waiters.clear()
        self.failed_with = exc
        self.waiting.set()


@pytest.fixture(autouse=True)
def _quick(monkeypatch) -> None:
    monkeypatch.setattr(call_watch, "TICK_S", 0.02)
    monkeypatch.setattr(call_watch, "KICK_GRACE_S", 0.1)


def test_a_call_that_returns_in_time_is_left_alone() -> None:
    loop, watch = _Loop(), CallWatch("test-watch")
    loop._pending_waiters[object()] = {}
    for _ in range(3):
        with watch.call("poll", loop, limit_s=0.3):
            time.sleep(0.1)
    time.sleep(0.5)  # (past every deadline: none is watched any more)
    watch.close()
    assert (loop.woken, loop.failed_with, watch.freed) == (0, None, 0)


def test_a_call_left_waiting_is_woken_then_failed() -> None:
    loop, watch = _Loop(), CallWatch("test-watch")
    loop._pending_waiters[object()] = {}
    began = time.monotonic()
    with watch.call("poll", loop, limit_s=0.2):
        assert loop.waiting.wait(5.0)  # as kafka-python's caller would, until failed
    waited = time.monotonic() - began
    watch.close()
    assert loop.woken == 1 and watch.freed == 1
    assert isinstance(loop.failed_with, CallWedged) and "poll" in str(loop.failed_with)
    assert 0.3 <= waited < 2.0  # the deadline, then the grace after the wake-up


def test_a_wait_with_no_waiter_to_fail_is_reported_once(caplog) -> None:
    loop, watch = _Loop(), CallWatch("test-watch")
    with caplog.at_level("WARNING", logger="engage"), watch.call("position", loop, 0.1):
        time.sleep(0.6)
    watch.close()
    said = [r.getMessage() for r in caplog.records]
    assert loop.woken == 1 and watch.freed == 0 and loop.failed_with is None
    assert sum("on nothing this watch can fail" in m for m in said) == 1, said
