"""The JSON API: submit a task, look it up, revoke it.

Its request model comes from the exposed tasks (`quart_app.bridge.exposure`), so the blueprint
is made for them when the app is built: `create_blueprint(exposed_tasks())`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from pydantic import RootModel
from quart import Blueprint, request, url_for
from quart_schema import document_response, tag, validate_request, validate_response

from quart_app.bridge import access, queue, records, revocation
from quart_app.bridge.errors import APIError
from quart_app.bridge.exposure import ExposedTasks
from quart_app.bridge.pool import run_in_pool
from quart_app.bridge.schemas import ErrorBody, TaskAccepted, TaskSnapshot
from quart_app.bridge.states import TaskState

View = TypeVar("View", bound=Callable[..., Any])


def create_blueprint(exposed: ExposedTasks) -> Blueprint:
    """The API's blueprint, accepting runs of the `exposed` tasks and of no other."""
    blueprint = Blueprint("api", __name__, url_prefix="/api")
    access.protect_api(blueprint)
    blueprint.before_request(require_json)
    blueprint.add_url_rule("/tasks", view_func=submit_view(exposed), methods=["POST"])
    blueprint.add_url_rule("/tasks/<uuid:task_id>", view_func=get_task, methods=["GET"])
    blueprint.add_url_rule("/tasks/<uuid:task_id>", view_func=revoke_task, methods=["DELETE"])
    return blueprint


def document_errors(*statuses: int) -> Callable[[View], View]:
    """Add the error body to the OpenAPI document for each of `statuses`."""

    def decorate(view: View) -> View:
        for status in statuses:
            view = document_response(ErrorBody, status)(view)
        return view

    return decorate


async def require_json() -> None:
    """A body sent to the API must say it is JSON."""
    if request.method == "POST" and not request.is_json:
        raise APIError(
            400,
            "invalid_content_type",
            f"Send the body as JSON (Content-Type: application/json), not {request.mimetype!r}.",
        )


def submit_view(exposed: ExposedTasks) -> Callable[..., Any]:
    """The view that submits runs of the `exposed` tasks, validated by their request model."""

    @tag(["tasks"])
    @validate_request(exposed.request)
    @validate_response(TaskAccepted, 202)
    @document_errors(400, 413, 422, 503)
    async def submit_task(data: RootModel[Any]) -> tuple[TaskAccepted, int, dict[str, str]]:
        """Run one of the exposed tasks; follow it at `url` or through `websocket`."""
        name = data.root.name
        if name not in exposed.by_name:  # only when no task is exposed at all
            raise APIError(422, "unknown_task", f"There is no task {name!r} to run.")
        task = exposed.by_name[name].task
        task_id = await queue.submit(task, **data.root.kwargs.model_dump())
        url = url_for("api.get_task", task_id=task_id)
        accepted = TaskAccepted(
            id=task_id,
            name=name,
            state=TaskState.PENDING,
            url=url,
            websocket=f"/ws/tasks/{task_id}",
        )
        return accepted, 202, {"Location": url}

    view: Callable[..., Any] = submit_task
    return view


@tag(["tasks"])
@validate_response(TaskSnapshot, 200)
@document_errors(404, 503)
async def get_task(task_id: UUID) -> TaskSnapshot:
    """The task's state, and its progress, result, error or meta where it has one."""
    return await queue.look_up(str(task_id))


@tag(["tasks"])
@validate_response(TaskSnapshot, 202)
@document_errors(404, 409, 503)
async def revoke_task(task_id: UUID) -> tuple[TaskSnapshot, int]:
    """Revoke the task: if it has not started, it never will; 409 if it already ended."""
    revoked = await run_in_pool("the broker", revocation.revoke, records.client(), str(task_id))
    return revoked, 202
