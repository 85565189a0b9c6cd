"""Re-make docs/quality-panel.png: the dashboard's live quality panel after the consumer scored
ml-latest-small (or its first `--events` events), in its own namespace.

    .venv/bin/python docs/make_quality_png.py

As docs/make_dashboard_png.py: the model registered in `ENGAGE_DATA_DIR` when set (it must
be one `engage train` stored its drift reference with), else one trained into a temporary
folder (never the project's `.data`); fresh topics `engage.docs.<time>.*` and Redis database
`--redis-db` (11, which must be empty, or `--flush`). The events are replayed at full speed,
consumed to the end by one consumer holding the six partitions, and the `#quality` section of
the page (the API in a thread, headless Chromium) is saved. Topics and database are cleaned
up afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

from make_dashboard_png import _clean, _wait, docs_run  # noqa: E402

from consumer.runner import StreamConsumer  # noqa: E402
from engage.api import create_app  # noqa: E402
from producer.replay import ReplayOptions, replay  # noqa: E402
from tests.browser import chrome, serve_in_thread  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "quality-panel.png")
    parser.add_argument("--redis-db", type=int, default=11)
    parser.add_argument("--events", type=int, default=None, help="default: the whole log")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    parser.add_argument("--keep", action="store_true", help="keep the topics and the database")
    args = parser.parse_args()

    settings, client, source = docs_run(args.redis_db, args.flush)
    try:
        options = ReplayOptions(items=source.items, limit=args.events, progress=False)
        sent = replay(source.events(), settings, options).sent
        consumer = StreamConsumer(settings, group=f"{settings.events_topic}.docs")
        try:
            consumer.run(idle_exit_s=4)
        finally:
            consumer.close()
        with serve_in_thread(create_app(settings)) as url, chrome(1400, 1100) as page:
            page.get(f"{url}/")
            _wait(lambda: int(page.find_element("id", "reliability").get_attribute("data-bins")
                              or 0) > 0, 30, "the quality panel")  # fmt: skip
            panel = page.find_element("id", "quality")
            page.execute_script("arguments[0].scrollIntoView()", panel)
            time.sleep(0.5)
            panel.screenshot(str(args.out))
            status = page.find_element("id", "quality-status").text
        print(f"wrote {args.out} ({sent:,} events consumed; status {status})")
    finally:
        if not args.keep:
            _clean(settings, client)


if __name__ == "__main__":
    main()
