"""Where the app's Redis is: a URL, or a master the sentinels name. These tests make no
connection; `tests/faults/test_sentinel.py` fails a real master over."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from celery import Celery

from quart_celery._broker.address import RedisAddress, aclose, close
from quart_celery._broker.batches import BatchWriter
from quart_celery.settings import parse_sentinels
from tests.probe_app import KEYS, create_app

SENTINELS = {"REDIS_SENTINELS": "127.0.0.1:26379,[::1]:26380", "REDIS_SENTINEL_MASTER": "main"}


def test_sentinels_are_read_as_host_and_port() -> None:
    assert parse_sentinels(" s1:26379, [::1]:26380") == (("s1", 26379), ("::1", 26380))
    for wrong in ("s1", "fe80::1:26379", "s1:0", "s1:port"):
        with pytest.raises(ValueError, match="is not host:port"):
            parse_sentinels(wrong)


def test_without_sentinels_the_url_is_all() -> None:
    address = RedisAddress.of({"REDIS_URL": "redis://cache:6379/3"})
    assert (address.broker_url, address.transport_options, address.database) == (
        "redis://cache:6379/3",
        {},
        3,
    )
    client = address.client()
    assert type(client.connection_pool) is redis.ConnectionPool
    close(client)


def test_with_sentinels_the_url_gives_the_database_and_credentials() -> None:
    address = RedisAddress.of({"REDIS_URL": "redis://app:secret@ignored:6379/3", **SENTINELS})
    assert address.broker_url == (
        "sentinel://app:secret@127.0.0.1:26379/3;sentinel://app:secret@[::1]:26380/3"
    )
    assert address.transport_options["master_name"] == "main"
    client = address.client(socket_timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "main"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "secret")
    assert kwargs["socket_timeout"] == 1
    # The sentinels are asked with timeouts of their own, and no password they were not given.
    asked = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert asked["socket_timeout"] == 2
    assert asked.get("password") is None
    close(client)


def test_the_sentinels_password_is_theirs_alone() -> None:
    address = RedisAddress.of(
        {"REDIS_URL": "redis://:secret@x/0", "REDIS_SENTINEL_PASSWORD": "theirs", **SENTINELS}
    )
    assert "theirs" not in repr(address)
    assert address.transport_options["sentinel_kwargs"]["password"] == "theirs"
    client = address.client()
    manager = client.connection_pool.sentinel_manager  # type: ignore[attr-defined]
    assert manager.sentinels[0].connection_pool.connection_kwargs["password"] == "theirs"
    assert client.connection_pool.connection_kwargs["password"] == "secret"
    close(client)


async def test_async_clients_and_pools_find_the_master_through_the_sentinels() -> None:
    address = RedisAddress.of({"REDIS_URL": "rediss://:secret@ignored/5", **SENTINELS})
    client = address.async_client()
    pool = client.connection_pool
    assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert pool.connection_class is redis.asyncio.sentinel.SentinelManagedSSLConnection
    assert pool.connection_kwargs["db"] == 5
    await aclose(client)


async def test_the_event_loop_writer_sends_to_the_master_too() -> None:
    app = create_app(SENTINELS)
    celery: Celery = app.extensions["celery"]
    writer = BatchWriter.for_app(celery, RedisAddress.of(app.config), KEYS)
    assert writer is not None
    assert writer.records is None  # the broker is the app's Redis: records go with messages
    assert isinstance(writer.client.connection_pool, redis.asyncio.sentinel.SentinelConnectionPool)
    await writer.close()
