"""`GET /quality`: the live model quality and drift the consumer keeps (issue 18), as
`engage quality --json` reports them, for the dashboard's quality panel.

The report merges every partition's states (a SCAN of the topic's quality and drift keys and
a read of each); it is kept for `CACHE_S`, so however many pages poll it, Redis does that
work at most once per period.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from engage.settings import Settings

router = APIRouter(tags=["quality"])
CACHE_S = 5.0


class QualityCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.at = -CACHE_S
        self.report: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        from offline.quality_report import collect_quality, status

        with self.lock:
            if self.report is None or time.monotonic() - self.at >= CACHE_S:
                report = collect_quality(self.settings, top=5)
                report["status"] = status(report)
                self.report, self.at = report, time.monotonic()
            return self.report


@router.get("/quality")
async def quality(request: Request) -> dict[str, Any]:
    """Per domain the prequential figures of the served probability over the last 1,000 /
    10,000 labelled events and per day (ROC-AUC, log loss, ECE, the reliability curve, the
    positive rate vs the mean prediction, the rule's AUC); per model version the drift of
    each feature (PSI) with the top drifting ones; `status`: "drifting", "ok" or "no drift
    data". Empty `quality` and `drift` until the consumer has scored labelled events with a
    model."""
    cache: QualityCache = request.app.state.quality
    return await run_in_threadpool(cache.get)
