"""`engage replay ...`: clear one-line errors (exit 2) for bad input; summaries; exit codes."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from engage.cli import app
from engage.settings import Settings
from producer import commands, replay, synthetic
from producer.pacing import parse_speed
from producer.replay import ReplaySummary
from tests.eventlog import engage_env
from tests.test_producer_movielens import write_fixture
from tests.test_producer_pacing import FakeClock
from tests.test_producer_replay import consume_all

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["movielens", "--speed", "fast"], "--speed"),
        (["movielens", "--since", "yesterday"], "--since: not an ISO date"),
        (["movielens", "--since", "2018-01-01", "--until", "2017-01-01"], "earlier than"),
        (["movielens", "--path", "/no/such/folder"], "does not exist"),
        (["movielens", "--limit", "-1"], "--limit must be at least 0"),
        (["synthetic", "--users", "0"], "--users must be at least 1"),
        (["synthetic", "--days", "0"], "--days must be at least 1"),
        (["synthetic", "--speed", "-2"], "--speed"),
        (["synthetic", "--speed", "10", "--rate", "5"], "--speed and --rate"),
        (["synthetic", "--rate", "0"], "--rate must be"),
        (["movielens", "--skip", "-1"], "--skip must be at least 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["replay", *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_not_a_dataset_folder_is_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", "movielens", "--path", str(tmp_path)])
    assert result.exit_code == 2 and "no ratings.csv" in result.stderr


def test_undelivered_events_exit_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    summary = ReplaySummary(topic="t", sent=8, failed=2, errors=["KafkaTimeoutError: x"])
    with pytest.raises(typer.Exit) as caught:
        commands._report(summary, as_json=True, extra={})
    assert caught.value.exit_code == 1
    assert json.loads(capsys.readouterr().out)["failed"] == 2


@pytest.mark.stack
def test_replay_synthetic_command(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(commands, "get_settings", lambda: settings)
    truth = tmp_path / "truth.csv"
    args = ["synthetic", "--users", "30", "--days", "2", "--seed", "3", "--json"]
    result = runner.invoke(app, ["replay", *args, "--truth-file", str(truth)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (
        summary["sent"] > 0 and summary["failed"] == 0 and summary["topic"] == settings.events_topic
    )
    assert len(truth.read_text().splitlines()) == 31


@pytest.mark.stack
def test_replay_movielens_command_strict_and_lenient(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(
        commands, "get_settings", lambda: settings.model_copy(update={"cache_dir": tmp_path / "c"})
    )
    folder = write_fixture(tmp_path / "ml")
    strict = runner.invoke(app, ["replay", "movielens", "--path", str(folder), "--strict"])
    assert strict.exit_code == 1 and "ratings.csv:3" in strict.stderr
    lenient = runner.invoke(app, ["replay", "movielens", "--path", str(folder), "--json"])
    assert lenient.exit_code == 0, lenient.output
    summary = json.loads(lenient.stdout)
    assert (summary["sent"], summary["bad_rows"], summary["items_written"]) == (6, 9, 3)
    assert summary["bad_row_examples"][0] == "ratings.csv:3: expected 4 fields, saw 5"


@pytest.mark.stack
def test_a_paced_progress_bar_counts_every_event(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a low rate the bar shows each event as it is sent (it used to show 0 until 4,096)."""
    shown: list[int] = []

    @contextmanager
    def bar(*args: object, **kwargs: object) -> Iterator[Callable[[int], None]]:
        shown.append(0)
        yield lambda n: shown.append(shown[-1] + n)

    class Clock(FakeClock):
        def __init__(self) -> None:
            super().__init__()
            self.shown_at_sleep: list[int] = []  # what the bar showed while waiting

        def sleep(self, seconds: float) -> None:
            super().sleep(seconds)
            self.shown_at_sleep.append(shown[-1])

    clock = Clock()
    monkeypatch.setattr(replay, "progress_bar", bar)
    events = list(synthetic.events(synthetic.SyntheticConfig(users=5, days=1, seed=2)))[:12]
    summary = replay.replay(events, settings, replay.ReplayOptions(rate=2.0), clock=clock)
    assert summary.sent == 12 and clock.sleeps == [0.5] * 11
    assert clock.shown_at_sleep == list(range(1, 12)) and shown[-1] == 12

    # --speed N (event time N times faster) takes the same path: the bar never lags.
    shown.clear()
    clock = Clock()
    options = replay.ReplayOptions(speed=parse_speed("3600"))
    assert replay.replay(events, settings, options, clock=clock).sent == 12
    waits = clock.shown_at_sleep
    assert waits and all(0 < a < b for a, b in itertools.pairwise(waits)), waits
    assert shown[-1] == 12


@pytest.mark.stack
def test_ctrl_c_says_where_to_resume_and_resuming_sends_exactly_the_rest(
    settings: Settings,
) -> None:
    config = synthetic.SyntheticConfig(users=20, days=1, seed=5)
    expected = sorted(e.event_id for e in synthetic.events(config))
    args = [sys.executable, "-m", "engage", "replay", "synthetic", "--users", "20", "--days",
            "1", "--seed", "5", "--json", "--topic", settings.events_topic]  # fmt: skip
    env = engage_env(settings)
    started = time.monotonic()
    slow = subprocess.Popen([*args, "--rate", "20"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        while not consume_all(settings, 1, timeout_s=1):  # sending has begun
            assert time.monotonic() - started < 60 and slow.poll() is None, slow.stderr
        time.sleep(1.0)
        slow.send_signal(signal.SIGINT)
        out, err = slow.communicate(timeout=30)
    finally:
        slow.kill()
    assert slow.returncode == 130, err
    sent = json.loads(out)["sent"]
    assert 0 < sent < len(expected) // 2  # 20 events/s: far from done
    assert f"interrupted: sent {sent:,} events to {settings.events_topic}" in err
    assert f"run the same command with --skip {sent}" in err
    assert len(consume_all(settings, sent + 1, timeout_s=3)) == sent  # all acked, no more

    rest = subprocess.run([*args, "--skip", str(sent)], env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["sent"] == len(expected) - sent
    records = consume_all(settings, len(expected))
    assert sorted(json.loads(r.value)["event_id"] for r in records) == expected
