"""The states a task goes through, as clients see them."""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """A task's state: Celery's own states plus PROGRESS, which our tasks record."""

    #: Waiting in the queue, or unknown: Celery cannot tell the two apart by itself.
    PENDING = "PENDING"
    #: A worker has taken it and begun (recorded because `task_track_started` is on).
    STARTED = "STARTED"
    #: Running, with `{"current": i, "total": n}` recorded after each step.
    PROGRESS = "PROGRESS"
    #: Failed this time and queued to be tried again.
    RETRY = "RETRY"
    #: Finished; the result is stored.
    SUCCESS = "SUCCESS"
    #: Raised an exception; its type and message are stored.
    FAILURE = "FAILURE"
    #: Cancelled before or while it ran.
    REVOKED = "REVOKED"
