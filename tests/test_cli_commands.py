"""The day-to-day subcommands, as a user runs them, against the real stack: happy path and
the main error path of each (unknown user, services down, bad arguments)."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from consumer.runner import StreamConsumer
from tests.eventlog import engage_env, make_log, publish_log

pytestmark = pytest.mark.stack


def engage(settings, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env_extra), capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


@pytest.fixture
def scored(settings, tmp_path):
    settings = settings.model_copy(update={"data_dir": tmp_path})
    events, genres = make_log(n_users=12, events_per_user=15)
    publish_log(settings, events, genres)
    StreamConsumer(settings, group=f"{settings.events_topic}.cli").run(idle_exit_s=3)
    return settings


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_score_top_stats(scored, redis_client, tmp_path):
    result = engage(scored, "score", "weird:1", "--json")
    assert result.returncode == 0, result.stderr
    score = json.loads(result.stdout)
    stored = redis_client.hget("u:{weird%3A1}:score", "rule_score")
    assert score["rule_score"] == float(stored) and score["reasons"]
    assert "weird:1" in engage(scored, "score", "weird:1").stdout

    unknown = engage(scored, "score", "nobody-here")
    assert unknown.returncode == 4 and "no score for user 'nobody-here'" in unknown.stderr

    out_csv = tmp_path / "top.csv"
    top = engage(scored, "top", "5", "--json", "--csv", str(out_csv))
    assert top.returncode == 0, top.stderr
    rows = json.loads(top.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["rule_score"] for r in rows] == sorted((r["rule_score"] for r in rows), reverse=True)
    with open(out_csv) as handle:
        assert [r["user_id"] for r in csv.DictReader(handle)] == [r["user_id"] for r in rows]
    assert engage(scored, "top", "5", "--label", "lukewarm").returncode == 2
    assert engage(scored, "top", "0").returncode == 2

    stats = json.loads(engage(scored, "stats", "--json").stdout)
    assert stats["processed"] == 180 and stats["dead_lettered"] == 0 and stats["total_lag"] == 0


def test_score_with_item_needs_a_model(scored):
    result = engage(scored, "score", "user0", "--item", "page1")
    assert result.returncode == 4 and "no model registered" in result.stderr


def test_score_with_an_unknown_item_warns(scored):
    from tests.test_api import _register_model

    _register_model(scored)
    known = engage(scored, "score", "user0", "--item", "m3", "--json")
    assert known.returncode == 0, known.stderr
    assert json.loads(known.stdout)["warnings"] == []
    unknown = engage(scored, "score", "user0", "--item", "never-seen", "--json")
    assert unknown.returncode == 0, unknown.stderr
    body = json.loads(unknown.stdout)
    assert 0.0 < body["probability"] < 1.0
    assert body["warnings"] and body["warnings"][0].startswith("unknown item 'never-seen'")
    shown = engage(scored, "score", "user0", "--item", "never-seen")
    assert shown.returncode == 0 and "P(engaged | user0, never-seen)" in shown.stdout
    assert "note: unknown item 'never-seen'" in shown.stderr
    assert "item features are at their prior" in shown.stderr


def test_score_shows_model_reasons_in_words(scored):
    """With a model registered before the events are scored: `engage score --json` keeps each
    model reason's feature and contribution and adds its text; the table shows the words;
    `--item` reads them with the request's feature values."""
    from scoring.reason_words import phrase
    from tests.test_api import _register_model

    _register_model(scored)
    more, genres = make_log(n_users=2, events_per_user=4, seed=98)
    for e in more:  # after the users' earlier events: not late (max_lateness_s)
        e["ts"] += 60 * 86_400_000
    publish_log(scored, more, genres)
    StreamConsumer(scored, group=f"{scored.events_topic}.cli").run(idle_exit_s=3)
    result = engage(scored, "score", "user0", "--json")
    assert result.returncode == 0, result.stderr
    reasons = json.loads(result.stdout)["model_reasons"]
    assert reasons and all(set(r) == {"feature", "contribution", "text"} for r in reasons)
    assert [r["text"] for r in reasons] == [phrase(r["feature"]) for r in reasons]
    table = engage(scored, "score", "user0", COLUMNS="200")
    assert table.returncode == 0, table.stderr
    for r in reasons:
        assert f"{r['contribution']:+.3f}  {r['text']}" in table.stdout
    item = engage(scored, "score", "user0", "--item", "m3", "--json")
    assert item.returncode == 0, item.stderr
    for r in json.loads(item.stdout)["reasons"]:
        assert set(r) == {"feature", "contribution", "text"}
        assert r["text"] != phrase(r["feature"])  # read with this request's value
    shown = engage(scored, "score", "user0", "--item", "m3", COLUMNS="200")
    assert all(r["text"] in shown.stdout for r in json.loads(item.stdout)["reasons"])


