"""`engage replay ...`: clear one-line errors (exit 2) for bad input; summaries; exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from engage.cli import app
from engage.settings import Settings
from producer import commands
from producer.replay import ReplaySummary
from tests.test_producer_movielens import write_fixture

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
