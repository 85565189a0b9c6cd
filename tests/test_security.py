"""Security settings against real secured servers, and secrets that never show.

Private servers, started here on free ports in temp folders with the stack's own code:
a Redis with an ACL user (the passwordless default user off), a Redis that speaks only TLS
and wants a client certificate, and a Kafka broker whose only listener is SASL_PLAINTEXT
(PLAIN and SCRAM users). The engage commands run against them as a user runs them, and
everything they print is searched for the passwords.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from pydantic import SecretStr, ValidationError

from engage import kafka_clients
from engage.redact import redact_text, redact_url
from engage.redis_client import connect
from engage.settings import Settings
from engage.stack import secure
from engage.stack.errors import StackError
from engage.stack.kafka_server import KafkaServer
from engage.stack.probes import kafka_answers
from engage.stack.redis_server import RedisServer
from tests.conftest import IN_CI
from tests.eventlog import make_log, publish_log

pytestmark = pytest.mark.stack
ENGAGE = [sys.executable, "-m", "engage"]

# Passwords with the characters that break naive URL handling (they are percent-encoded in
# URLs, as they must be) and that are easy to find in output.
REDIS_USER = "engage"
REDIS_PASSWORD = "Rd-s3cret:w1th@and%"
WRONG_PASSWORD = "Wr0ng-guess@x:%"
KAFKA_USER = "engage"
KAFKA_PASSWORD = "Kf-s3cret-Pw@9"
KAFKA_ADMIN = ("admin", "Adm1n-s3cret-Pw")
SECRETS = [REDIS_PASSWORD, WRONG_PASSWORD, KAFKA_PASSWORD, KAFKA_ADMIN[1]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_no_secret(*outputs: str) -> None:
    """No password, raw or percent-encoded, in any of the outputs."""
    text = "\n".join(outputs)
    for secret in SECRETS:
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            assert form not in text, f"a secret ({form[:3]}...) leaked into the output"


def redis_url(port: int, password: str | None = REDIS_PASSWORD, scheme: str = "redis") -> str:
    auth = f"{REDIS_USER}:{quote(password, safe='')}@" if password is not None else ""
    return f"{scheme}://{auth}127.0.0.1:{port}/0"


def engage_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of an engage subprocess: these topics and servers, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env.update(
        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        ENGAGE_EVENTS_TOPIC=settings.events_topic,
        ENGAGE_SCORES_TOPIC=settings.scores_topic,
        ENGAGE_DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        ENGAGE_DATA_DIR=str(settings.data_dir),
        ENGAGE_POLL_TIMEOUT_MS="100",
    )
    env.update(extra)
    return env


def run_engage(args: list[str], env: dict[str, str], timeout: float = 120):
    result = subprocess.run(
        [*ENGAGE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert_no_secret(result.stdout, result.stderr)
    return result


# -- private secured servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1, and a client certificate."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=engage test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.crt",
        )
    return {n: d / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private Redis where only user `engage` with REDIS_PASSWORD gets in. Yields its port."""
    port = free_port()
    own = Settings(stack_dir=tmp_path_factory.mktemp("acl-redis"), redis_url=redis_url(port))
    server = RedisServer(own, extra_config=secure.redis_acl_config({REDIS_USER: REDIS_PASSWORD}))
    server.start()
    yield port
    server.process.stop(timeout_s=10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls_files) -> Iterator[int]:
    """A private Redis on TLS only, wanting a client certificate. Yields its port."""
    port = free_port()
    own = Settings(
        stack_dir=tmp_path_factory.mktemp("tls-redis"),
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_tls_ca_file=tls_files["ca.crt"],
        redis_tls_cert_file=tls_files["client.crt"],
        redis_tls_key_file=tls_files["client.key"],
    )
    config = secure.redis_tls_config(
        port,
        tls_files["server.crt"],
        tls_files["server.key"],
        tls_files["ca.crt"],
        require_client_cert=True,
    )
    server = RedisServer(own, extra_config=config)
    try:
        server.start()
    except StackError as exc:  # a redis-server built without TLS refuses the directives
        if "Bad directive" in str(exc):
            if IN_CI:
                pytest.fail(f"CI must run the TLS tests, but: {exc}", pytrace=False)
            pytest.skip(f"this redis-server has no TLS support: {exc}")
        raise
    yield port
    server.process.stop(timeout_s=10)


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory, stack_settings: Settings):
    """A private broker whose only client listener is SASL_PLAINTEXT. Yields its settings."""
    port, controller = free_port(), free_port()
    own = Settings(
        stack_dir=tmp_path_factory.mktemp("sasl-kafka"),
        cache_dir=stack_settings.cache_dir,
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_controller_port=controller,
        partitions=2,
        kafka_heap="512M",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=KAFKA_USER,
        kafka_sasl_password=KAFKA_PASSWORD,
    )
    users = {KAFKA_USER: KAFKA_PASSWORD}
    server = KafkaServer(
        own,
        extra_properties=secure.kafka_sasl_properties(
            "127.0.0.1", port, controller, KAFKA_ADMIN, users
        ),
        format_args=secure.scram_format_args(users),
    )
    server.start()
    yield own
    server.process.stop(timeout_s=30)


