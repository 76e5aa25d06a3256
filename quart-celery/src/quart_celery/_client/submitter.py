"""Sending the tasks the web app submits, in batches.

The tasks submitted while one batch is being sent wait for the next, and go together. Where
the broker is Redis, a batch goes from the event loop itself, messages and records in one
round trip (`quart_celery._broker.messages`, `quart_celery._broker.batches`): no thread, no
kombu. Otherwise, and for the
messages that path does not cover, it goes through the thread pool: one trip for the batch
(each trip costs a hand-over of the GIL both ways, which on a busy server cost more than the
publish), one Redis round trip for the records, one producer for the messages. An idle server
sends a lone task at once.

Use it through `quart_celery.queue.submit`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Signature, Task
from quart import Quart, current_app
from redis import Redis
from redis.exceptions import RedisError

from quart_celery._broker import canvas, recording, records
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.batches import BatchWriter
from quart_celery._broker.keys import Keys
from quart_celery._broker.messages import MessageBuilder, Outgoing, Unsupported
from quart_celery._broker.workflow_records import Command, WorkflowRecord
from quart_celery._broker.workflow_sending import (
    recording_commands,
    revoke_every_task,
    run_commands,
)
from quart_celery._client.availability import as_api_error, unavailable
from quart_celery._client.blocking import run_blocking
from quart_celery._client.connections import blocking_redis
from quart_celery._client.current import celery_of, current_keys
from quart_celery.errors import APIError, ServiceUnavailable

EXTENSION = "quart_celery.submitter"


@dataclass(slots=True)  # not frozen: made for every submission, and frozen sets fields slowly
class Submission:
    """A run of a task to send: the task, its arguments, Celery's options, and its id."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    task_id: str
    #: The submitter's context: the pool publishes in it, so that what Celery's publish
    #: signals keep in context variables (a trace's span) is the submitter's.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


@dataclass(slots=True)
class Waiting:
    """A submission, its message where it goes from the event loop, and the future its caller
    awaits until it is sent (or cannot be)."""

    submission: Submission
    outgoing: Outgoing | None
    sent: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True, slots=True)
class PreparedWorkflow:
    """A workflow ready to send: what Celery would send for it, and what records it."""

    captured: canvas.CapturedWorkflow
    #: Its messages, where they go from the event loop in one step (None: the thread pool's
    #: path sends them).
    outgoing: list[Outgoing] | None
    #: The workflow's record and counters, and Celery's own writes for it (a chord's size),
    #: for the result backend's Redis.
    backend_commands: list[Command]


