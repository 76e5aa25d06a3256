"""The record of every task this app publishes: each id, with its task's name.

Celery reports PENDING for any id it has never seen, so by itself it cannot tell a task still
in the queue from an id nobody ever published. Every task published by any part of the app is
recorded when it is published, for as long as results are kept, and the API answers 404 for
the other ids:

- the web app's own submissions record a whole batch in one round trip, before sending it
  (`quart_app.bridge.submitter`);
- anything else that publishes through the configured Celery (a worker starting a subtask or
  the next link of a chain, `celery beat`, `send_task` from a shell) has its record written
  with its message: where the broker is the Redis at `REDIS_URL` (the default), the Redis
  transport sends both in one transaction (`quart_app.bridge.transport`), so the record costs
  no round trip of its own, and the two exist together or not at all. With any other broker,
  the app's message sender (`RecordingAMQP`, its `amqp` class) writes it once the broker has
  the task (a publish that fails leaves no record of a task that does not exist) and before
  `apply_async` returns. Without Redis it logs a warning: the task is sent all the same, and
  matters more than being able to follow it.

Only this app's tasks are recorded: Celery's publish signals would have heard every Celery
app in the process.

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

from celery.app.amqp import AMQP
from quart import Quart, current_app
from redis import Redis
from redis.exceptions import RedisError

from quart_app.bridge import redis_address
from quart_app.bridge.redis_address import RedisAddress

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
        # A waiting pool makes a burst of requests wait for a connection, not fail for one.
        app.extensions[EXTENSION] = RedisAddress.of(app.config).waiting_client(
            max_connections=app.config["BLOCKING_POOL_SIZE"],
            timeout=app.config["BLOCKING_TIMEOUT"],
            socket_connect_timeout=2,
            socket_timeout=2,
        )
        yield
        redis_address.close(app.extensions.pop(EXTENSION))


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


def names_of(redis: Redis, task_ids: list[str]) -> list[str | None]:
    """The names of the tasks published under `task_ids` (None where none was), in one MGET."""
    if not task_ids:
        return []
    names = redis.mget([KEY.format(task_id) for task_id in task_ids])
    return [name.decode() if isinstance(name, bytes) else None for name in names]


@dataclass
class PublishRecorder:
    """Records each task the app publishes, where the transport has not (`RecordingAMQP`)."""

    address: RedisAddress
    expires: int
    #: Whether the broker is the Redis at `address`, so the transport records with messages.
    with_messages: bool

    @cached_property
    def redis(self) -> Redis:
        """A client of this process's own, made on first use (redis-py reconnects after fork)."""
        return self.address.client(socket_connect_timeout=2, socket_timeout=2)

    def sent(self, headers: Mapping[str, Any]) -> None:
        """Record the task whose message, with these headers, the broker now has."""
        if "id" not in headers:
            return
        task_id, by_transport = str(headers["id"]), _publishing.by_transport
        _publishing.by_transport = None
        if _publishing.recorded_already or by_transport == task_id:
            return
        try:
            remember(self.redis, [(task_id, str(headers["task"]))], self.expires)
        except RedisError as error:
            logger.warning("task %s was published but not recorded: %s", task_id, error)


class _Publishing(threading.local):
    """What this thread's publishing has recorded already."""

    #: Sending a batch whose records the sender wrote before.
    recorded_already = False
    #: The task whose record the transport wrote with its message, just now.
    by_transport: str | None = None


_publishing = _Publishing()
_recorder: PublishRecorder | None = None


@contextmanager
def recorded_already() -> Iterator[None]:
    """Publish tasks in this block without recording them again: the caller has."""
    _publishing.recorded_already = True
    try:
        yield
    finally:
        _publishing.recorded_already = False


def record_with(message: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """The record for the transport to write with `message`, if it is to: (key, name, seconds).

    None where the broker is another Redis, for a message that is not a task's, and in a batch
    recorded already.
    """
    recorder = _recorder
    headers = message.get("headers") or {}
    if recorder is None or not recorder.with_messages or _publishing.recorded_already:
        return None
    if "id" not in headers or "task" not in headers:
        return None
    return KEY.format(headers["id"]), str(headers["task"]), recorder.expires


def recorded_with_message(task_id: str) -> None:
    """The transport wrote the record of `task_id` with its message: the sender need not."""
    _publishing.by_transport = task_id


class RecordingAMQP(AMQP):
    """Celery's messaging for the app, whose sender records each task it has sent.

    The placeholder's `amqp` class (`quart_app.extensions`): a Celery extension point of one
    app, where the publish signals are every app's.
    """

    def _create_task_sender(self) -> Any:
        send = super()._create_task_sender()  # type: ignore[misc]  # missing from the stubs

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            sent = send(producer, name, message, **options)
            recorder = _recorder
            if recorder is not None:
                recorder.sent(message.headers)
            return sent

        return send_task_message


def init_celery(address: RedisAddress | None, with_messages: bool, expires: int) -> None:
    """Record every task the app publishes from now on, in the app's Redis at `address`
    (with their messages where it is the broker: `with_messages`).

    An app without `REDIS_URL` (a plain Flask app) has no records, and nothing reads them.
    """
    global _recorder
    _recorder = None if address is None else PublishRecorder(address, expires, with_messages)
