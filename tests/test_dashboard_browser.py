"""The dashboard in a real headless Chromium, fed live by the consumer while events stream."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
import redis

from consumer.runner import StreamConsumer
from engage.api import create_app
from engage.settings import Settings
from features import keys
from scoring.reason_words import phrase
from tests.browser import chrome, find_chromium, serve_in_thread
from tests.conftest import IN_CI
from tests.eventlog import make_log, publish_log

pytestmark = pytest.mark.stack

XSS_USER = "<b>x</b>"
NAMES_JS = "return [...document.querySelectorAll('#leaderboard td.user')].map(c => c.textContent)"
BOARD_JS = """return [...document.querySelectorAll('#leaderboard tr')]
    .map(r => [r.dataset.user, parseFloat(r.dataset.score)]);"""


@pytest.fixture(scope="module")
def browser_available() -> None:
    if find_chromium() is None:
        message = "Chromium/chromedriver missing and not installable (apt-get, as root)"
        if IN_CI:
            pytest.fail(f"CI must run the browser test, but: {message}", pytrace=False)
        pytest.skip(message)


def _log() -> tuple[list[dict], list[dict], dict]:
    """Two phases of one log (each user's early events, then the rest); 17 users incl. one
    whose id is HTML, so the whole population fits on the top-20 board."""
    events, genres = make_log(n_users=16, events_per_user=24)
    xss = [{**e, "user_id": XSS_USER, "event_id": f"x{e['event_id']}"}
           for e in events if e["user_id"] == "user0"]  # fmt: skip
    events += xss
    early = [e for e in events if int(e["event_id"].rsplit(":", 1)[1]) < 8]
    late = [e for e in events if int(e["event_id"].rsplit(":", 1)[1]) >= 8]
    return early, late, genres


def _processed(client: redis.Redis, settings: Settings) -> int:
    return int(client.hget(keys.stats_key(settings.events_topic), "processed") or 0)


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


def _redis_board(client: redis.Redis) -> list[list]:
    top = client.zrevrange(keys.leaderboard_key("rule"), 0, 19, withscores=True)
    return [[m.decode(), s] for m, s in top]


def test_dashboard_follows_live_scores(browser_available, settings, redis_client):
    early, late, genres = _log()
    publish_log(settings, early, genres)
    consumer = StreamConsumer(settings, group="dashboard-test")
    runner = threading.Thread(target=consumer.run, name="consumer", daemon=True)
    runner.start()
    try:
        _wait(lambda: _processed(redis_client, settings) == len(early), 60, "the early events")
        with serve_in_thread(create_app(settings)) as base, chrome() as page:
            page.get(base + "/")
            _wait(lambda: page.execute_script(BOARD_JS) == _redis_board(redis_client), 15,
                  "the page to show the leaderboard")  # fmt: skip
            first = page.execute_script(BOARD_JS)
            assert len(first) == 17

            producer = threading.Thread(target=_produce_slowly, args=(settings, late, genres))
            producer.start()
            seen = [first]
            while producer.is_alive() or _processed(redis_client, settings) < len(early) + len(
                late
            ):
                seen.append(page.execute_script(BOARD_JS))
                time.sleep(0.25)
                assert len(seen) < 400, "the consumer did not catch up"
            producer.join()
            _wait(lambda: page.execute_script(BOARD_JS) == _redis_board(redis_client), 15,
                  "the page to settle on Redis's leaderboard")  # fmt: skip

            final = page.execute_script(BOARD_JS)
            assert final != first, "the leaderboard numbers never changed"
            assert len({str(s) for s in seen}) >= 3, "expected several live states, saw too few"
            assert int(page.find_element("id", "updates").get_attribute("data-count")) > 0

            # The HTML-looking id is text, not markup, on the board and in the user panel.
            assert (
                page.execute_script("return document.querySelectorAll('#leaderboard b').length")
                == 0
            )
            names = page.execute_script(NAMES_JS)
            assert XSS_USER in names
            box = page.find_element("id", "user-input")
            box.clear()
            box.send_keys(XSS_USER + "\n")
            _wait(lambda: page.find_element("id", "user-id").text == XSS_USER, 10, "the user panel")
            assert page.execute_script("return document.querySelectorAll('#user-id *').length") == 0
            stored = float(redis_client.hget(keys.user_score_key(XSS_USER), "rule_score"))
            shown = page.find_element("id", "user-score").get_attribute("data-score")
            assert float(shown) == stored
            assert page.find_elements("css selector", "#reasons li")
    finally:
        consumer.stopping = True
        runner.join(timeout=30)
        consumer.close()


def _produce_slowly(settings: Settings, events: list[dict], genres: dict) -> None:
    """The late events in six chunks over about three seconds: a log being produced."""
    chunk = len(events) // 6 + 1
    for start in range(0, len(events), chunk):
        publish_log(settings, events[start : start + chunk], genres)
        time.sleep(0.5)


LAYOUT_JS = """
const vw = document.documentElement.clientWidth;
const [board, user] = [...document.querySelectorAll('main > section')]
    .map(s => s.getBoundingClientRect());
const cells = [...document.querySelectorAll('#leaderboard tr:first-child td, thead th')]
    .map(c => c.getBoundingClientRect());
return {
    overflow: document.documentElement.scrollWidth - vw,
    stacked: user.top >= board.bottom && Math.abs(user.left - board.left) < 1,
    panelsFit: board.right <= vw && user.right <= vw,
    clipped: cells.filter(c => c.left < board.left || c.right > board.right).length,
    cells: cells.length,
};"""
TICKS_JS = "return [...document.querySelectorAll('#timeline text.tick')].map(t => t.textContent)"
LABELS_JS = "return [...document.querySelectorAll('#leaderboard tr')].map(r => r.dataset.label)"


def test_dashboard_on_a_400px_screen_stacks_and_loads_the_timeline(
    browser_available, settings, redis_client
):
    """At 400 px the panels stack and no column is cut off; a chosen user's timeline starts
    with their past scores (from the scores topic), on an event-time axis; the leaderboard
    filters by label."""
    events, genres = make_log(n_users=8, events_per_user=12)
    publish_log(settings, events, genres)
    consumer = StreamConsumer(settings, group="dashboard-narrow")
    try:
        consumer.run(idle_exit_s=3)
    finally:
        consumer.close()
    scored = sum(e["user_id"] == "user0" for e in events)
    with serve_in_thread(create_app(settings)) as base, chrome(width=400, height=900) as page:
        # Headless Chromium's windows are at least 500 px wide: the screen is emulated.
        page.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 400, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        page.get(base + "/?user=user0")
        assert page.execute_script("return window.innerWidth") == 400
        _wait(lambda: len(page.execute_script(BOARD_JS)) == 8, 15, "the leaderboard")
        _wait(
            lambda: page.find_element("id", "timeline").get_attribute("data-points") == str(scored),
            15,
            "the timeline to load user0's past scores",
        )
        ticks = page.execute_script(TICKS_JS)
        assert len(ticks) == 3 and all(ticks), ticks  # event-time labels under the axis
        assert "score(s) by event time" in page.find_element("id", "timeline-note").text

        layout = page.execute_script(LAYOUT_JS)
        assert layout["overflow"] <= 0, layout  # nothing wider than the screen
        assert layout["stacked"] and layout["panelsFit"], layout
        assert layout["cells"] == 10 and layout["clipped"] == 0, layout

        assert page.find_element("id", "board-summary").text  # what the labels add up to
        labels = page.execute_script(LABELS_JS)
        wanted = labels[-1]
        page.execute_script(
            "const s = document.getElementById('board-label'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('change'));",
            wanted,
        )
        _wait(
            lambda: page.execute_script(LABELS_JS) == [wanted] * labels.count(wanted),
            10,
            f"the board to show only {wanted} users",
        )
        assert wanted in page.find_element("id", "board-title").text


MODEL_REASONS_JS = """
return [...document.querySelectorAll('#model-reasons li[data-feature]')].map(li => {
    const pts = li.querySelector('.pts');
    return {feature: li.dataset.feature, text: li.querySelector('.text').textContent,
            contribution: parseFloat(pts.textContent), color: getComputedStyle(pts).color,
            way: pts.classList.contains('up') ? 'up' : pts.classList.contains('down') ? 'down'
                 : ''};
});"""
UP, DOWN = "rgb(26, 127, 55)", "rgb(198, 40, 40)"  # green and red, as the page's CSS has them


def _shown_as_stored(page, redis_client: redis.Redis, user: str) -> bool:
    """The page's model reasons are the user's stored ones, in words, coloured by sign."""
    stored = orjson.loads(redis_client.hget(keys.user_score_key(user), "model_reasons"))
    shown = page.execute_script(MODEL_REASONS_JS)
    words = [(r["feature"], phrase(r["feature"])) for r in stored]
    if [(s["feature"], s["text"]) for s in shown] != words:
        return False
    if any(abs(s["contribution"] - r["contribution"]) > 6e-4  # shown to 3 decimals
           for s, r in zip(shown, stored, strict=True)):  # fmt: skip
        return False
    for s, r in zip(shown, stored, strict=True):
        way = "up" if r["contribution"] > 0 else "down" if r["contribution"] < 0 else ""
        assert s["way"] == way and s["color"] == {"up": UP, "down": DOWN}.get(way, s["color"])
    return bool(stored)


def test_dashboard_shows_model_reasons_in_words(
    browser_available, settings, redis_client, tmp_path
):
    """A chosen user's model reasons read in words (from the API's `text`, then from live
    updates, which carry only feature and contribution), green when they raise the
    probability and red when they lower it."""
    from tests.test_api import _register_model

    settings = settings.model_copy(update={"data_dir": tmp_path})  # never the repo's .data
    _register_model(settings)
    events, genres = make_log(n_users=4, events_per_user=10)
    early = [e for e in events if int(e["event_id"].rsplit(":", 1)[1]) < 6]
    late = [e for e in events if int(e["event_id"].rsplit(":", 1)[1]) >= 6]
    publish_log(settings, early, genres)
    _consume(settings, "dashboard-reasons")
    with serve_in_thread(create_app(settings)) as base, chrome() as page:
        page.get(base + "/?user=user0")
        _wait(lambda: _shown_as_stored(page, redis_client, "user0"), 15,
              "user0's model reasons in words")  # fmt: skip
        publish_log(settings, late, genres)
        _consume(settings, "dashboard-reasons")
        _wait(lambda: int(page.find_element("id", "updates").get_attribute("data-count")), 15,
              "live updates")  # fmt: skip
        _wait(lambda: _shown_as_stored(page, redis_client, "user0"), 15,
              "user0's model reasons from the live updates, in words")  # fmt: skip


def _consume(settings: Settings, group: str) -> None:
    consumer = StreamConsumer(settings, group=group)
    try:
        consumer.run(idle_exit_s=3)
    finally:
        consumer.close()


QUALITY_JS = """
const $ = (id) => document.getElementById(id);
return {status: $('quality-status').dataset.status, bins: +$('reliability').dataset.bins,
        days: +$('auc-days').dataset.points,
        windows: [...document.querySelectorAll('#quality-windows tr')].map(r => r.dataset.window),
        features: [...document.querySelectorAll('#drift-features li')]
            .map(l => l.dataset.feature),
        drifting: [...document.querySelectorAll('#drift-features li.drifting')]
            .map(l => l.dataset.feature),
        overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth};