class Submitter:
    """Sends the tasks submitted on one event loop, a batch at a time."""

    def __init__(
        self, celery: Celery, redis: Redis, keys: Keys, expires: int, writer: BatchWriter | None
    ) -> None:
        """A submitter of `celery`'s tasks, recording them in `redis` under `keys` for
        `expires` seconds; `writer` sends from the event loop where the broker is Redis (None:
        the thread pool does)."""
        self.celery = celery
        self.redis = redis
        self.keys = keys
        self.expires = expires
        self.writer = writer
        self.builder = None if writer is None else MessageBuilder(celery, writer.broker.database)
        #: Whether a workflow goes in one step: where one Redis is broker, records and
        #: results alike (as by default).
        conf = celery.conf
        self.workflows_in_one_step = (
            writer is not None
            and writer.records is None
            and str(conf.result_backend) == str(conf.broker_url)
        )
        self.waiting: list[Waiting] = []
        self.sending: asyncio.Task[None] | None = None

    async def submit(self, submission: Submission) -> None:
        """Record and send `submission`; return once sent. 503 if it cannot be sent.

        Its message is built here, so that a call the task cannot take raises in the caller.
        """
        outgoing = None
        if self.builder is not None:
            options = {**submission.options, "task_id": submission.task_id}
            with suppress(Unsupported):  # the thread pool's path sends it
                outgoing = self.builder.message(
                    submission.task, submission.args, submission.kwargs, options
                )
        waiting = Waiting(submission, outgoing)
        self.waiting.append(waiting)
        if self.sending is None:
            self.sending = asyncio.create_task(self.send_waiting())
        await waiting.sent
        if outgoing is not None:
            MessageBuilder.published(outgoing)

    async def submit_workflow(
        self, workflow: Signature[Any], workflow_id: str | None = None
    ) -> WorkflowRecord:
        """Record and send a workflow, all of it or none; its record, once sent. 503 if it
        cannot be sent (and then none of it runs).

        Celery's canvas is applied, captured (`quart_celery._broker.canvas`), in the thread
        pool; where one Redis keeps everything, the messages, the records and Celery's writes
        then go from the event loop in one script. Otherwise the thread pool sends them one
        by one, and if one cannot be sent, every task of the workflow is marked REVOKED, so
        that none of it runs.
        """
        # One context for Celery's publish signals, before (in the pool) and after (here), as
        # for a task: a receiver may keep state between them in a context variable (a span).
        context = contextvars.copy_context()
        limit = current_app.config["WORKFLOW_MAX_BYTES"]
        prepared: PreparedWorkflow = await run_blocking(
            "the broker", context.run, self.prepare, workflow, workflow_id, limit
        )
        if prepared.outgoing is not None and self.writer is not None:
            timeout = 0.8 * current_app.config["BLOCKING_TIMEOUT"]
            # The tasks its messages carry to run later are recorded now: each can be looked up
            # and followed from the start.
            commands = prepared.backend_commands + [
                ("SET", self.keys.task(task_id), name, "EX", self.expires)
                for task_id, name in prepared.captured.carried
            ]
            topic = self.builder.event_topic if self.builder is not None else ""
            try:
                await self.writer.send(prepared.outgoing, self.expires, timeout, topic, commands)
            except TimeoutError:
                message = f"The broker did not answer within {timeout:g} s."
                raise ServiceUnavailable(message) from None
            except Exception as error:
                raise as_api_error("the broker", error) from error
            for outgoing in prepared.outgoing:
                context.run(MessageBuilder.published, outgoing)
        else:
            deadline = time.monotonic() + 0.8 * current_app.config["BLOCKING_TIMEOUT"]
            await run_blocking(
                "the broker",
                publish_workflow,
                self.celery,
                self.redis,
                self.keys,
                self.expires,
                prepared,
                deadline,
            )
        return prepared.captured.record

    def prepare(
        self, workflow: Signature[Any], workflow_id: str | None, limit: int
    ) -> PreparedWorkflow:
        """Capture what Celery would send for `workflow` (as `workflow_id`, if given), and
        build its messages where they go from the event loop. Runs in the thread pool.

        413 if its messages take more than `limit` bytes: Celery copies a chord's body into
        the message of each task of its header, so a workflow of a few tasks may make a great
        deal to send.
        """
        captured = canvas.capture(self.celery, workflow, workflow_id)
        commands = recording_commands(captured, self.keys, self.celery.backend, self.expires)
        outgoing: list[Outgoing] | None = None
        if self.workflows_in_one_step and self.builder is not None:
            try:
                outgoing = [
                    self.builder.message(send.task, send.args, send.kwargs, send.options)
                    for send in captured.sends
                ]
            except Unsupported:
                outgoing = None
        if outgoing is not None:
            size = sum(len(message.payload) for message in outgoing)
            if size > limit:
                raise APIError(
                    413,
                    "workflow_too_large",
                    f"The workflow's messages would take {size} bytes, over WORKFLOW_MAX_BYTES "
                    f"({limit}): Celery copies a chord's body into each task of its header.",
                )
        return PreparedWorkflow(captured, outgoing, commands)

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
        if self.writer is not None:
            await self.writer.close()

    async def send(self, batch: list[Waiting]) -> None:
        """Send one batch, from the loop what it can, the rest in one trip to the pool."""
        from_loop = [waiting for waiting in batch if waiting.outgoing is not None]
        from_pool = [waiting for waiting in batch if waiting.outgoing is None]
        if from_loop and from_pool:
            await asyncio.gather(self.send_from_loop(from_loop), self.send_from_pool(from_pool))
        elif from_loop:  # the usual case, without the two tasks of a gather
            await self.send_from_loop(from_loop)
        else:
            await self.send_from_pool(from_pool)

    async def send_from_loop(self, batch: list[Waiting]) -> None:
        """Write the messages and records of a batch to Redis in one round trip."""
        if not batch or self.writer is None or self.builder is None:
            return
        # The write gives up a little before the request would be answered 503 anyway.
        timeout = 0.8 * current_app.config["BLOCKING_TIMEOUT"]
        outgoing = [waiting.outgoing for waiting in batch if waiting.outgoing is not None]
        error: Exception | None = None
        try:
            await self.writer.send(outgoing, self.expires, timeout, self.builder.event_topic)
        except TimeoutError:
            error = ServiceUnavailable(f"The broker did not answer within {timeout:g} s.")
        except Exception as failure:
            error = failure
        _settle(batch, [error] * len(batch))

    async def send_from_pool(self, batch: list[Waiting]) -> None:
        """Send a batch in one trip to the pool, and settle each task's future."""
        if not batch:
            return
        submissions = [waiting.submission for waiting in batch]
        timeout = current_app.config["BLOCKING_TIMEOUT"]
        # The thread stops sending a little before the request is answered 503.
        deadline = time.monotonic() + 0.8 * timeout
        try:
            errors = await run_blocking(
                "the broker",
                publish,
                self.celery,
                self.redis,
                self.keys,
                self.expires,
                submissions,
                deadline,
            )
        except Exception as failure:
            errors = [failure] * len(batch)
        _settle(batch, errors)


