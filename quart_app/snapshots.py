"""A task's snapshot, from the meta Celery's Redis backend stores and publishes.

The same JSON comes from a look-up of `celery-task-meta-<id>` and from a message on the channel
of that name, so both the HTTP API and the websockets build their answers here.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from celery import states

from quart_app.schemas import DebugTaskFailure, Progress, TaskFailure, TaskSnapshot
from quart_app.states import TaskState

#: What Celery reports for a task it has no state for.
NO_META: dict[str, Any] = {"status": states.PENDING, "result": None}


def snapshot_from_meta(
    task_id: UUID | str, name: str, meta: dict[str, Any], debug: bool = False
) -> TaskSnapshot:
    """The snapshot for a task whose stored (or published) meta is `meta`."""
    state, result = meta["status"], meta.get("result")
    error: TaskFailure | None = None
    if state == states.FAILURE:
        failure = _failure(result)
        error = (
            DebugTaskFailure(**failure, traceback=meta.get("traceback"))
            if debug
            else (TaskFailure(**failure))
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


def _failure(result: Any) -> dict[str, str]:
    """The type and message of an exception as Celery's JSON serializer stores it."""
    if not isinstance(result, dict) or "exc_type" not in result:
        return {"type": "Exception", "message": str(result)}
    arguments = result.get("exc_message") or []
    if not isinstance(arguments, list | tuple):
        arguments = [arguments]
    message = str(arguments[0]) if len(arguments) == 1 else str(tuple(arguments))
    return {"type": str(result["exc_type"]), "message": message}
