"""A task's snapshot, from the meta Celery's Redis backend stores and publishes.

The same JSON comes from a look-up of `celery-task-meta-<id>` and from a message on the channel
of that name, so both the HTTP API and the websockets build their answers here. Any state a task
records is reported as it is, with the meta it recorded: nothing a task may store breaks a
snapshot.

The look-ups here block: run them in the app's thread pool (`quart_app.bridge.pool`).
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from quart_app.bridge import records
from quart_app.bridge.errors import TaskNotFound
from quart_app.bridge.schemas import DebugTaskFailure, Progress, TaskFailure, TaskSnapshot
from quart_app.bridge.states import CELERY_BOOKKEEPING, TaskState
from quart_app.extensions import celery

#: What Celery reports for a task it has no state for.
NO_META: dict[str, Any] = {"status": TaskState.PENDING, "result": None}


def snapshot_from_meta(
    task_id: str, name: str, meta: dict[str, Any], debug: bool = False
) -> TaskSnapshot:
    """The snapshot for a task whose stored (or published) meta is `meta`."""
    state, recorded = str(meta.get("status", TaskState.PENDING)), meta.get("result")
    error: TaskFailure | None = None
    if state == TaskState.FAILURE:
        failure = _failure(recorded)
        error = (
            DebugTaskFailure(**failure, traceback=meta.get("traceback"))
            if debug
            else TaskFailure(**failure)
        )
    known = state in TaskState.__members__
    return TaskSnapshot(
        id=task_id,
        name=name,
        state=TaskState(state) if known else state,
        progress=_progress(recorded) if state == TaskState.PROGRESS else None,
        result=recorded if state == TaskState.SUCCESS else None,
        error=error,
        meta=None if state in CELERY_BOOKKEEPING else recorded,
    )


def look_up(redis: Redis, task_id: str, debug: bool) -> TaskSnapshot:
    """The snapshot of a published task; `TaskNotFound` for any other id."""
    return read_snapshot(task_id, name_of_published(redis, task_id), debug)


def name_of_published(redis: Redis, task_id: str) -> str:
    """The name of a published task; `TaskNotFound` for an id never published (or forgotten)."""
    name = records.name_of(redis, task_id)
    if name is None:
        raise TaskNotFound(task_id)
    return name


def read_snapshot(task_id: str, name: str, debug: bool = False) -> TaskSnapshot:
    """The task's state as the result backend has it, with progress, result, error or meta."""
    return snapshot_from_meta(task_id, name, stored_meta(task_id), debug)


def stored_meta(task_id: str) -> dict[str, Any]:
    """The meta the result backend stores for the task, as JSON (no exceptions rebuilt)."""
    backend = celery.backend
    return decoded(backend.get(backend.get_key_for_task(task_id)))  # type: ignore[attr-defined]


def decoded(stored: bytes | None) -> dict[str, Any]:
    """A task's meta, from what the result backend stores (`NO_META` for nothing)."""
    if not stored:
        return NO_META
    meta: dict[str, Any] = celery.backend.decode(stored)
    return meta


def _progress(recorded: Any) -> Progress | None:
    """`{"current", "total"}` of a PROGRESS meta, if it has both as whole numbers."""
    if not isinstance(recorded, dict):
        return None
    current, total = recorded.get("current"), recorded.get("total")
    if type(current) is not int or type(total) is not int:  # not True for 1, nor 1.5
        return None
    return Progress(current=current, total=total)


def _failure(result: Any) -> dict[str, str]:
    """The type and message of an exception as Celery's JSON serializer stores it."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return {"type": "Exception", "message": str(result)}
    arguments = result.get("exc_message") or []
    if not isinstance(arguments, list | tuple):
        arguments = [arguments]
    message = str(arguments[0]) if len(arguments) == 1 else str(tuple(arguments))
    return {"type": str(result["exc_type"]), "message": message}
