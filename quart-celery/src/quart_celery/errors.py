"""One error type, `APIError`, and the errors a caller of the bridge handles, each one of it.

Raised in a view (or anywhere under it), an `APIError` is answered with its status and the
body `{"error": {"code": "<stable code>", "message": "<a sentence for a person>"}}`
(`quart_celery._web.error_handlers`, the one place errors become JSON): codes are for programs
and never change; messages may.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quart_celery.schemas import TaskSnapshot


class APIError(Exception):
    """An error answered with `status` and a JSON body carrying `code` and `message`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class TaskNotFound(APIError):
    """404: no task was published under this id (or its record expired with its result)."""

    def __init__(self, task_id: object) -> None:
        super().__init__(404, "task_not_found", f"No task {task_id} was submitted here.")


class WorkflowNotFound(APIError):
    """404: no workflow was submitted under this id (or its record expired with its results)."""

    def __init__(self, workflow_id: object) -> None:
        super().__init__(
            404, "workflow_not_found", f"No workflow {workflow_id} was submitted here."
        )


class WorkflowFailed(APIError):
    """502: a task of the workflow failed, and the workflow with it."""

    def __init__(self, workflow_id: str, failed: int) -> None:
        super().__init__(
            502, "workflow_failed", f"Workflow {workflow_id} failed: {failed} of its tasks failed."
        )
        self.workflow_id = workflow_id


class WorkflowRevoked(APIError):
    """409: the workflow was cancelled, and has no result."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(409, "workflow_revoked", f"Workflow {workflow_id} was revoked.")
        self.workflow_id = workflow_id


class ServiceUnavailable(APIError):
    """503: the broker, the result backend or Redis cannot be reached, or not in time."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "service_unavailable", message)


class InvalidArguments(APIError, TypeError):
    """422: the arguments do not fit the task's declared ones (its signature, and its rules if
    it is exposed); nothing was sent. A `TypeError` too, as a call with bad arguments is."""

    def __init__(self, task: str, problem: str) -> None:
        super().__init__(422, "invalid_arguments", f"Task {task!r}: {problem}")


class TaskFailed(APIError):
    """502: the task raised an exception; its snapshot says which (`snapshot.error`).

    Uncaught in a view that waited for the result, it answers 502 `task_failed`: the worker the
    view relied on failed, the server itself did not.
    """

    def __init__(self, snapshot: TaskSnapshot) -> None:
        error = snapshot.error
        cause = f"{error.type}: {error.message}" if error else "no error was stored"
        super().__init__(
            502, "task_failed", f"Task {snapshot.id} ({snapshot.name}) failed: {cause}."
        )
        self.snapshot = snapshot


class TaskRevoked(APIError):
    """409: the task was revoked, and has no result."""

    def __init__(self, snapshot: TaskSnapshot) -> None:
        super().__init__(409, "task_revoked", f"Task {snapshot.id} ({snapshot.name}) was revoked.")
        self.snapshot = snapshot


class ResultTimeout(APIError, TimeoutError):
    """504: the task has not ended within the time given (it goes on running). A
    `TimeoutError` too, as `asyncio.timeout` raises."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(
            504, "result_timeout", f"Task {task_id} has not ended within {timeout:g} s."
        )
        self.task_id = task_id


class FellBehind(Exception):
    """More updates waited for a follower than `WS_QUEUE_SIZE`: some had to be dropped."""


class TooManyChunks(Exception):
    """A task sent more chunks than `STREAM_MAX_CHUNKS`: raised where it sends the one too
    many, so that it fails saying so rather than its stream being cut short unseen."""


class ChunksNotWritten(Exception):
    """A task's chunks could not be written to Redis by the time it ended (Redis was
    unreachable): it fails, rather than end as though its clients had everything."""
