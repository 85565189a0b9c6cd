"""Errors that say what is wrong: one line naming the thing at fault, and the README's exit
codes (2 bad input, 3 services down, 4 not found), never a traceback or a wrong all-clear."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engage.settings import Settings
from scoring.rules import RULES_DIR, RulesError, load_scorers
from tests.eventlog import engage_env

CLOSED_KAFKA = "127.0.0.1:1"  # nothing listens on port 1: every connection is refused


def engage(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engage", *args],
                          env=engage_env(settings, **env), capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


# -- 5. a bad rules file is bad input (exit 2), reported before any connection ----------------

VALID_RULES = (RULES_DIR / "funnel.toml").read_text()


def _rules_cases(tmp: Path) -> list[tuple[Path, list[str]]]:
    """(rules file, what its error must say) for each kind of damage."""
    syntax = tmp / "syntax.toml"
    syntax.write_text("[thresholds]\nhigh = 70\nmedium 40\n")
    schema = tmp / "schema.toml"
    schema.write_text(VALID_RULES.replace("high = 70", "high = 'very'", 1))
    unknown = tmp / "unknown.toml"
    unknown.write_text(VALID_RULES.replace('"u_n_demo_request"', '"u_n_nope"', 1))
    reason = tmp / "reason.toml"
    reason.write_text(VALID_RULES.replace('"requested a demo"', '"{value:.0q} demos"', 1))
    binary = tmp / "binary.toml"
    binary.write_bytes(VALID_RULES.encode().replace(b"medium = 40", b"medium = '\xff'", 1))
    return [
        (syntax, ["syntax.toml", "not valid TOML", "line 3"]),
        (schema, ["schema.toml", "thresholds.high", "valid number"]),
        (unknown, ["unknown.toml", "signals[1]", "unknown feature 'u_n_nope'"]),
        (reason, ["reason.toml", "signal demo_requested: reason"]),
        (binary, ["binary.toml", "line 10", "not UTF-8"]),
        (tmp / "missing.toml", ["missing.toml", "no such file"]),
        (tmp, [str(tmp), "is a directory"]),
    ]


def test_rules_errors_name_the_file_and_the_line_or_field(tmp_path: Path) -> None:
    for path, says in _rules_cases(tmp_path):
        with pytest.raises(RulesError) as caught:
            load_scorers(path)
        message = str(caught.value)
        assert message.startswith(f"rules file {path}"), message
        assert all(part in message for part in says), (says, message)
        assert "\n" not in message
    assert set(load_scorers()) == {"movielens", "funnel"}  # the shipped rules still load


def test_consume_with_a_bad_rules_file_is_exit_2_before_connecting(tmp_path: Path) -> None:
    # Both servers down: were the rules checked after connecting, this would be exit 3.
    down = Settings(kafka_bootstrap_servers=CLOSED_KAFKA,
                    redis_url=f"redis://127.0.0.1:{dead_port()}/0")  # fmt: skip
    for path, says in _rules_cases(tmp_path):
        result = engage(down, "consume", "--idle-exit", "1", ENGAGE_RULES_FILE=str(path))
        assert result.returncode == 2, (path, result.stderr[-2000:])
        line = one_error_line(result)
        assert all(part in line for part in says) and "ENGAGE_RULES_FILE" in line, line
        assert "cannot reach" not in line


def test_every_scoring_command_refuses_a_bad_rules_file_with_exit_2(tmp_path: Path) -> None:
    """explain --event, parity and demo read the rules too: the same one line, exit 2."""
    down = Settings(kafka_bootstrap_servers=CLOSED_KAFKA,
                    redis_url=f"redis://127.0.0.1:{dead_port()}/0")  # fmt: skip
    path, says = next(iter(_rules_cases(tmp_path)))
    for args in (("explain", "--event", "e1"), ("parity",), ("demo", "--no-train")):
        result = engage(down, *args, ENGAGE_RULES_FILE=str(path))
        assert result.returncode == 2, (args, result.stderr[-2000:])
        line = one_error_line(result)
        assert all(part in line for part in says) and "ENGAGE_RULES_FILE" in line, (args, line)


# -- 1. Kafka down: stats is exit 3 within seconds, never an all-clear lag of 0 ---------------


@pytest.mark.stack
def test_stats_with_kafka_down_is_exit_3_and_quick(settings: Settings) -> None:
    started = time.monotonic()
    result = engage(settings, "stats", "--json", ENGAGE_KAFKA_BOOTSTRAP_SERVERS=CLOSED_KAFKA)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr[-2000:]
    line = one_error_line(result)
    assert f"cannot reach Kafka at {CLOSED_KAFKA}" in line
    assert result.stdout == ""  # no {"total_lag": 0}
    # Before: 32 s (kafka-python's bootstrap timeout) and lag 0. Interpreter start-up alone
    # takes several seconds on a busy 2-core machine, so the bound leaves room for it.
    assert elapsed < 20, f"took {elapsed:.1f} s"
    up = engage(settings, "stats", "--json")
    assert up.returncode == 0, up.stderr[-2000:]
    assert json.loads(up.stdout)["total_lag"] == 0


@pytest.mark.stack
def test_stats_with_a_kafka_that_accepts_but_never_answers_is_exit_3(settings: Settings) -> None:
    """A broker that is hung (the port accepts, nothing answers) is found by the metadata
    probe's short timeout, not by kafka-python's 32 s bootstrap wait."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # the kernel accepts connections; nobody reads or answers them
    hung = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        result = engage(settings, "stats", "--json", ENGAGE_KAFKA_BOOTSTRAP_SERVERS=hung)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert result.returncode == 3, result.stdout + result.stderr[-2000:]
    assert f"cannot reach Kafka at {hung}" in one_error_line(result)
    assert result.stdout == ""
    assert elapsed < 25, f"took {elapsed:.1f} s"


