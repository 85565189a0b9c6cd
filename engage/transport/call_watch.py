"""Frees a caller that kafka-python 3.0.12 would leave waiting for ever.

Why: kafka-python 3.0 runs its network loop on an I/O thread; a blocking call (`poll`,
`position`) hands that thread a task and waits on a `threading.Event` with no timeout
(`NetworkSelector.run`). CI saw a consumer's main thread wait there for ten minutes while the
I/O thread sat idle in `select`, the task never run, and the broker served every other client.
Upstream's answer (kafka-python 3.1, not released: "raise KafkaTimeoutError from user-side of
net.run()", dpkp/kafka-python#3123, after #3121's commit that waited for hours) is a timeout
on that wait. Until it ships, this watch gives a call a deadline: past it the I/O loop is
woken once (in case only its wake-up was lost), and if the call is still waiting shortly after,
the loop's pending waiters are failed with `CallWedged`, so the caller returns and can
replace the client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("engage.kafka")

#: After the wake-up, how long a call may still take before its waiters are failed.
KICK_GRACE_S = 2.0
#: How often the watch looks at the call in progress.
TICK_S = 0.5


class CallWedged(Exception):
    """A kafka-python call outlived its deadline: its waiter was failed by the watch."""


class CallWatch:
    """One watch thread per client holder; at most one watched call at a time (the holder's
    thread). The thread starts with the first call and ends with `close()`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._call: _Call | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.freed = 0  # calls whose waiters were failed

    @contextmanager
    def call(self, what: str, net: Any, limit_s: float) -> Iterator[None]:
        """Watch the block's kafka-python call on `net` (its NetworkSelector) for `limit_s`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=self._name, daemon=True)
            self._thread.start()
        self._call = _Call(what, net, time.monotonic() + limit_s)
        try:
            yield
        finally:
            self._call = None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(TICK_S):
            call = self._call
            if call is None or time.monotonic() < call.deadline:
                continue
            if not call.kicked:
                call.kicked = True
                call.deadline = time.monotonic() + KICK_GRACE_S
                log.warning("kafka-python %s still waiting past its deadline: waking its I/O loop",
                            call.what)  # fmt: skip
                _wake(call.net)
                continue
            if _fail_waiters(call.net, CallWedged(f"kafka-python {call.what} wedged")):
                self.freed += 1
                log.warning("kafka-python %s still waiting after a wake-up: its waiter failed",
                            call.what)  # fmt: skip
            else:
                log.warning("kafka-python %s still waiting, on nothing this watch can fail",
                            call.what)  # fmt: skip
            call.deadline = float("inf")  # once per call


class _Call:
    __slots__ = ("deadline", "kicked", "net", "what")

    def __init__(self, what: str, net: Any, deadline: float) -> None:
        self.what, self.net, self.deadline, self.kicked = what, net, deadline, False


def _wake(net: Any) -> None:
    wakeup = getattr(net, "wakeup", None)
    if wakeup is not None:
        wakeup()


def _fail_waiters(net: Any, exc: Exception) -> bool:
    """Fail the loop's pending cross-thread waiters (kafka-python 3.0's `NetworkSelector`
    members; the loop's own `stop()` does the same). False when there was none to fail."""
    pending = getattr(net, "_pending_waiters", None)
    fail = getattr(net, "_fail_pending_waiters", None)
    if not pending or fail is None:
        return False
    fail(exc)
    return True