def _settle(batch: list[Waiting], errors: list[Exception | None]) -> None:
    """Answer each waiting caller: sent, or why not (503 for a broker out of reach)."""
    for waiting, error in zip(batch, errors, strict=True):
        if waiting.sent.done():  # its caller was cancelled meanwhile
            continue
        if error is None:
            waiting.sent.set_result(None)
        else:
            waiting.sent.set_exception(as_api_error("the broker", error))


def publish(
    celery: Celery,
    redis: Redis,
    keys: Keys,
    expires: int,
    batch: list[Submission],
    deadline: float,
) -> list[Exception | None]:
    """Record a batch of tasks, then publish each; return each one's error, or None if sent.

    Runs in the thread pool. Recorded first, all in one round trip, so that a look-up right
    after the answer finds them. One producer sends the whole batch. Once the broker proves
    unreachable, or the `deadline` (a `time.monotonic()` value) passes, the rest is not tried:
    their callers are answered 503, and a task sent after that answer would run unasked, or
    twice if retried. Every task not sent has its record dropped again.
    """
    records.remember(redis, keys, [(s.task_id, s.task.name) for s in batch], expires)
    errors: list[Exception | None] = []
    try:
        with recording.recorded_already(), celery.producer_or_acquire() as producer:
            for submission in batch:
                errors.append(_send(producer, submission, errors, deadline))
    except Exception as error:  # no producer: nothing more is sent
        errors += [error] * (len(batch) - len(errors))
    unsent = [s.task_id for s, error in zip(batch, errors, strict=True) if error]
    if unsent:
        with suppress(RedisError):  # the records expire anyway
            records.forget(redis, keys, unsent)
    return errors


def publish_workflow(
    celery: Celery,
    redis: Redis,
    keys: Keys,
    expires: int,
    prepared: PreparedWorkflow,
    deadline: float,
) -> None:
    """Record a workflow, then publish its messages one by one, as Celery would; if one
    cannot be published, mark every task of it REVOKED, so that none runs, and raise.

    Runs in the thread pool: the path where the broker and the results are not one Redis.
    """
    backend: Any = celery.backend
    captured = prepared.captured
    run_commands(backend, prepared.backend_commands)
    records.remember(redis, keys, captured.carried, expires)
    submissions = [
        Submission(
            send.task,
            send.args,
            send.kwargs,
            {name: value for name, value in send.options.items() if name != "task_id"},
            task_id=send.task_id,
        )
        for send in captured.sends
    ]
    errors = publish(celery, redis, keys, expires, submissions, deadline)
    failed = next((error for error in errors if error is not None), None)
    if failed is not None:
        revoke_every_task(backend, captured.record)
        raise failed


def _send(
    producer: Any, submission: Submission, earlier: list[Exception | None], deadline: float
) -> Exception | None:
    """Publish one task of a batch, unless an earlier one found the broker gone or time is up."""
    gone = next((error for error in earlier if error and unavailable(error)), None)
    if gone is not None:
        return gone
    if time.monotonic() > deadline:
        return TimeoutError("the batch ran out of time")
    try:
        submission.context.run(
            submission.task.apply_async,
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
    async def task_submitter() -> AsyncGenerator[None, None]:
        celery, keys = celery_of(app), current_keys()
        expires = int(app.config["CELERY_RESULT_EXPIRES"])
        writer = BatchWriter.for_app(celery, RedisAddress.of(app.config), keys)
        app.extensions[EXTENSION] = Submitter(celery, blocking_redis(), keys, expires, writer)
        yield
        await app.extensions.pop(EXTENSION).close()


def submitter() -> Submitter:
    """The serving app's submitter."""
    found: Submitter = current_app.extensions[EXTENSION]
    return found
