"""A task's snapshot, from the meta Celery's Redis backend stores and publishes.

The same JSON comes from a look-up of `celery-task-meta-<id>` and from a message on the channel
of that name, so both the HTTP API and the websockets build their answers here. Any state a task
records is reported as it is, with the meta it recorded: nothing a task may store breaks a
snapshot.

The look-ups here block: run them in the app's thread pool (`quart_celery._client.blocking`).
"""

from __future__ import annotations

from typing import Any

from redis import Redis

from quart_celery._broker import records
from quart_celery._broker.keys import Keys
from quart_celery.errors import TaskNotFound
from quart_celery.schemas import DebugTaskFailure, Progress, TaskFailure, TaskSnapshot
from quart_celery.states import CELERY_BOOKKEEPING, TaskState

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


def name_of_published(redis: Redis, keys: Keys, task_id: str) -> str:
    """The name of a published task; `TaskNotFound` for an id never published (or forgotten)."""
    name = records.name_of(redis, keys, task_id)
    if name is None:
        raise TaskNotFound(task_id)
    return name


def read_snapshot(backend: Any, task_id: str, name: str, debug: bool = False) -> TaskSnapshot:
    """The task's state as the result `backend` (Celery's Redis backend) has it, with
    progress, result, error or meta."""
    return snapshot_from_meta(task_id, name, stored_meta(backend, task_id), debug)


def stored_meta(backend: Any, task_id: str) -> dict[str, Any]:
    """The meta the result `backend` stores for the task, as JSON (no exceptions rebuilt)."""
    return decoded(backend, backend.get(backend.get_key_for_task(task_id)))


def decoded(backend: Any, stored: bytes | None) -> dict[str, Any]:
    """A task's meta, from what the result `backend` stores (`NO_META` for nothing)."""
    if not stored:
        return NO_META
    meta: dict[str, Any] = backend.decode(stored)
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
