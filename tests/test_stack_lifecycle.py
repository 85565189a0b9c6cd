"""`engage stack up | status | down` as a user runs them: start, reuse, refuse, leave nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack
ENGAGE = [sys.executable, "-m", "engage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_engage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    return subprocess.run([*ENGAGE, *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=180, check=False)  # fmt: skip


def processes_under(folder: Path) -> list[int]:
    """Live pids whose command line names this folder (how the stack marks its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(folder) in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def private_stack_env(tmp_path: Path, stack_settings) -> dict[str, str]:
    """A second, private stack on free ports in a temp folder (jar cache shared)."""
    return {
        "ENGAGE_STACK_DIR": str(tmp_path / "stack"),
        "ENGAGE_CACHE_DIR": str(stack_settings.cache_dir),
        "ENGAGE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "ENGAGE_PARTITIONS": "2",
        # Ports given without naming the address variables: the stack may start servers there.
        "ENGAGE_STACK_KAFKA_PORT": str(free_port()),
        "ENGAGE_STACK_REDIS_PORT": str(free_port()),
    }


def test_up_status_down_leaves_no_process(private_stack_env, tmp_path):
    env = private_stack_env
    up = run_engage(["stack", "up", "--json"], env)
    assert up.returncode == 0, up.stderr
    states = {s["name"]: s for s in json.loads(up.stdout)}
    assert states["kafka"]["origin"] == "started" and states["redis"]["origin"] == "started"
    assert states["kafka"]["ready_s"] < 30
    stack_dir = Path(env["ENGAGE_STACK_DIR"])
    assert len(processes_under(stack_dir)) == 2

    status = run_engage(["stack", "status", "--json"], env)
    assert status.returncode == 0
    assert {s["origin"] for s in json.loads(status.stdout)} == {"ours"}

    down = run_engage(["stack", "down"], env)
    assert down.returncode == 0
    assert "kafka" in down.stderr and "redis" in down.stderr
    assert processes_under(stack_dir) == []
    assert run_engage(["stack", "status"], env).returncode == 3


def test_named_servers_are_used_and_nothing_starts(stack_settings, tmp_path):
    env = {
        "ENGAGE_STACK_DIR": str(tmp_path / "stack"),
        "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": stack_settings.kafka_bootstrap_servers,
        "ENGAGE_REDIS_URL": stack_settings.redis_url,
    }
    up = run_engage(["stack", "up", "--json"], env)
    assert up.returncode == 0, up.stderr
    assert {s["origin"] for s in json.loads(up.stdout)} == {"external"}
    assert processes_under(tmp_path) == []
    assert not (tmp_path / "stack" / "kafka" / "kafka.pid").exists()


def test_named_server_that_does_not_answer_is_a_clear_error(tmp_path):
    env = {
        "ENGAGE_STACK_DIR": str(tmp_path / "stack"),
        "ENGAGE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "ENGAGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    up = run_engage(["stack", "up"], env)
    assert up.returncode == 3
    assert "does not answer" in up.stderr
    assert processes_under(tmp_path) == []


def test_port_held_by_a_stranger_fails_cleanly(private_stack_env, tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**private_stack_env, "ENGAGE_STACK_KAFKA_PORT": str(port)}
        up = run_engage(["stack", "up"], env)
    assert up.returncode == 3
    assert f"127.0.0.1:{port} is held by another process" in up.stderr
    assert processes_under(Path(env["ENGAGE_STACK_DIR"])) == []  # the Redis it started is gone
