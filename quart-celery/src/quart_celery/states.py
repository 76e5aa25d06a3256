"""The states a task goes through, as clients see them.

A task may record any state of its own as well (`self.update_state(state="UPLOADING", ...)`, or
Celery's own IGNORED and REJECTED); those reach clients as they are, with the meta recorded.
"""

from __future__ import annotations

from enum import StrEnum

from celery import states


class TaskState(StrEnum):
    """A task's state: Celery's own states plus PROGRESS, which long tasks record."""

    #: Waiting in the queue: Celery cannot tell this from "unknown" by itself (the app can).
    PENDING = "PENDING"
    #: A worker has taken it and begun (recorded because `task_track_started` is on).
    STARTED = "STARTED"
    #: Running, with `{"current": i, "total": n}` (and whatever else the task adds) recorded.
    PROGRESS = "PROGRESS"
    #: Failed this time and queued to be tried again.
    RETRY = "RETRY"
    #: Finished; the result is stored.
    SUCCESS = "SUCCESS"
    #: Raised an exception; its type and message are stored.
    FAILURE = "FAILURE"
    #: Cancelled before or while it ran.
    REVOKED = "REVOKED"


#: The states after which nothing more happens to a task.
FINAL_STATES = frozenset(states.READY_STATES)

#: States whose stored value is Celery's own (a result, an exception, the worker's pid), not
#: meta the task recorded: their snapshots carry it as `result` or `error`, or not at all.
CELERY_BOOKKEEPING = frozenset(
    {
        TaskState.PENDING,
        TaskState.STARTED,
        TaskState.RETRY,
        TaskState.SUCCESS,
        TaskState.FAILURE,
        TaskState.REVOKED,
    }
)

#: How the API documents `state`.
STATE_DESCRIPTION = (
    "One of " + ", ".join(TaskState) + ", or any other state the task records itself "
    "(with `update_state`), such as Celery's IGNORED and REJECTED or a state of its own."
)
