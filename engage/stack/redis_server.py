"""A local `redis-server` with AOF on, its data and log under the stack folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from engage.settings import Settings
from engage.stack.errors import StackError
from engage.stack.probes import port_open, redis_answers
from engage.stack.processes import ManagedProcess, is_alive


def find_redis_server() -> str:
    """The redis-server binary; installed from Debian's packages when we are root with apt."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=False, env=env,
                       capture_output=True)  # fmt: skip
        found = shutil.which("redis-server")
        if found:
            return found
    raise StackError(
        "redis-server is not installed: install it (Debian/Ubuntu: apt-get install redis-server; "
        "macOS: brew install redis) or set ENGAGE_REDIS_URL to a running Redis."
    )


class RedisServer:
    def __init__(
        self, settings: Settings, extra_config: str = "", home: Path | None = None
    ) -> None:
        """`extra_config`: redis.conf lines appended last (so they win), e.g. the ACL users or
        TLS ports from `engage.stack.secure` for a private, secured server, or cluster mode
        for a node of the local Cluster (engage/stack/redis_cluster.py, its own `home`)."""
        self.settings = settings
        self.extra_config = extra_config
        self.home = home or settings.stack_dir / "redis"
        self.process = ManagedProcess(
            name="redis",
            pid_file=self.home / "redis.pid",
            log_file=self.home / "redis.log",
            marker=str(self.home),  # kept in the retitled process name via {config-file}
        )

    def start(self) -> float:
        host, port = self.settings.redis_host_port
        if port_open(host, port):
            raise StackError(
                f"Port {host}:{port} is held by another process that is not this project's Redis. "
                "Free it, or point ENGAGE_REDIS_URL at a running Redis."
            )
        binary = find_redis_server()
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        config = self.home / "redis.conf"
        config.write_text(
            f"bind {host}\nport {port}\ndir {self.home / 'data'}\n"
            'appendonly yes\nappendfsync everysec\nsave ""\ndaemonize no\n'
            # A user's distinct-item set stays a compact intset (2-4 bytes per numeric id)
            # up to 8,192 items instead of a ~60-byte-per-member hash table past 512.
            "set-max-intset-entries 8192\n"
            'proc-title-template "{title} {listen-addr} {config-file}"\n' + self.extra_config
        )
        config.chmod(0o600)  # it may hold passwords
        argv = [binary, str(config)]
        started = time.monotonic()
        pid = self.process.start(argv)
        while time.monotonic() < started + 20:
            if not is_alive(pid):
                raise StackError(
                    f"redis-server exited on start. Log tail:\n{self.process.log_tail()}"
                )
            if redis_answers(self.settings, timeout_s=0.5):
                return time.monotonic() - started
            time.sleep(0.05)
        self.process.stop(timeout_s=5)
        raise StackError(f"Redis did not answer within 20s. Log tail:\n{self.process.log_tail()}")
