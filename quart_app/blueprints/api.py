"""The JSON API: submit a task, look it up, revoke it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from celery import Task
from quart import Blueprint, current_app, request, url_for
from quart_schema import document_response, tag, validate_request, validate_response

from quart_app import access, celery_calls, task_records
from quart_app.blocking import run_blocking
from quart_app.errors import APIError
from quart_app.schemas import ErrorBody, TaskAccepted, TaskRequest, TaskSnapshot
from quart_app.states import TaskState
from quart_app.submissions import submit
from quart_app.tasks import async_task, failing_task, progress_task, simple_task

blueprint = Blueprint("api", __name__, url_prefix="/api")
access.protect_api(blueprint)
View = TypeVar("View", bound=Callable[..., Any])

#: The tasks clients may start over HTTP: an allow-list, never "any registered task". Keyed by
#: name as written (reading `task.name` here would build the tasks at import time).
EXPOSED: dict[str, Task[Any, Any]] = {
    "simple_task": simple_task,
    "progress_task": progress_task,
    "async_task": async_task,
    "failing_task": failing_task,
}


def document_errors(*statuses: int) -> Callable[[View], View]:
    """Add the error body to the OpenAPI document for each of `statuses`."""

    def decorate(view: View) -> View:
        for status in statuses:
            view = document_response(ErrorBody, status)(view)
        return view

    return decorate


@blueprint.before_request
async def require_json() -> None:
    """A body sent to the API must say it is JSON."""
    if request.method == "POST" and not request.is_json:
        raise APIError(
            400,
            "invalid_content_type",
            f"Send the body as JSON (Content-Type: application/json), not {request.mimetype!r}.",
        )


@blueprint.post("/tasks")
@tag(["tasks"])
@validate_request(TaskRequest)
@validate_response(TaskAccepted, 202)
@document_errors(400, 413, 422, 503)
async def submit_task(data: TaskRequest) -> tuple[TaskAccepted, int, dict[str, str]]:
    """Run one of the exposed tasks; follow it at `url` or through `websocket`."""
    name = data.root.name
    task_id = await submit(EXPOSED[name], data.root.kwargs.model_dump())
    url = url_for("api.get_task", task_id=task_id)
    accepted = TaskAccepted(
        id=str(task_id),
        name=name,
        state=TaskState.PENDING,
        url=url,
        websocket=f"/ws/tasks/{task_id}",
    )
    return accepted, 202, {"Location": url}


@blueprint.get("/tasks/<uuid:task_id>")
@tag(["tasks"])
@validate_response(TaskSnapshot, 200)
@document_errors(404, 503)
async def get_task(task_id: UUID) -> TaskSnapshot:
    """The task's state, and its progress, result or error where it has one."""
    return await run_blocking(
        "the result backend",
        celery_calls.look_up,
        task_records.client(),
        task_id,
        current_app.debug,
    )


@blueprint.delete("/tasks/<uuid:task_id>")
@tag(["tasks"])
@validate_response(TaskSnapshot, 202)
@document_errors(404, 409, 503)
async def revoke_task(task_id: UUID) -> tuple[TaskSnapshot, int]:
    """Revoke the task: if it has not started, it never will; 409 if it already ended."""
    revoked = await run_blocking("the broker", celery_calls.revoke, task_records.client(), task_id)
    return revoked, 202
