"""The Celery calls of the web app. Each blocks, so each runs in the app's thread pool.

See `quart_app.blocking`: call these through `run_blocking`, never on the event loop.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from celery import Task, states
from redis import Redis

from quart_app import task_records
from quart_app.errors import APIError
from quart_app.extensions import celery
from quart_app.schemas import DebugTaskFailure, Progress, TaskFailure, TaskSnapshot
from quart_app.states import TaskState

# Revoking these stops them before they run; a task already running runs to its end.
NOT_STARTED = frozenset({states.PENDING, states.RETRY})


#: A task to send: the task, its keyword arguments and the id it is sent under.
Submission = tuple[Task[Any, Any], dict[str, Any], UUID]


def accept(redis: Redis, expires: int, batch: list[Submission]) -> list[Exception | None]:
    """Record a batch of tasks, then publish each; return each one's error, or None if sent.

    Recorded first, all in one round trip, so that a look-up right after the answer finds
    them; a task that cannot be published has its record dropped again. One producer sends
    the whole batch.
    """
    task_records.remember(redis, [(task_id, task.name) for task, _, task_id in batch], expires)
    errors: list[Exception | None] = []
    with celery.producer_or_acquire() as producer:
        for task, kwargs, task_id in batch:
            try:
                task.apply_async(kwargs=kwargs, task_id=str(task_id), producer=producer)
            except Exception as error:
                task_records.forget(redis, task_id)
                errors.append(error)
            else:
                errors.append(None)
    return errors


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
    meta = celery.backend.get_task_meta(str(task_id))
    state, result = meta["status"], meta["result"]
    error: TaskFailure | None = None
    if state == states.FAILURE:
        failure = {"type": type(result).__name__, "message": str(result)}
        error = (
            DebugTaskFailure(**failure, traceback=meta.get("traceback"))
            if debug
            else TaskFailure(**failure)
        )
    progress = None
    if state == TaskState.PROGRESS and isinstance(result, dict):
        progress = Progress(current=result.get("current", 0), total=result.get("total", 0))
    return TaskSnapshot(
        id=str(task_id),
        name=name,
        state=TaskState(state),
        progress=progress,
        result=result if state == states.SUCCESS else None,
        error=error,
    )


def revoke(redis: Redis, task_id: UUID) -> TaskSnapshot:
    """Revoke the task: one not started yet will never run; one running runs to its end.

    Workers keep the revocations they hear in memory only, so a task not started yet is also
    marked REVOKED in the result backend, where every worker checks before running a task
    (see `factories.celery`): a worker that restarts, or starts later, skips it too.
    """
    name = accepted_name(redis, task_id)
    current = snapshot(task_id, name)
    if current.state in states.READY_STATES:
        raise APIError(
            409,
            "task_finished",
            f"Task {task_id} already ended in {current.state}; nothing was revoked.",
        )
    celery.control.revoke(str(task_id))
    if current.state in NOT_STARTED:
        celery.backend.mark_as_revoked(str(task_id), reason="revoked")
    return snapshot(task_id, name)


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
