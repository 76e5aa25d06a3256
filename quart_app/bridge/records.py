"""The record of every task this app publishes: each id, with its task's name.

Celery reports PENDING for any id it has never seen, so by itself it cannot tell a task still
in the queue from an id nobody ever published. Every task published by any part of the app is
recorded when it is published, for as long as results are kept, and the API answers 404 for
the other ids:

- the web app's own submissions record a whole batch in one round trip, before sending it
  (`quart_app.bridge.submitter`);
- anything else that publishes through the configured Celery (a worker starting a subtask or
  the next link of a chain, `celery beat`, `send_task` from a shell) is recorded by a receiver
  of Celery's `after_task_publish` signal, one write per task, once the broker has the task
  (so a publish that fails, or a publisher stopped half way, leaves no record of a task that
  does not exist) and before `apply_async` returns. Without Redis it logs a warning: the task
  is sent all the same, and matters more than being able to follow it.

The functions here block: the web app runs them in its thread pool.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery import signals
from quart import Quart, current_app
from redis import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

EXTENSION = "redis"
KEY = "quart_app:task:{}"
# The form Celery gives ids in, and the API's routes take (in either case): nothing else that
# `UUID()` would read ("{...}", "urn:uuid:...", no hyphens) is a task id here.
ID_FORM = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")

logger = logging.getLogger(__name__)


def init_app(app: Quart) -> None:
    """Open the web app's Redis client when serving starts; close it when serving stops."""

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
    """The web app's Redis client (to hand to the functions below, in the thread pool)."""
    redis: Redis = current_app.extensions[EXTENSION]
    return redis


def remember(redis: Redis, tasks: list[tuple[str, str]], expires: int) -> None:
    """Record that each task (id, name) was published, for `expires` seconds."""
    with redis.pipeline(transaction=False) as pipeline:
        for task_id, name in tasks:
            pipeline.set(KEY.format(task_id), name, ex=expires)
        pipeline.execute()


def forget(redis: Redis, task_ids: list[str]) -> None:
    """Drop the records of tasks that could not be sent after all."""
    redis.delete(*(KEY.format(task_id) for task_id in task_ids))


def parse_id(value: object) -> str | None:
    """The task id `value` is, in its usual lower-case form, if it is one; else None."""
    if isinstance(value, str) and ID_FORM.fullmatch(value):
        return value.lower()
    return None


def name_of(redis: Redis, task_id: str) -> str | None:
    """The name of the task published as `task_id`, or None if none was."""
    name = redis.get(KEY.format(task_id))
    return name.decode() if isinstance(name, bytes) else None


@dataclass
class PublishRecorder:
    """Records each task published through Celery: the `after_task_publish` receiver."""

    redis_url: str
    expires: int

    @cached_property
    def redis(self) -> Redis:
        """A client of this process's own, made on first use (redis-py reconnects after fork)."""
        return Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)

    def __call__(self, headers: Mapping[str, Any] | None = None, **_: Any) -> None:
        if _batch.recorded or not headers or "id" not in headers:
            return
        try:
            remember(self.redis, [(str(headers["id"]), str(headers["task"]))], self.expires)
        except RedisError as error:
            logger.warning("task %s was published but not recorded: %s", headers["id"], error)


class _Batch(threading.local):
    """Whether this thread is sending a batch of tasks it recorded already."""

    recorded = False


_batch = _Batch()


@contextmanager
def recorded_already() -> Iterator[None]:
    """Publish tasks in this block without recording them again: the caller has."""
    _batch.recorded = True
    try:
        yield
    finally:
        _batch.recorded = False


def init_celery(config: Mapping[str, Any], expires: int) -> None:
    """Record every task published through Celery from now on, in the Redis at `REDIS_URL`.

    An app without `REDIS_URL` (a plain Flask app) has no records, and nothing reads them.
    """
    signals.after_task_publish.disconnect(dispatch_uid=__name__)
    redis_url = config.get("REDIS_URL")
    if redis_url:
        recorder = PublishRecorder(str(redis_url), expires)
        signals.after_task_publish.connect(recorder, weak=False, dispatch_uid=__name__)
