"""Accepting tasks, in batches, for the JSON API and the HTML form.

Each trip to the thread pool costs the event loop and the pool thread a hand-over of the GIL
both ways, which on a busy server cost more than the publish itself. So the tasks accepted
while one batch is being sent wait for the next trip, and go together: one trip to the pool,
one Redis round trip for their records, one producer for their messages. An idle server sends
a lone task at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import Any
from uuid import UUID, uuid4

from celery import Task
from quart import Quart, current_app
from redis import Redis

from quart_app import celery_calls, task_records
from quart_app.blocking import as_api_error, run_blocking
from quart_app.errors import APIError

EXTENSION = "submitter"


class Submitter:
    """Sends the tasks accepted on one event loop, a batch at a time."""

    def __init__(self, redis: Redis, expires: int) -> None:
        self.redis = redis
        self.expires = expires
        self.waiting: list[tuple[celery_calls.Submission, asyncio.Future[None]]] = []
        self.sending: asyncio.Task[None] | None = None

    async def submit(self, task: Task[Any, Any], kwargs: dict[str, Any]) -> UUID:
        """Record and send a run of `task`; its id once sent. 503 if it cannot be sent."""
        task_id = uuid4()
        sent = asyncio.get_running_loop().create_future()
        self.waiting.append(((task, kwargs, task_id), sent))
        if self.sending is None:
            self.sending = asyncio.create_task(self.send_waiting())
        await sent
        return task_id

    async def send_waiting(self) -> None:
        """Send batches until none waits (a task of its own, outliving any one request).

        If it is cancelled, as when serving stops, every task not yet answered gets a 503:
        no request waits for good.
        """
        batch: list[tuple[celery_calls.Submission, asyncio.Future[None]]] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                await self.send(batch)
        finally:
            self.sending = None
            unanswered, self.waiting = batch + self.waiting, []
            for _, sent in unanswered:
                if not sent.done():
                    sent.set_exception(
                        APIError(503, "service_unavailable", "The server is shutting down.")
                    )

    async def close(self) -> None:
        """Stop sending: cancel the batch in hand, answering its tasks 503."""
        if self.sending is not None:
            self.sending.cancel()
            with suppress(asyncio.CancelledError):
                await self.sending

    async def send(self, batch: list[tuple[celery_calls.Submission, asyncio.Future[None]]]) -> None:
        """Send one batch in one trip to the pool, and settle each task's future."""
        submissions = [submission for submission, _ in batch]
        timeout = current_app.config["BLOCKING_TIMEOUT"]
        # The thread stops sending a little before the request is answered 503.
        deadline = time.monotonic() + 0.8 * timeout
        try:
            errors = await run_blocking(
                "the broker", celery_calls.accept, self.redis, self.expires, submissions, deadline
            )
        except Exception as failure:
            errors = [failure] * len(batch)
        for (_, sent), error in zip(batch, errors, strict=True):
            if sent.done():  # its request was cancelled meanwhile
                continue
            if error is None:
                sent.set_result(None)
            else:
                sent.set_exception(as_api_error("the broker", error))


def init_app(app: Quart) -> None:
    """Make the app's submitter when serving starts; stop it when serving stops."""

    @app.while_serving
    async def submitter() -> AsyncGenerator[None, None]:
        expires = int(app.config["CELERY_RESULT_EXPIRES"])
        app.extensions[EXTENSION] = Submitter(task_records.client(), expires)
        yield
        await app.extensions.pop(EXTENSION).close()


async def submit(task: Task[Any, Any], kwargs: dict[str, Any]) -> UUID:
    """Record and send a run of `task`; return its id. 503, recording nothing, if it can't."""
    submitter: Submitter = current_app.extensions[EXTENSION]
    return await submitter.submit(task, kwargs)
