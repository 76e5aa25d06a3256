"""The web app's own blocking Redis client: the records, the stored states and the revocations,
read and written from the thread pool (`quart_celery._client.blocking`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from quart import Quart, current_app
from redis import Redis

from quart_celery._broker import address as redis_address
from quart_celery._broker.address import RedisAddress

EXTENSION = "quart_celery.redis"


def init_app(app: Quart) -> None:
    """Open the client when serving starts; close it when serving stops."""

    @app.while_serving
    async def blocking_redis_client() -> AsyncGenerator[None, None]:
        # A waiting pool makes a burst of requests wait for a connection, not fail for one.
        app.extensions[EXTENSION] = RedisAddress.of(app.config).waiting_client(
            max_connections=app.config["BLOCKING_POOL_SIZE"],
            timeout=app.config["BLOCKING_TIMEOUT"],
            socket_connect_timeout=2,
            socket_timeout=2,
        )
        yield
        redis_address.close(app.extensions.pop(EXTENSION))


def blocking_redis() -> Redis:
    """The serving app's blocking Redis client (to hand to functions run in the thread pool)."""
    redis: Redis = current_app.extensions[EXTENSION]
    return redis