@pytest.mark.stack
def test_watch_with_kafka_down_shows_kafka_down_not_lag_0(settings: Settings) -> None:
    live = engage(settings, "watch", "--duration", "5", ENGAGE_KAFKA_BOOTSTRAP_SERVERS=CLOSED_KAFKA)
    assert live.returncode == 0, live.stderr[-2000:]
    header = live.stdout.splitlines()[0]  # the last frame (no terminal: drawn once, at the end)
    assert f"Kafka DOWN at {CLOSED_KAFKA}" in header and "lag -" in header, live.stdout
    assert "lag 0" not in live.stdout
    lines = engage(settings, "watch", "--json", "--duration", "3",
                   ENGAGE_KAFKA_BOOTSTRAP_SERVERS=CLOSED_KAFKA)  # fmt: skip
    assert lines.returncode == 0 and lines.stdout == "", lines.stderr[-2000:]
    assert f"warning: cannot reach Kafka at {CLOSED_KAFKA}" in lines.stderr
    assert "Traceback" not in lines.stderr


# -- 3. damaged MovieLens folders and unwritable outputs: exit 2, one line naming the file -----


def test_replay_and_train_on_a_damaged_movielens_folder_is_exit_2(tmp_path: Path) -> None:
    from tests.test_producer_movielens import damaged_folders

    # Nothing is sent or read from the servers: the folder is rejected first.
    down = Settings(kafka_bootstrap_servers=CLOSED_KAFKA,
                    redis_url=f"redis://127.0.0.1:{dead_port()}/0", data_dir=tmp_path / "data",
                    cache_dir=tmp_path / "cache")  # fmt: skip
    env = {"ENGAGE_CACHE_DIR": str(tmp_path / "cache")}
    for folder, says in damaged_folders(tmp_path).values():
        for args in (("replay", "movielens", "--path", str(folder), "--no-progress"),
                     ("train", "--movielens", str(folder))):  # fmt: skip
            result = engage(down, *args, **env)
            assert result.returncode == 2, (args, result.stderr[-2000:])
            line = one_error_line(result)
            assert str(folder) in line and all(part in line for part in says), line


@pytest.mark.stack
def test_top_csv_into_a_missing_folder_is_exit_2(settings: Settings, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "top.csv"
    result = engage(settings, "top", "3", "--csv", str(missing))
    assert result.returncode == 2
    assert f"--csv: cannot write {missing}: no folder" in one_error_line(result)
    result = engage(settings, "top", "3", "--csv", str(tmp_path))  # a directory
    assert result.returncode == 2
    assert f"--csv: cannot write {tmp_path}: Is a directory" in one_error_line(result)


# -- 6. the CLI and the API accept the same ids and the same top n (engage/limits.py) ----------


@pytest.mark.stack
def test_cli_and_api_share_the_id_and_top_limits(settings: Settings) -> None:
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from engage.api import create_app
    from engage.limits import MAX_ID_CHARS, TOP_N_MAX

    longest, too_long = "u" * MAX_ID_CHARS, "u" * (MAX_ID_CHARS + 1)
    with TestClient(create_app(settings)) as api:
        assert api.get(f"/users/{quote(longest)}/score").status_code == 404
        assert api.get(f"/users/{quote(too_long)}/score").status_code == 422
        assert api.post("/score", json={"user_id": too_long}).status_code == 422
        assert api.get("/users/top", params={"n": TOP_N_MAX}).status_code == 200
        assert api.get("/users/top", params={"n": TOP_N_MAX + 1}).status_code == 422
    assert engage(settings, "score", longest).returncode == 4  # valid, just never scored
    for args in (("score", too_long), ("score", "u1", "--item", too_long),
                 ("watch", "--user", too_long, "--duration", "1")):  # fmt: skip
        result = engage(settings, *args)
        assert result.returncode == 2, (args[:1], result.stderr[-2000:])
        assert f"longer than {MAX_ID_CHARS} characters" in one_error_line(result)
    assert engage(settings, "top", str(TOP_N_MAX), "--json").returncode == 0
    assert engage(settings, "top", str(TOP_N_MAX + 1)).returncode == 2