@pytest.fixture
def acl_settings(settings: Settings, acl_redis: int) -> Settings:
    """Per-test topics on the shared Kafka, state in the ACL Redis (emptied)."""
    fresh = settings.model_copy(update={"redis_url": redis_url(acl_redis)})
    connect(fresh).flushdb()
    return fresh


# -- settings, redaction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://engage:pw@127.0.0.1:6379/0", "redis://engage:***@127.0.0.1:6379/0"),
        ("rediss://:pw@redis.example:6380", "rediss://:***@redis.example:6380"),
        ("redis://u:p@ss:w@rd@h:1/2", "redis://u:***@h:1/2"),  # unencoded '@' and ':'
        ("redis://u:p%40ss@h/0?password=again&db=1", "redis://u:***@h/0?password=***&db=1"),
        ("unix://:pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://engage@127.0.0.1:6379/0", "redis://engage@127.0.0.1:6379/0"),  # no password
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("http://127.0.0.1:8000/docs", "http://127.0.0.1:8000/docs"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"error: cannot reach Redis at {url}: refused") == (
        f"error: cannot reach Redis at {shown}: refused"
    )


def test_settings_repr_and_errors_never_show_secrets() -> None:
    s = Settings(
        _env_file=None,
        redis_url=redis_url(6379),
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username=KAFKA_USER,
        kafka_sasl_password=KAFKA_PASSWORD,
    )
    assert isinstance(s.kafka_sasl_password, SecretStr)
    assert s.kafka_sasl_password.get_secret_value() == KAFKA_PASSWORD
    assert f"{REDIS_USER}:***@127.0.0.1" in repr(s)
    assert_no_secret(repr(s), str(s), repr(s.model_copy()))

    # A half-configured setup is refused by name, without echoing the inputs that hold secrets.
    for bad in (
        {"redis_url": redis_url(6379), "redis_password": WRONG_PASSWORD},
        {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_password": KAFKA_PASSWORD},
        {"redis_url": redis_url(6379), "redis_tls_ca_file": "/ca.crt"},
        {"redis_url": redis_url(6379), "kafka_sasl_password": KAFKA_PASSWORD},
    ):
        with pytest.raises(ValidationError) as caught:
            Settings(_env_file=None, **bad)
        assert "redis" in str(caught.value) or "kafka" in str(caught.value)
        assert_no_secret(str(caught.value), repr(caught.value))


def test_json_logs_mask_urls_with_passwords() -> None:
    """The consumer's JSON log lines (message and traceback) never carry a URL password."""
    import logging

    from engage.logs import JsonFormatter

    url = redis_url(6379)
    try:
        raise ConnectionError(f"lost {url}")
    except ConnectionError:
        record = logging.LogRecord(
            "engage", logging.ERROR, __file__, 1, "retrying %s", (url,), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert f"{REDIS_USER}:***@127.0.0.1" in line
    assert_no_secret(line)


def test_security_kwargs_reach_every_kafka_client() -> None:
    plain = Settings(_env_file=None)
    assert kafka_clients.security_kwargs(plain) == {}
    sasl = Settings(
        _env_file=None,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username=KAFKA_USER,
        kafka_sasl_password=KAFKA_PASSWORD,
        kafka_ssl_cafile="/ca.pem",
    )
    assert kafka_clients.security_kwargs(sasl) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": KAFKA_USER,
        "sasl_plain_password": KAFKA_PASSWORD,
        "ssl_cafile": "/ca.pem",
    }


def test_api_binds_to_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGAGE_API_HOST", raising=False)
    assert Settings(_env_file=None).api_host == "127.0.0.1"
    shown = subprocess.run(
        [*ENGAGE, "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert "ENGAGE_API_HOST" in shown


# -- Redis: ACL user and password -------------------------------------------------------------


def consume_and_score(settings: Settings, env: dict[str, str]) -> None:
    """Events in, `engage consume` over the secured servers, then `score` and `stats`."""
    events, genres = make_log(n_users=4, events_per_user=10)
    produced = publish_log(settings, events, genres)
    done = run_engage(["consume", "--idle-exit", "2", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["processed"] == produced
    score = run_engage(["score", events[0]["user_id"], "--json"], env)
    assert score.returncode == 0, score.stderr
    assert json.loads(score.stdout)["user_id"] == events[0]["user_id"]
    stats = run_engage(["stats", "--json"], env)
    assert stats.returncode == 0 and json.loads(stats.stdout)["processed"] == produced


def test_redis_password_in_the_url(acl_settings: Settings) -> None:
    consume_and_score(
        acl_settings, engage_env(acl_settings, ENGAGE_REDIS_URL=acl_settings.redis_url)
    )


def test_redis_user_and_password_as_settings(settings: Settings, acl_redis: int) -> None:
    """The URL without credentials, the password in its own (secret) setting."""
    plain_url = f"redis://127.0.0.1:{acl_redis}/0"
    own = settings.model_copy(
        update={
            "redis_url": plain_url,
            "redis_username": REDIS_USER,
            "redis_password": SecretStr(REDIS_PASSWORD),
        }
    )
    connect(own).flushdb()
    with pytest.raises(redis.AuthenticationError):  # the URL alone is not enough
        connect(settings.model_copy(update={"redis_url": plain_url})).ping()
    env = engage_env(
        own,
        ENGAGE_REDIS_URL=plain_url,
        ENGAGE_REDIS_USERNAME=REDIS_USER,
        ENGAGE_REDIS_PASSWORD=REDIS_PASSWORD,
    )
    consume_and_score(own, env)


@pytest.mark.parametrize(
    "command",
    [
        ["score", "u1"],
        ["stats"],
        ["consume", "--idle-exit", "1"],
        ["stack", "status"],
        ["top", "3"],
    ],
)
@pytest.mark.parametrize("where", ["url", "setting"])
def test_wrong_redis_password_is_a_clear_error_without_it(
    acl_settings: Settings, acl_redis: int, command: list[str], where: str
) -> None:
    if where == "url":
        extra = {"ENGAGE_REDIS_URL": redis_url(acl_redis, password=WRONG_PASSWORD)}
    else:
        extra = {
            "ENGAGE_REDIS_URL": f"redis://127.0.0.1:{acl_redis}/0",
            "ENGAGE_REDIS_USERNAME": REDIS_USER,
            "ENGAGE_REDIS_PASSWORD": WRONG_PASSWORD,
        }
    started = time.monotonic()
    result = run_engage(command, engage_env(acl_settings, **extra), timeout=60)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert time.monotonic() - started < 30  # a refusal is reported, not waited out
    shown = result.stdout + result.stderr
    if command[0] == "stack":
        assert "down" in shown and f"127.0.0.1:{acl_redis}" in shown
    else:
        assert "invalid username-password pair" in shown, shown
    if where == "url":
        assert f"{REDIS_USER}:***@127.0.0.1:{acl_redis}" in shown  # which URL, password masked


# -- Redis: TLS -------------------------------------------------------------------------------


def tls_env(settings: Settings, port: int, tls_files: dict[str, Path], **skip: bool):
    env = engage_env(settings, ENGAGE_REDIS_URL=f"rediss://127.0.0.1:{port}/0")
    for name, key in (
        ("CA_FILE", "ca.crt"),
        ("CERT_FILE", "client.crt"),
        ("KEY_FILE", "client.key"),
    ):
        if not skip.get(name.lower()):
            env[f"ENGAGE_REDIS_TLS_{name}"] = str(tls_files[key])
    return env


def test_redis_over_tls_with_a_client_certificate(settings, tls_redis, tls_files) -> None:
    own = settings.model_copy(
        update={
            "redis_url": f"rediss://127.0.0.1:{tls_redis}/0",
            "redis_tls_ca_file": tls_files["ca.crt"],
            "redis_tls_cert_file": tls_files["client.crt"],
            "redis_tls_key_file": tls_files["client.key"],
        }
    )
    connect(own).flushdb()
    consume_and_score(own, tls_env(own, tls_redis, tls_files))


@pytest.mark.parametrize(
    ("skip", "expected"),
    [
        ({"ca_file": True}, ("certificate verify failed",)),
        # The server drops the handshake: the client sees its alert or, racing it, the EOF.
        ({"cert_file": True, "key_file": True}, ("certificate required", "EOF occurred")),
    ],
)
def test_tls_misconfiguration_is_a_clear_error(settings, tls_redis, tls_files, skip, expected):
    """A certificate problem is a refusal: the consumer exits with it instead of waiting."""
    env = tls_env(settings, tls_redis, tls_files, **skip)
    for command in (["score", "u1"], ["consume", "--idle-exit", "1"]):
        result = run_engage(command, env, timeout=60)
        assert result.returncode == 3, (command, result.stdout, result.stderr)
        assert any(e in result.stderr for e in expected), result.stderr


def test_plaintext_to_the_tls_port_fails(settings, tls_redis) -> None:
    """(Only a one-shot command: to a long-running consumer a server that closes the
    connection looks like one that is restarting, so it waits, as for an outage.)"""
    env = engage_env(settings, ENGAGE_REDIS_URL=f"redis://127.0.0.1:{tls_redis}/0")
    result = run_engage(["score", "u1"], env, timeout=60)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "cannot reach Redis at" in result.stderr


# -- Kafka: SASL ------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_round_trip(sasl_kafka: Settings, mechanism: str) -> None:
    own = sasl_kafka.model_copy(update={"kafka_sasl_mechanism": mechanism})
    topic = f"sasl.{mechanism.lower()}"
    kafka_clients.ensure_topic(own, topic, partitions=1)
    out = kafka_clients.producer(own)
    out.send(topic, key=b"k", value=mechanism.encode()).get(timeout=30)
    out.close()
    back = kafka_clients.consumer(own, topic, consumer_timeout_ms=10_000)
    assert next(iter(back)).value == mechanism.encode()
    back.close()


def test_kafka_refuses_clients_without_the_right_credentials(sasl_kafka: Settings) -> None:
    """The broker really demands SASL: plaintext and a wrong password get nothing."""
    plain = Settings(_env_file=None, kafka_bootstrap_servers=sasl_kafka.kafka_bootstrap_servers)
    assert not kafka_answers(plain, timeout_s=3)
    wrong = sasl_kafka.model_copy(update={"kafka_sasl_password": SecretStr(WRONG_PASSWORD)})
    assert not kafka_answers(wrong, timeout_s=3)
    assert kafka_answers(sasl_kafka, timeout_s=5)


def sasl_env(
    settings: Settings, sasl_kafka: Settings, password: str = KAFKA_PASSWORD, **extra: str
) -> dict[str, str]:
    return engage_env(
        settings,
        **extra,
        ENGAGE_KAFKA_BOOTSTRAP_SERVERS=sasl_kafka.kafka_bootstrap_servers,
        ENGAGE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        ENGAGE_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        ENGAGE_KAFKA_SASL_USERNAME=KAFKA_USER,
        ENGAGE_KAFKA_SASL_PASSWORD=password,
    )


def test_wrong_kafka_password_is_a_clear_error_without_it(acl_settings, sasl_kafka) -> None:
    env = sasl_env(acl_settings, sasl_kafka, password=WRONG_PASSWORD)
    env["ENGAGE_REDIS_URL"] = acl_settings.redis_url
    result = run_engage(["consume", "--idle-exit", "1"], env, timeout=90)
    assert result.returncode == 3, (result.stdout, result.stderr)
    # kafka-python retries a failed SASL handshake until its bootstrap times out; the log
    # often (not always: the broker may close first) names SaslAuthenticationFailedError.
    assert f"cannot reach Kafka at {sasl_kafka.kafka_bootstrap_servers}" in result.stderr


# -- everything secured at once: nothing leaks --------------------------------------------------


def test_no_secret_in_any_output_of_a_secured_run(acl_settings, sasl_kafka, tmp_path) -> None:
    """SASL Kafka and ACL Redis together: consume (JSON logs on stderr), stats, score, the
    stack status, the API and its logs; every line they print is searched for the secrets."""
    own = acl_settings.model_copy(
        update=sasl_kafka.model_dump(
            include={
                "kafka_bootstrap_servers",
                "kafka_security_protocol",
                "kafka_sasl_username",
                "kafka_sasl_password",
            }
        )
    )
    env = sasl_env(own, sasl_kafka, ENGAGE_STACK_DIR=str(tmp_path / "stack"))
    env["ENGAGE_REDIS_URL"] = acl_settings.redis_url
    consume_and_score(own, env)  # (run_engage checks every output)
    status = run_engage(["stack", "status", "--json"], env)
    assert status.returncode == 0, status.stderr
    shown = {s["name"]: s for s in json.loads(status.stdout)}
    assert shown["redis"]["address"] == redact_url(acl_settings.redis_url)
    assert shown["kafka"]["origin"] == shown["redis"]["origin"] == "external"

    port = free_port()
    api = subprocess.Popen(
        [*ENGAGE, "serve", "--port", str(port), "--access-log"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _wait_for_health(port) == {"kafka": True, "redis": True}
        assert _listening_addresses(port) == {"127.0.0.1"}  # loopback only, by default
    finally:
        api.send_signal(signal.SIGTERM)
        out, err = api.communicate(timeout=30)
    assert "127.0.0.1" in err
    assert_no_secret(out, err)


def _wait_for_health(port: int) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found
