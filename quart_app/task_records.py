"""The web app's record of the tasks it accepted: each id, with its task's name.

Celery reports PENDING for any id it has never seen, so by itself it cannot tell a task still
in the queue from an id nobody ever submitted. The app records every id it accepts, for as long
as results are kept, and answers 404 for the others.

The functions here block: they run in the app's thread pool, next to the Celery calls they go
with, so that accepting a task costs one trip to the pool.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from uuid import UUID

from quart import Quart, current_app
from redis import BlockingConnectionPool, Redis

EXTENSION = "redis"
KEY = "quart_app:task:{}"
# The form Celery gives ids in, and the API's routes take (in either case): nothing else that
# `UUID()` would read ("{...}", "urn:uuid:...", no hyphens) is a task id here.
ID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def init_app(app: Quart) -> None:
    """Open a Redis client when serving starts; close it when serving stops."""

    @app.while_serving
    async def redis_client() -> AsyncGenerator[None, None]:
        # A blocking pool makes a burst of requests wait for a connection, not fail for one.
        pool = BlockingConnectionPool.from_url(
            app.config["REDIS_URL"],
            max_connections=app.config["BLOCKING_POOL_SIZE"],
            timeout=app.config["BLOCKING_TIMEOUT"],
            socket_connect_timeout=2,
            socket_timeout=2,
        )
        app.extensions[EXTENSION] = Redis(connection_pool=pool)
        yield
        app.extensions.pop(EXTENSION).close()


def client() -> Redis:
    """The app's Redis client (to hand to the functions below, in the thread pool)."""
    redis: Redis = current_app.extensions[EXTENSION]
    return redis


def remember(redis: Redis, tasks: list[tuple[UUID, str]], expires: int) -> None:
    """Record that the app accepted each task (id, name), for `expires` seconds."""
    with redis.pipeline(transaction=False) as pipeline:
        for task_id, name in tasks:
            pipeline.set(KEY.format(task_id), name, ex=expires)
        pipeline.execute()


def forget(redis: Redis, task_ids: list[UUID]) -> None:
    """Drop the records of tasks that could not be sent after all."""
    redis.delete(*(KEY.format(task_id) for task_id in task_ids))


def parse_id(value: object) -> UUID | None:
    """The task id `value` is, if it is one (a string in the usual form); else None."""
    if isinstance(value, str) and ID_FORM.fullmatch(value):
        return UUID(value)
    return None


def name_of(redis: Redis, task_id: UUID) -> str | None:
    """The name of the task the app accepted as `task_id`, or None if it never did."""
    name = redis.get(KEY.format(task_id))
    return name.decode() if isinstance(name, bytes) else None
