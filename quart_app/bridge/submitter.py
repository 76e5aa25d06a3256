"""Sending the tasks the web app submits, in batches.

Each trip to the thread pool costs the event loop and the pool thread a hand-over of the GIL
both ways, which on a busy server cost more than the publish itself. So the tasks submitted
while one batch is being sent wait for the next trip, and go together: one trip to the pool,
one Redis round trip for their records, one producer for their messages. An idle server sends
a lone task at once.

Use it through `quart_app.bridge.queue.submit`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from celery import Task
from quart import Quart, current_app
from redis import Redis
from redis.exceptions import RedisError

from quart_app.bridge import records
from quart_app.bridge.errors import ServiceUnavailable
from quart_app.bridge.pool import UNREACHABLE, as_api_error, run_in_pool
from quart_app.extensions import celery

EXTENSION = "submitter"


@dataclass(frozen=True)
class Submission:
    """A run of a task to send: the task, its arguments, Celery's options, and its id."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    task_id: str


@dataclass(frozen=True)
class Waiting:
    """A submission, and the future its caller awaits until it is sent (or cannot be)."""

    submission: Submission
    sent: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Submitter:
    """Sends the tasks submitted on one event loop, a batch at a time."""

    def __init__(self, redis: Redis, expires: int) -> None:
        self.redis = redis
        self.expires = expires
        self.waiting: list[Waiting] = []
        self.sending: asyncio.Task[None] | None = None

    async def submit(self, submission: Submission) -> None:
        """Record and send `submission`; return once sent. 503 if it cannot be sent."""
        waiting = Waiting(submission)
        self.waiting.append(waiting)
        if self.sending is None:
            self.sending = asyncio.create_task(self.send_waiting())
        await waiting.sent

    async def send_waiting(self) -> None:
        """Send batches until none waits (a task of its own, outliving any one request).

        If it is cancelled, as when serving stops, every task not yet answered gets a 503:
        no request waits for good.
        """
        batch: list[Waiting] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                await self.send(batch)
        finally:
            self.sending = None
            unanswered, self.waiting = batch + self.waiting, []
            for waiting in unanswered:
                if not waiting.sent.done():
                    waiting.sent.set_exception(ServiceUnavailable("The server is shutting down."))

    async def close(self) -> None:
        """Stop sending: cancel the batch in hand, answering its tasks 503."""
        if self.sending is not None:
            self.sending.cancel()
            with suppress(asyncio.CancelledError):
                await self.sending

    async def send(self, batch: list[Waiting]) -> None:
        """Send one batch in one trip to the pool, and settle each task's future."""
        submissions = [waiting.submission for waiting in batch]
        timeout = current_app.config["BLOCKING_TIMEOUT"]
        # The thread stops sending a little before the request is answered 503.
        deadline = time.monotonic() + 0.8 * timeout
        try:
            errors = await run_in_pool(
                "the broker", publish, self.redis, self.expires, submissions, deadline
            )
        except Exception as failure:
            errors = [failure] * len(batch)
        for waiting, error in zip(batch, errors, strict=True):
            if waiting.sent.done():  # its caller was cancelled meanwhile
                continue
            if error is None:
                waiting.sent.set_result(None)
            else:
                waiting.sent.set_exception(as_api_error("the broker", error))


def publish(
    redis: Redis, expires: int, batch: list[Submission], deadline: float
) -> list[Exception | None]:
    """Record a batch of tasks, then publish each; return each one's error, or None if sent.

    Runs in the thread pool. Recorded first, all in one round trip, so that a look-up right
    after the answer finds them. One producer sends the whole batch. Once the broker proves
    unreachable, or the `deadline` (a `time.monotonic()` value) passes, the rest is not tried:
    their callers are answered 503, and a task sent after that answer would run unasked, or
    twice if retried. Every task not sent has its record dropped again.
    """
    records.remember(redis, [(s.task_id, s.task.name) for s in batch], expires)
    errors: list[Exception | None] = []
    try:
        with records.recorded_already(), celery.producer_or_acquire() as producer:
            for submission in batch:
                errors.append(_send(producer, submission, errors, deadline))
    except Exception as error:  # no producer: nothing more is sent
        errors += [error] * (len(batch) - len(errors))
    unsent = [s.task_id for s, error in zip(batch, errors, strict=True) if error]
    if unsent:
        with suppress(RedisError):  # the records expire anyway
            records.forget(redis, unsent)
    return errors


def _send(
    producer: Any, submission: Submission, earlier: list[Exception | None], deadline: float
) -> Exception | None:
    """Publish one task of a batch, unless an earlier one found the broker gone or time is up."""
    gone = next((error for error in earlier if isinstance(error, UNREACHABLE)), None)
    if gone is not None:
        return gone
    if time.monotonic() > deadline:
        return TimeoutError("the batch ran out of time")
    try:
        submission.task.apply_async(
            submission.args,
            submission.kwargs,
            task_id=submission.task_id,
            producer=producer,
            **submission.options,
        )
    except Exception as error:
        return error
    return None


def init_app(app: Quart) -> None:
    """Make the app's submitter when serving starts; stop it when serving stops."""

    @app.while_serving
    async def submitter() -> AsyncGenerator[None, None]:
        expires = int(app.config["CELERY_RESULT_EXPIRES"])
        app.extensions[EXTENSION] = Submitter(records.client(), expires)
        yield
        await app.extensions.pop(EXTENSION).close()


def submitter() -> Submitter:
    """The app's submitter (while it serves)."""
    found: Submitter = current_app.extensions[EXTENSION]
    return found
