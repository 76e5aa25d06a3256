"""Where the app's Redis is: the server `REDIS_URL` names, or the master Redis Sentinel names.

With `REDIS_SENTINELS` (`host:port,host:port,...`) and `REDIS_SENTINEL_MASTER` set, every
client of the app asks the sentinels for the current master whenever it connects, so that
when a master fails and Sentinel promotes its replica, each finds the new one by itself once
its connection to the old one breaks: nothing is restarted. `REDIS_URL` still gives the
database, the user and password, and TLS (`rediss://`); its host and port are not used then.

Every Redis client of the app is made here, from one `RedisAddress`: the web app's records
and look-ups, its result listener and publisher, idempotency keys and rate limits, and the
workers' cancel listener. Celery and kombu reach the same master through their own
`sentinel://` support, with the URL and options `broker_url` and `transport_options` give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import parse_url as _untyped_parse_url

from quart_celery.settings import (
    DEFAULT_REDIS_URL,
    ConfigurationError,
    check_setting,
    parse_sentinels,
)

#: How long a sentinel may take to connect and to answer: Celery passes sentinels no timeouts
#: of their own, and redis-py then waits on one that accepts and never answers for good.
SENTINEL_TIMEOUTS = {"socket_connect_timeout": 2, "socket_timeout": 2}


# redis-py's URL reader, typed: the options it reads off a URL.
parse_url: Callable[[str], dict[str, Any]] = _untyped_parse_url


@dataclass(frozen=True)
class RedisAddress:
    """How to reach the app's Redis: a URL, or the sentinels that know its master."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the master by (`REDIS_SENTINEL_MASTER`).
    master: str | None = None
    #: The sentinels' own password, where they have one (`REDIS_SENTINEL_PASSWORD`).
    sentinel_password: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> RedisAddress:
        """The app's Redis, as its settings give it: `REDIS_URL`, or the master
        `REDIS_SENTINELS` know as `REDIS_SENTINEL_MASTER`; `ConfigurationError` if the
        settings do not go together."""
        url = check_setting("REDIS_URL", settings.get("REDIS_URL") or DEFAULT_REDIS_URL)
        sentinels = check_setting("REDIS_SENTINELS", settings.get("REDIS_SENTINELS"))
        master = check_setting("REDIS_SENTINEL_MASTER", settings.get("REDIS_SENTINEL_MASTER"))
        if not sentinels:
            if master:
                raise ConfigurationError("REDIS_SENTINEL_MASTER", "needs REDIS_SENTINELS too")
            return cls(url)
        if not master:
            raise ConfigurationError(
                "REDIS_SENTINELS", "needs REDIS_SENTINEL_MASTER: the name the sentinels monitor"
            )
        if urlsplit(url).scheme not in ("redis", "rediss"):
            raise ConfigurationError(
                "REDIS_URL", "with REDIS_SENTINELS it must be redis:// or rediss:// (for TLS)"
            )
        password = settings.get("REDIS_SENTINEL_PASSWORD") or None
        return cls(url, parse_sentinels(sentinels), master, password)

    @property
    def database(self) -> int:
        """The database number the app uses."""
        return int(parse_url(self.url).get("db", 0))

    @property
    def broker_url(self) -> str:
        """The URL Celery and kombu reach this Redis by (with `transport_options`)."""
        if not self.sentinels:
            return self.url
        parts = urlsplit(self.url)
        credentials = parts.netloc.rpartition("@")[0]
        credentials += "@" if credentials else ""
        path = f"/{self.database}"
        return ";".join(
            f"sentinel://{credentials}{_host(host)}:{port}{path}" for host, port in self.sentinels
        )

    @property
    def transport_options(self) -> dict[str, Any]:
        """kombu's and Celery's transport options for `broker_url` (none without Sentinel)."""
        if not self.sentinels:
            return {}
        return {"master_name": self.master, "sentinel_kwargs": self._sentinel_options()}

    @property
    def tls_options(self) -> dict[str, Any] | None:
        """Celery's and kombu's TLS settings (`broker_use_ssl`, `redis_backend_use_ssl`) where
        the master is reached through Sentinel by TLS (a `rediss://` `REDIS_URL`): the
        `sentinel://` URL cannot say so itself. None otherwise."""
        if not self.sentinels or urlsplit(self.url).scheme != "rediss":
            return None
        options = {name: value for name, value in parse_url(self.url).items() if "ssl_" in name}
        options.setdefault("ssl_cert_reqs", "required")  # redis-py's default; Celery asks
        return options

    def client(self, **options: Any) -> redis.Redis:
        """A blocking client (`options` are redis-py's connection options)."""
        if not self.sentinels:
            return redis.Redis.from_url(self.url, **options)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            self.sentinels, sentinel_kwargs=self._sentinel_options(), **self._master_options()
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
            str(self.master), **options
        )
        return client

    def waiting_client(self, max_connections: int, timeout: float, **options: Any) -> redis.Redis:
        """A blocking client whose callers wait up to `timeout` for one of `max_connections`.

        redis-py has no waiting pool for Sentinel: there, the callers (the app's thread pool
        threads, one connection each) are what bound the connections.
        """
        if self.sentinels:
            return self.client(**options)
        pool = redis.BlockingConnectionPool.from_url(
            self.url, max_connections=max_connections, timeout=timeout, **options
        )
        return redis.Redis(connection_pool=pool)

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """A `redis.asyncio` client (`options` are redis-py's connection options)."""
        if not self.sentinels:
            return redis.asyncio.Redis.from_url(self.url, **options)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            self.sentinels, sentinel_kwargs=self._sentinel_options(), **self._master_options()
        )
        client: redis.asyncio.Redis = sentinel.master_for(str(self.master), **options)
        return client

    def async_pool(self, **options: Any) -> redis.asyncio.ConnectionPool:
        """A `redis.asyncio` connection pool, for a library that takes one."""
        return self.async_client(**options).connection_pool

    def _sentinel_options(self) -> dict[str, Any]:
        """How to talk to the sentinels themselves: with timeouts, and their password."""
        options: dict[str, Any] = dict(SENTINEL_TIMEOUTS)
        if self.sentinel_password:
            options["password"] = self.sentinel_password
        return options

    def _master_options(self) -> dict[str, Any]:
        """What `REDIS_URL` says of the connections besides where: database, user, password,
        TLS and its options."""
        options = parse_url(self.url)
        for where in ("host", "port", "path"):
            options.pop(where, None)
        if options.pop("connection_class", None) is redis.SSLConnection:
            options["ssl"] = True
        return options