"""


@pytest.mark.parametrize("width", [1300, 400])
def test_dashboard_quality_panel_shows_reliability_auc_and_drift(
    browser_available, settings, redis_client, tmp_path, width
):
    """The quality panel (issue 18): the reliability curve and the windows' figures of the
    first domain, its ROC-AUC per day, the drift status with the top features, as
    `engage quality` reports them; at 400 px it stacks within the screen."""
    from offline.quality_report import collect_quality, status
    from tests.test_live_quality_stream import registered_model

    settings = settings.model_copy(update={"data_dir": tmp_path, "drift_block_vectors": 100,
                                           "drift_blocks": 3, "live_quality": True})  # fmt: skip
    registered_model(settings)
    events, genres = make_log(n_users=30, events_per_user=30)
    publish_log(settings, events, genres)
    _consume(settings, "dashboard-quality")
    report = collect_quality(settings)
    domain = next(iter(report["quality"]))
    q = report["quality"][domain]
    windows = [w for w, f in q["windows"].items() if f["n"]]
    with serve_in_thread(create_app(settings)) as base, chrome(width=max(width, 500)) as page:
        if width < 500:  # headless Chromium's windows are at least 500 px wide
            page.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
        page.get(base + "/")
        _wait(lambda: page.execute_script(QUALITY_JS)["bins"] > 0, 20, "the quality panel")
        shown = page.execute_script(QUALITY_JS)
        page.execute_script(
            "const s = document.getElementById('quality-domain');"
            "s.value = 'funnel/propensity'; s.dispatchEvent(new Event('change'));"
        )
        note = page.execute_script("return document.getElementById('quality-note').textContent")
    waiting = report["funnel"]["waiting"]  # the funnel propensity's scores waiting for a label
    assert note.endswith(f"labelled events judged; {waiting:,} waiting for a conversion"), note
    assert shown["status"] == status(report) and shown["status"] in ("ok", "drifting")
    assert shown["bins"] == len(q["windows"][windows[-1]]["reliability"]) > 0
    assert shown["days"] == sum(d["roc_auc"] is not None for d in q["days"]) > 0
    assert shown["windows"] == windows
    (drift,) = report["drift"]
    assert shown["features"] == [row["feature"] for row in drift["top"]]
    assert shown["drifting"] == [f for f in shown["features"] if f in drift["drifting"]]
    assert shown["overflow"] <= 0, shown
