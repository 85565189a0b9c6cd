"""Every Redis client is built here, so credentials and TLS apply everywhere at once.

The URL gives host, port, database, and optionally `user:password@` and `rediss://` (TLS);
`redis_username` / `redis_password` keep the password out of the URL, and the `redis_tls_*`
files verify the server (CA) and identify the client (mutual TLS).
"""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio as aioredis

from engage.settings import Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """The redis-py keyword arguments the settings add to the URL (empty for a plain URL)."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file:
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    return options


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A (lazily connecting, pooled) client for the configured Redis; `options` are
    redis-py's own (timeouts, pool size)."""
    return redis.Redis.from_url(settings.redis_url, **connection_options(settings), **options)


def connect_async(settings: Settings, **options: Any) -> aioredis.Redis:
    """The asyncio twin of `connect` (the API's live stream)."""
    return aioredis.Redis.from_url(settings.redis_url, **connection_options(settings), **options)


def refused(settings: Settings, timeout_s: float = 2.0) -> redis.ConnectionError | None:
    """The error when Redis answers but refuses these settings (wrong credentials, missing
    permission, a TLS certificate that does not verify), else None, also when it is down.

    A refusal is a configuration mistake: retrying cannot fix it, so long-running commands
    check for it first and exit with a clear line instead of waiting for ever."""
    client = connect(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        client.ping()
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        return exc
    except redis.exceptions.NoPermissionError as exc:
        return redis.exceptions.AuthorizationError(str(exc))
    except redis.ConnectionError as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        return exc if cause is not None else None
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return None
