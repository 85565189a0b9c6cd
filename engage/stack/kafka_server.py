"""A single-node KRaft Kafka broker run from the official Apache Kafka jars on Maven Central.

The jars are resolved once with Maven into the cache folder (shared by every clone on the
machine); the broker's storage, config and log live under the stack folder.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from base64 import urlsafe_b64encode
from pathlib import Path

from engage.settings import Settings
from engage.stack.errors import StackError
from engage.stack.probes import kafka_answers, port_open
from engage.stack.processes import ManagedProcess, is_alive

STACK_FILES = Path(__file__).resolve().parent


def jar_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"kafka-{settings.kafka_version}" / "lib"


def resolve_jars(settings: Settings) -> Path:
    """Copy the broker's runtime jars from Maven Central into the cache, once."""
    lib = jar_dir(settings)
    done_marker = lib.parent / ".resolved"
    if done_marker.exists():
        return lib
    if shutil.which("mvn") is None:
        raise StackError(
            "Maven (`mvn`) is not installed: install it (Debian: apt-get install maven)."
        )
    _require_java()
    lib.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn", "-B", "-q", "-f", str(STACK_FILES / "pom.xml"),
        f"-Dkafka.version={settings.kafka_version}",
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={lib}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise StackError(
            f"Resolving Kafka {settings.kafka_version} jars with Maven failed:\n{tail}"
        )
    done_marker.write_text(settings.kafka_version)
    return lib


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java is not installed: Kafka needs Java 17+ (Debian: openjdk-17-jre).")
    return java


class KafkaServer:
    """The local broker: write config, format storage, start, wait, stop."""

    def __init__(
        self,
        settings: Settings,
        extra_properties: dict[str, str] | None = None,
        format_args: tuple[str, ...] = (),
    ) -> None:
        """`extra_properties` override server.properties (e.g. SASL listeners and JAAS from
        `engage.stack.secure`); `format_args` go to the storage format (e.g. SCRAM users)."""
        self.settings = settings
        self.extra_properties = extra_properties or {}
        self.format_args = format_args
        self.home = settings.stack_dir / "kafka"
        self.process = ManagedProcess(
            name="kafka",
            pid_file=self.home / "kafka.pid",
            log_file=self.home / "broker.log",
            marker=str(self.home),
        )

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    def write_properties(self) -> None:
        host, port = self.settings.kafka_host_port
        ctl = self.settings.kafka_controller_port
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{ctl}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": str(self.settings.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "-1",
            **self.extra_properties,
        }
        self.home.mkdir(parents=True, exist_ok=True)
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        self.properties_file.chmod(0o600)  # JAAS lines hold passwords

    def _java(self, lib: Path, main: str, *args: str, heap: str | None = None) -> list[str]:
        argv = [_require_java()]
        if heap:
            argv += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
        argv += [
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            f"-Dlog4j2.configurationFile={STACK_FILES / 'log4j2.properties'}",
            "-cp", f"{lib}/*", main, *args,
        ]  # fmt: skip
        return argv

    def format_storage(self, lib: Path) -> None:
        """Format the KRaft storage once; an already formatted folder is kept (and its topics)."""
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # one in 64 would read as an option: "-t -x..." fails
            cluster_id = urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        argv = self._java(
            lib, "kafka.tools.StorageTool", "format", "-t", cluster_id,
            "-c", str(self.properties_file), "--ignore-formatted", *self.format_args,
        )  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"Formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self) -> float:
        """Start the broker and wait for a metadata answer. Returns seconds until ready."""
        host, port = self.settings.kafka_host_port
        for p in (port, self.settings.kafka_controller_port):
            if port_open(host, p):
                raise StackError(
                    f"Port {host}:{p} is held by another process that is not a Kafka broker of "
                    "this project. Free it, or point ENGAGE_KAFKA_BOOTSTRAP_SERVERS at a broker."
                )
        lib = resolve_jars(self.settings)
        self.write_properties()
        self.format_storage(lib)
        started = time.monotonic()
        pid = self.process.start(
            self._java(lib, "kafka.Kafka", str(self.properties_file), heap=self.settings.kafka_heap)
        )
        deadline = started + self.settings.broker_ready_timeout_s
        while time.monotonic() < deadline:
            if not is_alive(pid):
                raise StackError(
                    f"Kafka exited during start-up. Log tail:\n{self.process.log_tail()}"
                )
            if port_open(host, port) and kafka_answers(self.settings, timeout_s=2.0):
                return time.monotonic() - started
            time.sleep(0.25)
        self.process.stop(timeout_s=10)
        raise StackError(
            f"Kafka did not answer within {self.settings.broker_ready_timeout_s:.0f}s; stopped it. "
            f"Log tail:\n{self.process.log_tail()}"
        )
