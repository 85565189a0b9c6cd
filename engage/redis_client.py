"""Every Redis client is built here, so credentials and TLS apply everywhere at once.

The URL gives host, port, database, and optionally `user:password@` and `rediss://` (TLS);
`redis_username` / `redis_password` keep the password out of the URL, and the `redis_tls_*`
files verify the server (CA) and identify the client (mutual TLS).

A Redis Cluster (`ENGAGE_REDIS_CLUSTER=true`, or a `redis+cluster://` / `rediss+cluster://`
URL) gets a `redis.cluster.RedisCluster` with the same options: it follows MOVED/ASK
redirects and splits non-transactional pipelines by node; the consumer then keeps its state
with `consumer.cluster_store`. A plain URL that names a Cluster node would fail on its first
key of another node (MOVED): `plain_url_names_a_cluster` lets the consumer say so first.
"""

from __future__ import annotations

import ssl
from typing import Any, TypeAlias
from urllib.parse import urlparse

import redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster

from engage.settings import Settings

#: What `connect` returns: callers use the commands both share (single-key commands and
#: non-transactional pipelines); multi-key commands go through `mget` below.
Client: TypeAlias = redis.Redis | RedisCluster

CLUSTER_NODE = (
    "this Redis is a node of a Redis Cluster: point the consumer at the Cluster with a "
    "redis+cluster:// URL (or ENGAGE_REDIS_CLUSTER=true)"
)


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


def _node_url(url: str) -> str:
    """The URL redis-py parses: `redis+cluster://` -> `redis://` (the `+cluster` is ours)."""
    parsed = urlparse(url)
    return parsed._replace(scheme=parsed.scheme.removesuffix("+cluster")).geturl()


def connect(settings: Settings, **options: Any) -> Client:
    """The one way to get a pooled client for the configured Redis; `options` are redis-py's
    own (timeouts, pool size). A single node connects lazily; a Cluster reads its slot map
    now, so an unreachable Cluster (or a URL naming a node without cluster mode) raises
    redis.ConnectionError here, the error every caller already handles."""
    url = _node_url(settings.redis_url)
    if not settings.redis_is_cluster:
        return redis.Redis.from_url(url, **connection_options(settings), **options)
    try:
        return RedisCluster.from_url(url, **connection_options(settings), **options)
    except redis.exceptions.RedisClusterException as exc:
        text = str(exc)  # redis-py's own words, named as a Cluster's when they do not say so
        text = text if "Cluster" in text else f"Redis Cluster: {text}"
        raise redis.ConnectionError(text) from exc


def connect_async(settings: Settings, **options: Any) -> aioredis.Redis:
    """The asyncio twin of `connect`, for pub/sub only (the API's live stream). On a Cluster
    it is a client of the URL's node: a PUBLISH reaches the subscribers on every node."""
    url = _node_url(settings.redis_url)
    return aioredis.Redis.from_url(url, **connection_options(settings), **options)


def mget(client: Client, keys: list[str]) -> list[bytes | None]:
    """MGET that also works across hash slots on a Cluster (one MGET per slot, not atomic
    there: fine for reads such as `engage stats`' offsets, never for a write's guard)."""
    if not keys:
        return []
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(keys))
    return list(client.mget(keys))


def plain_url_names_a_cluster(settings: Settings) -> bool:
    """Whether settings that do not say Cluster point at a node of one (INFO cluster)."""
    if settings.redis_is_cluster:
        return False
    client = connect(settings, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except (redis.RedisError, OSError):
        return False  # down or refusing: the consumer's own start-up checks say which
    finally:
        client.close()
    return enabled in (1, "1")


def refused(settings: Settings, timeout_s: float = 2.0) -> redis.ConnectionError | None:
    """The error when Redis answers but refuses these settings (wrong credentials, missing
    permission, a TLS certificate that does not verify), else None, also when it is down.

    A refusal is a configuration mistake: retrying cannot fix it, so long-running commands
    check for it first and exit with a clear line instead of waiting for ever."""
    client: Client | None = None
    try:  # inside: a Cluster client connects (and may be refused) when it is built
        client = connect(settings, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
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
        if client is not None:
            client.close()
    return None
