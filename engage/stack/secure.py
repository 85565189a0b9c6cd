"""Config for secured local servers: Redis ACL users and TLS, Kafka SASL listeners.

The project's own stack stays plaintext on loopback; these pieces build private secured
servers (RedisServer `extra_config`, KafkaServer `extra_properties` / `format_args`) so the
client-side security settings are tested against the real thing, not a fake.
"""

from __future__ import annotations

from pathlib import Path

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _plain_word(value: str, what: str) -> str:
    """Passwords go into config files unquoted: refuse what would break or extend a line."""
    if not value or any(c.isspace() or c in "\"'\\;" for c in value):
        raise ValueError(f"{what} must be non-empty, without spaces, quotes, \\ or ;")
    return value


def redis_acl_config(users: dict[str, str]) -> str:
    """redis.conf lines: the passwordless default user off, each user with full access."""
    lines = ["user default off"]
    for name, password in users.items():
        lines.append(f"user {_plain_word(name, 'user')} on >{_plain_word(password, 'password')} "
                     "~* &* +@all")  # fmt: skip
    return "\n".join(lines) + "\n"


def redis_tls_config(
    port: int, cert: Path, key: Path, ca: Path, require_client_cert: bool = False
) -> str:
    """redis.conf lines: TLS only on `port` (the plaintext port closed)."""
    return (
        f"port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
        f"tls-ca-cert-file {ca}\ntls-auth-clients {'yes' if require_client_cert else 'no'}\n"
    )


def kafka_sasl_properties(
    host: str, port: int, controller_port: int, admin: tuple[str, str], users: dict[str, str]
) -> dict[str, str]:
    """server.properties overrides: one SASL_PLAINTEXT listener (the broker talks to itself
    as `admin`), PLAIN users from the JAAS line, SCRAM users from `scram_format_args`."""
    admin_name, admin_password = admin
    plain_users = {admin_name: admin_password, **users}
    accounts = " ".join(
        f'user_{_plain_word(n, "user")}="{_plain_word(p, "password")}"'
        for n, p in plain_users.items()
    )
    plain = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{admin_name}" password="{admin_password}" {accounts};'
    )
    scram = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{admin_name}" password="{admin_password}";'
    )
    listener = "listener.name.sasl_plaintext"
    return {
        "listeners": f"SASL_PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"SASL_PLAINTEXT://{host}:{port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": "PLAIN",
        f"{listener}.plain.sasl.jaas.config": plain,
        f"{listener}.scram-sha-256.sasl.jaas.config": scram,
        f"{listener}.scram-sha-512.sasl.jaas.config": scram,
    }


def scram_format_args(users: dict[str, str]) -> tuple[str, ...]:
    """Storage-format arguments that create SCRAM credentials for every user (KRaft keeps
    them in the metadata log; there is no ZooKeeper to add them to later)."""
    args: list[str] = []
    for name, password in users.items():
        for mechanism in SASL_MECHANISMS[1:]:
            args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
    return tuple(args)
