"""Recording the tasks that publishers other than the web app's submitter send.

A worker starting a subtask or the next link of a chain, `celery beat`, or `send_task` from a
shell that configured the app all publish through the app's Celery, whose messaging class is
`RecordingAMQP` (`QuartCelery` makes it so). Each such task gets its record
(`quart_celery._broker.records`):

- where the broker is the Redis that keeps the records (the default), the Redis transport
  writes it in the same command as the message (`quart_celery._broker.transport`, which asks
  `record_with`), so the record costs no round trip of its own, and the two exist together or
  not at all;
- with any other broker, the message sender writes it once the broker has the task (a publish
  that fails leaves no record of a task that does not exist) and before `apply_async`
  returns. Without Redis it logs a warning: the task is sent all the same, and matters more
  than being able to follow it.

Only this app's tasks are recorded: Celery's publish signals would have heard every Celery
app in the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery.app.amqp import AMQP
from redis import Redis
from redis.exceptions import RedisError

from quart_celery._broker import records
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.keys import Keys

logger = logging.getLogger(__name__)


@dataclass
class PublishRecorder:
    """Records each task the app publishes, where the transport has not (`RecordingAMQP`)."""

    address: RedisAddress
    keys: Keys
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
            records.remember(self.redis, self.keys, [(task_id, str(headers["task"]))], self.expires)
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
    return recorder.keys.task(headers["id"]), str(headers["task"]), recorder.expires


def recorded_with_message(task_id: str) -> None:
    """The transport wrote the record of `task_id` with its message: the sender need not."""
    _publishing.by_transport = task_id


class RecordingAMQP(AMQP):
    """Celery's messaging for the app, whose sender records each task it has sent.

    The `amqp` class `QuartCelery` gives its Celery instance: a Celery extension point of one
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


def recorder() -> PublishRecorder | None:
    """What records the tasks this process publishes (None: nothing does)."""
    return _recorder


def init_celery(recorder: PublishRecorder | None) -> None:
    """Record every task the app publishes from now on with `recorder` (None: record nothing,
    as for an app without Redis, a plain Flask app's, where nothing reads the records)."""
    global _recorder
    _recorder = recorder
