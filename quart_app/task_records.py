"""The web app's record of the tasks it accepted: each id, with its task's name.

Celery reports PENDING for any id it has never seen, so by itself it cannot tell a task still
in the queue from an id nobody ever submitted. The app records every id it accepts, for as long
as results are kept, and answers 404 for the others.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from quart import Quart, current_app
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from quart_app.errors import APIError

EXTENSION = "redis"
KEY = "quart_app:task:{}"


def init_app(app: Quart) -> None:
    """Open an async Redis client when serving starts; close it when serving stops."""

    @app.before_serving
    async def open_client() -> None:
        # A blocking pool makes a burst of requests wait for a connection, not fail for one.
        pool = BlockingConnectionPool.from_url(
            app.config["REDIS_URL"],
            max_connections=64,
            timeout=app.config["BLOCKING_TIMEOUT"],
            socket_connect_timeout=2,
            socket_timeout=2,
        )
        app.extensions[EXTENSION] = Redis(connection_pool=pool)

    @app.after_serving
    async def close_client() -> None:
        client: Redis = app.extensions.pop(EXTENSION)
        await client.aclose(close_connection_pool=True)


async def remember(task_id: UUID, name: str) -> None:
    """Record that the app accepted task `task_id`, a run of `name`."""
    expires = int(current_app.config["CELERY_RESULT_EXPIRES"])
    await _call(lambda redis: redis.set(KEY.format(task_id), name, ex=expires))


async def forget(task_id: UUID) -> None:
    """Drop the record of a task that could not be sent after all."""
    await _call(lambda redis: redis.delete(KEY.format(task_id)))


async def name_of(task_id: UUID) -> str | None:
    """The name of the task the app accepted as `task_id`, or None if it never did."""
    name = await _call(lambda redis: redis.get(KEY.format(task_id)))
    return name.decode() if isinstance(name, bytes) else None


async def _call(command: Any) -> Any:
    """Run a Redis command with the app's client; 503 if Redis cannot be reached."""
    client: Redis = current_app.extensions[EXTENSION]
    try:
        return await command(client)
    except RedisError as error:
        raise APIError(503, "service_unavailable", f"Redis cannot be reached: {error}") from None
