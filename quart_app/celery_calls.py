"""The Celery calls of the web app. Each blocks, so each runs in the app's thread pool.

See `quart_app.blocking`: call these through `run_blocking`, never on the event loop.
"""

from __future__ import annotations

import math
import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from celery import Task, states
from celery.backends.redis import RedisBackend
from celery.exceptions import TaskRevokedError
from redis import Redis
from redis.exceptions import RedisError, WatchError

from quart_app import task_records
from quart_app.blocking import UNREACHABLE
from quart_app.errors import APIError
from quart_app.extensions import celery
from quart_app.schemas import TaskSnapshot
from quart_app.snapshots import NO_META, snapshot_from_meta

# Revoking these stops them before they run; a task already running runs to its end.
NOT_STARTED = frozenset({states.PENDING, states.RETRY})


#: A task to send: the task, its keyword arguments and the id it is sent under.
Submission = tuple[Task[Any, Any], dict[str, Any], UUID]


def accept(
    redis: Redis, expires: int, batch: list[Submission], deadline: float
) -> list[Exception | None]:
    """Record a batch of tasks, then publish each; return each one's error, or None if sent.

    Recorded first, all in one round trip, so that a look-up right after the answer finds
    them. One producer sends the whole batch. Once the broker proves unreachable, or the
    `deadline` (a `time.monotonic()` value) passes, the rest is not tried: their clients are
    answered 503, and a task sent after that answer would run unasked, or twice if retried.
    Every task not sent has its record dropped again.
    """
    task_records.remember(redis, [(task_id, task.name) for task, _, task_id in batch], expires)
    errors: list[Exception | None] = []
    try:
        with celery.producer_or_acquire() as producer:
            for task, kwargs, task_id in batch:
                errors.append(_send(producer, task, kwargs, task_id, errors, deadline))
    except Exception as error:  # no producer: nothing more is sent
        errors += [error] * (len(batch) - len(errors))
    unsent = [task_id for (_, _, task_id), error in zip(batch, errors, strict=True) if error]
    if unsent:
        with suppress(RedisError):  # the records expire anyway
            task_records.forget(redis, unsent)
    return errors


def _send(
    producer: Any,
    task: Task[Any, Any],
    kwargs: dict[str, Any],
    task_id: UUID,
    earlier: list[Exception | None],
    deadline: float,
) -> Exception | None:
    """Publish one task of a batch, unless an earlier one found the broker gone or time is up."""
    gone = next((error for error in earlier if isinstance(error, UNREACHABLE)), None)
    if gone is not None:
        return gone
    if time.monotonic() > deadline:
        return TimeoutError("the batch ran out of time")
    try:
        task.apply_async(kwargs=kwargs, task_id=str(task_id), producer=producer)
    except Exception as error:
        return error
    return None


def accepted_name(redis: Redis, task_id: UUID) -> str:
    """The name of an accepted task; 404 for an id the app never accepted (or forgot)."""
    name = task_records.name_of(redis, task_id)
    if name is None:
        raise APIError(404, "task_not_found", f"No task {task_id} was submitted here.")
    return name


def look_up(redis: Redis, task_id: UUID, debug: bool) -> TaskSnapshot:
    """The snapshot of an accepted task; 404 for any other id."""
    return snapshot(task_id, accepted_name(redis, task_id), debug)


def snapshot(task_id: UUID, name: str, debug: bool = False) -> TaskSnapshot:
    """The task's state as the result backend has it, with progress, result or error."""
    return snapshot_from_meta(task_id, name, stored_meta(task_id), debug)


def stored_meta(task_id: UUID) -> dict[str, Any]:
    """The meta the result backend stores for the task, as JSON (no exceptions rebuilt)."""
    backend = celery.backend
    stored = backend.get(backend.get_key_for_task(str(task_id)))  # type: ignore[attr-defined]
    if not stored:
        return NO_META
    meta: dict[str, Any] = backend.decode(stored)
    return meta


def revoke(redis: Redis, task_id: UUID) -> TaskSnapshot:
    """Revoke the task: one not started yet will never run; one running runs to its end.

    Workers keep the revocations they hear in memory only, so a task not started yet is also
    marked REVOKED in the result backend, where every worker checks before running a task
    (see `factories.celery`): a worker that restarts, or starts later, skips it too. 409 if
    the task already ended: revoking it changes nothing.
    """
    name = accepted_name(redis, task_id)
    if not _mark_revoked_unless_started(task_id):
        current = snapshot(task_id, name)
        if current.state in states.READY_STATES:
            raise APIError(
                409,
                "task_finished",
                f"Task {task_id} already ended in {current.state}; nothing was revoked.",
            )
    celery.control.revoke(str(task_id))
    return snapshot(task_id, name)


def _mark_revoked_unless_started(task_id: UUID) -> bool:
    """Store REVOKED for the task, only if it has not started; whether it did.

    Read and write are one transaction (WATCH): a task that starts, or ends, in between keeps
    its state, where Celery's own `mark_as_revoked` would overwrite it.
    """
    backend = celery.backend
    if not isinstance(backend, RedisBackend):
        raise RuntimeError("revoking needs the Redis result backend")
    key = backend.get_key_for_task(str(task_id))
    revoked = backend.encode(
        {
            "status": states.REVOKED,
            "result": backend.prepare_exception(TaskRevokedError("revoked")),
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": str(task_id),
        }
    )
    with backend.client.pipeline() as pipeline:
        while True:
            try:
                pipeline.watch(key)
                stored = pipeline.get(key)
                state = backend.decode(stored)["status"] if stored else states.PENDING
                if state not in NOT_STARTED:
                    return False
                pipeline.multi()
                # `expires` (seconds, from result_expires) is missing from the stubs.
                pipeline.set(key, revoked, ex=int(backend.expires))  # type: ignore[attr-defined]
                pipeline.publish(key, revoked)  # as Celery publishes every state it stores
                pipeline.execute()
                return True
            except WatchError:
                continue


def check_broker(timeout: float) -> None:
    """Connect to the broker; raise if it does not answer."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))


def check_result_backend() -> None:
    """Read from the result backend; raise if it does not answer."""
    celery.backend.get_task_meta("readiness-probe")


def count_workers(timeout: float) -> int:
    """How many workers answer a ping within `timeout` seconds."""
    return len(celery.control.ping(timeout=timeout) or [])