def close(client: redis.Redis) -> None:
    """Close a blocking client of `RedisAddress`'s, and its connections to the sentinels.

    A Sentinel-managed client's pool holds the `Sentinel` it asks, whose own clients closing
    the pool leaves open.
    """
    client.close()
    client.connection_pool.disconnect()  # a client given its pool leaves it open
    for sentinel in _sentinels_of(client.connection_pool):
        sentinel.close()


async def aclose(client: redis.asyncio.Redis) -> None:
    """Close an async client of `RedisAddress`'s, and its connections to the sentinels."""
    await client.aclose()
    await close_pool(client.connection_pool)


@asynccontextmanager
async def aclosing_client(client: redis.asyncio.Redis) -> AsyncIterator[redis.asyncio.Redis]:
    """A block that closes an async client of `RedisAddress`'s as it ends (`aclose`)."""
    try:
        yield client
    finally:
        await aclose(client)


async def close_pool(pool: redis.asyncio.ConnectionPool) -> None:
    """Close an async pool of `RedisAddress`'s, and its connections to the sentinels."""
    await pool.disconnect()
    for sentinel in _sentinels_of(pool):
        await sentinel.aclose()


def _sentinels_of(pool: Any) -> list[Any]:
    """The clients of the sentinels a Sentinel-managed pool asks (none for another pool)."""
    return list(getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()))


def _host(host: str) -> str:
    """A host as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