def test_watch_prints_live_updates_as_json_lines(scored):
    proc = subprocess.Popen(
        [sys.executable, "-m", "engage", "watch", "--json", "--duration", "12"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")},
             "ENGAGE_REDIS_URL": scored.redis_url, "ENGAGE_EVENTS_TOPIC": scored.events_topic,
             "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": scored.kafka_bootstrap_servers},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    import time

    time.sleep(4)  # let it subscribe
    more, genres = make_log(n_users=3, events_per_user=5, seed=99)
    for e in more:  # after the users' earlier events: not late (max_lateness_s)
        e["ts"] += 60 * 86_400_000
    publish_log(scored, more, genres)
    StreamConsumer(scored, group=f"{scored.events_topic}.cli").run(idle_exit_s=3)
    out, err = proc.communicate(timeout=30)
    updates = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert updates, err
    assert {u["event_id"][:5] for u in updates} == {"t:99:"}


def test_services_down_is_exit_3(settings):
    down = f"redis://127.0.0.1:{dead_port()}/0"
    for args in (("score", "u1"), ("top", "3"), ("stats",), ("watch", "--duration", "1")):
        result = engage(settings, *args, ENGAGE_REDIS_URL=down)
        assert result.returncode == 3, (args, result.stderr)
        assert "cannot reach Redis" in result.stderr


def test_consume_with_services_down_is_exit_3(settings):
    # A consumer waits for Redis (an outage is not an error) unless told when to give up.
    redis_down = engage(settings, "consume", "--idle-exit", "1",
                        ENGAGE_REDIS_URL=f"redis://127.0.0.1:{dead_port()}/0",
                        ENGAGE_REDIS_RETRY_GIVE_UP_S="2")  # fmt: skip
    assert redis_down.returncode == 3, redis_down.stderr[-2000:]
    assert "Traceback" not in redis_down.stderr
    kafka_down = engage(settings, "consume", "--idle-exit", "1",
                        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{dead_port()}")  # fmt: skip
    assert kafka_down.returncode == 3, kafka_down.stderr[-2000:]
    assert "cannot reach Kafka" in kafka_down.stderr


def test_serve_answers_then_a_taken_port_is_an_error(scored):
    import time
    import urllib.request

    port = dead_port()
    argv = [sys.executable, "-m", "engage", "serve", "--port", str(port)]
    server = subprocess.Popen(argv, env=engage_env(scored), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/users/top?n=3") as r:
                    top = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "engage serve never answered"
                time.sleep(0.2)
        assert len(top) == 3
        second = engage(scored, "serve", "--port", str(port))  # the port is taken now
        assert second.returncode != 0
        assert "address already in use" in second.stderr.lower()
    finally:
        server.terminate()
        server.wait(timeout=30)
    bad = engage(scored, "serve", "--port", "70000")
    assert bad.returncode == 2 and "--port" in bad.stderr


def test_a_bad_setting_is_one_line_naming_the_variable(settings):
    """A typo in an ENGAGE_* variable: exit 2 and the variable's name, no traceback, and the
    (possibly secret) values are not echoed."""
    result = engage(settings, "stats", ENGAGE_BATCH_MAX_RECORDS="hunter2-not-a-number",
                    ENGAGE_MAX_LATENESS_S="-5")  # fmt: skip
    assert result.returncode == 2, result.stderr
    output = result.stdout + result.stderr
    assert "ENGAGE_BATCH_MAX_RECORDS" in output and "ENGAGE_MAX_LATENESS_S" in output
    assert "Traceback" not in output and "hunter2" not in output


def test_consume_order_must_be_known(settings):
    result = engage(settings, "consume", "--idle-exit", "1", "--order", "sideways")
    assert result.returncode == 2, result.stderr
    assert "--order must be arrival or event-time" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# -- engage consume: summary, progress line and log lines (issue 16) -------------------------


def publish_more(settings, seed: int) -> int:
    """Events of six users (fresh ids for each seed), for one more `engage consume` run."""
    events, genres = make_log(n_users=6, events_per_user=10, seed=seed)
    return publish_log(settings, events, genres)


def on_a_terminal(settings, *args: str, timeout_s: float = 90) -> tuple[int, str, str]:
    """`engage ARGS` with stderr on an 80-column pseudo-terminal (as a person runs it) and
    stdout piped: (exit code, stdout, what the terminal showed, escape sequences removed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**engage_env(settings), "TERM": "xterm"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "engage", *args], env=env,
                            stdout=subprocess.PIPE, stderr=slave)  # fmt: skip
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the process closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    return proc.returncode, out.decode(), screen


def test_consume_json_summary_and_json_log_lines_when_piped(settings):
    produced = publish_more(settings, seed=21)
    result = engage(settings, "consume", "--idle-exit", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # the whole of stdout: one JSON document
    assert summary["processed"] == produced and summary["dead_lettered"] == 0
    assert {"batches", "fenced", "seconds", "events_per_s", "model_version", "errors"} <= set(
        summary
    )
    # stderr is not a terminal: JSON log lines, and no kafka-python event-loop noise.
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "engage.consumer" for r in records), result.stderr[-2000:]
    assert "event loop" not in result.stderr


def test_consume_summary_is_a_table_and_logs_readable_on_request(settings):
    produced = publish_more(settings, seed=22)
    result = engage(settings, "consume", "--idle-exit", "2", "--log-format", "human",
                    COLUMNS="80")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert "{" not in result.stdout  # not a Python dict
    assert [line.split() for line in lines if line.startswith("processed")] == [
        ["processed", f"{produced:,}"]
    ]
    assert "engage.consumer: " in result.stderr and '"level"' not in result.stderr
    bad = engage(settings, "consume", "--idle-exit", "1", "--log-format", "xml")
    assert bad.returncode == 2 and "--log-format must be auto, human or json" in bad.stderr


def test_consume_on_a_terminal_shows_a_progress_line(settings):
    produced = publish_more(settings, seed=23)
    code, out, screen = on_a_terminal(settings, "consume", "--idle-exit", "3", "--json")
    assert code == 0, screen[-2000:]
    assert json.loads(out)["processed"] == produced  # --json: stdout stays machine-readable
    # The live line: consumed, events/s, lag (`?` until every watermark is known), dead letters.
    assert re.search(rf"consumed {produced:,} · [\d,]+ events/s · lag (\d+|\?) · "
                     "dead-lettered 0", screen), screen[-2000:]  # fmt: skip
    assert "engage.consumer: " in screen and '"level"' not in screen  # readable log lines
    publish_more(settings, seed=24)
    code, _, screen = on_a_terminal(settings, "consume", "--idle-exit", "2", "--json",
                                    "--log-format", "json")  # fmt: skip
    assert code == 0, screen[-2000:]
    assert '"logger":"engage.consumer"' in screen and "events/s" not in screen
