"""The JSON API: submit a task, look it up, revoke it, stream its output (server-sent events);
submit, look up and cancel a workflow.

Its request model comes from the exposed tasks (`quart_celery._client.exposure`), so the
blueprint is made for them when the app is built: `create_blueprint(exposed_tasks())`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

import orjson
from pydantic import RootModel, ValidationError
from quart import Blueprint, Response, current_app, request
from quart_schema import (
    RequestSchemaValidationError,
    document_headers,
    document_request,
    document_response,
    tag,
    validate_response,
)
from werkzeug.exceptions import HTTPException, RequestTimeout

from quart_celery._client import queue, revocation, workflows
from quart_celery._client.blocking import run_blocking
from quart_celery._client.connections import blocking_redis
from quart_celery._client.current import current_celery, current_keys
from quart_celery._client.exposure import ExposedTasks
from quart_celery._observability import metrics
from quart_celery._protection import access, idempotency
from quart_celery._protection.rate_limits import limits_submissions
from quart_celery._web import event_streams
from quart_celery._web.workflow_requests import (
    Limits,
    WorkflowRequest,
    read_workflow,
)
from quart_celery.errors import APIError
from quart_celery.schemas import (
    ErrorBody,
    TaskAccepted,
    TaskSnapshot,
    WorkflowAccepted,
    WorkflowSnapshot,
)
from quart_celery.states import TaskState

View = TypeVar("View", bound=Callable[..., Any])
JSON = "application/json"
PREFIX = "/api"
#: A task's route, and its URL (a submission names it without `url_for`, which took longer
#: than the rest of the answer).
TASK = "/tasks/{}"
WORKFLOW = "/workflows/{}"


def create_blueprint(exposed: ExposedTasks) -> Blueprint:
    """The API's blueprint, accepting runs of the `exposed` tasks and of no other."""
    blueprint = Blueprint("api", __name__, url_prefix=PREFIX)
    access.protect_api(blueprint)
    blueprint.add_url_rule("/tasks", view_func=submit_view(exposed), methods=["POST"])
    blueprint.add_url_rule(TASK.format("<uuid:task_id>"), view_func=get_task, methods=["GET"])
    blueprint.add_url_rule(TASK.format("<uuid:task_id>"), view_func=revoke_task, methods=["DELETE"])
    stream = TASK.format("<uuid:task_id>") + "/stream"
    blueprint.add_url_rule(stream, view_func=event_streams.stream_task, methods=["GET"])
    blueprint.add_url_rule("/workflows", view_func=workflow_view(exposed), methods=["POST"])
    workflow = WORKFLOW.format("<uuid:workflow_id>")
    blueprint.add_url_rule(workflow, view_func=get_workflow, methods=["GET"])
    blueprint.add_url_rule(workflow, view_func=cancel_workflow, methods=["DELETE"])
    return blueprint


def document_errors(*statuses: int) -> Callable[[View], View]:
    """Add the error body to the OpenAPI document for each of `statuses`."""

    def decorate(view: View) -> View:
        for status in statuses:
            view = document_response(ErrorBody, status)(view)
        return view

    return decorate


def require_json() -> None:
    """A body sent to the API must say it is JSON."""
    if not request.is_json:
        raise APIError(
            400,
            "invalid_content_type",
            f"Send the body as JSON (Content-Type: application/json), not {request.mimetype!r}.",
        )


def submit_view(exposed: ExposedTasks) -> Callable[..., Any]:
    """The view that submits runs of the `exposed` tasks, validated by their request model.

    The request and the answer are documented with quart-schema, and made here from the same
    models, by pydantic straight from and to JSON: its validation from a parsed dict, and
    its conversion of the answer, cost a fifth of a submission (py-spy, `bench/submit.py`).
    """

    @tag(["tasks"])
    @document_request(exposed.request)
    @document_headers(idempotency.IdempotencyHeaders)
    @document_response(TaskAccepted, 202)
    @document_errors(400, 409, 413, 422, 429, 503)
    @limits_submissions
    async def submit_task() -> Response:
        """Run one of the exposed tasks; follow it at `url` or through `websocket`.

        With an `Idempotency-Key`, a repeat of the same request sends nothing and answers as
        the first did, with `Idempotent-Replayed: true`; the same key with another request is
        422, and a repeat while the first is being sent 409.
        """
        try:
            key = idempotency.requested_key()
            data = await validated(exposed.request)
        except RequestSchemaValidationError as error:
            metrics.count_submission(_task_named(error, exposed), "invalid")
            raise
        except (HTTPException, APIError):
            metrics.count_submission(metrics.UNKNOWN_TASK, "invalid")
            raise
        name = data.root.name
        if name not in exposed.by_name:  # only when no task is exposed at all
            metrics.count_submission(metrics.UNKNOWN_TASK, "invalid")
            raise APIError(422, "unknown_task", f"There is no task {name!r} to run.")
        task = exposed.by_name[name].task
        kwargs = data.root.kwargs.model_dump()
        headers: dict[str, str] = {}
        if key is None:
            task_id = await queue.submit_checked(task, (), kwargs, {})
        else:

            async def send(task_id: str) -> None:
                await queue.submit_checked(task, (), kwargs, {"task_id": task_id})

            try:
                outcome = await idempotency.submit_once(key, name, kwargs, send)
            except APIError as error:
                if error.code == "idempotency_key_reused":
                    metrics.count_submission(name, "invalid")
                raise
            task_id = outcome.task_id
            if outcome.replayed:
                headers[idempotency.REPLAYED] = "true"
        url = request.root_path + PREFIX + TASK.format(task_id)
        accepted = {  # a TaskAccepted, as documented: its fields, in its order
            "id": task_id,
            "name": name,
            "state": TaskState.PENDING.value,
            "url": url,
            "websocket": f"/ws/tasks/{task_id}",
        }
        return Response(
            orjson.dumps(accepted),
            status=202,
            headers={"Location": url, **headers},
            mimetype=JSON,
        )

    view: Callable[..., Any] = submit_task
    return view


def _task_named(error: RequestSchemaValidationError, exposed: ExposedTasks) -> str:
    """The exposed task a refused request names (its arguments did not fit), else "unknown":
    a metric's label takes no name a client makes up."""
    cause = error.validation_error
    problems = cause.errors() if isinstance(cause, ValidationError) else []
    named = {str(problem["loc"][0]) for problem in problems if problem["loc"]}
    if len(named) == 1 and named <= exposed.by_name.keys():
        return named.pop()
    return metrics.UNKNOWN_TASK


async def validated(model: type[RootModel[Any]]) -> RootModel[Any]:
    """The request's body, parsed and validated by `model`: 400 if it is not JSON, 422 (as
    quart-schema's validation answers) if it does not fit."""
    body = await json_request_body()
    if (b"NaN" in body or b"Infinity" in body) and not _strict_json(body):
        # pydantic's parser takes them as numbers, where JSON has no such thing.
        message = "The request body is not valid JSON: NaN and Infinity are not JSON numbers."
        raise APIError(400, "invalid_json", message)
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        not_json = [problem for problem in error.errors() if problem["type"] == "json_invalid"]
        if not_json:
            reason = not_json[0].get("ctx", {}).get("error", not_json[0]["msg"])
            message = f"The request body is not valid JSON: {reason}."
            raise APIError(400, "invalid_json", message) from None
        raise RequestSchemaValidationError(error) from None


def _strict_json(body: bytes) -> bool:
    """Whether `body` parses as standard JSON, which has no NaN or Infinity (orjson's parser
    refuses them; pydantic's takes them)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


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
    revoked = await run_blocking(
        "the broker",
        revocation.revoke,
        current_celery(),
        blocking_redis(),
        current_keys(),
        str(task_id),
    )
    return revoked, 202


def workflow_view(exposed: ExposedTasks) -> Callable[..., Any]:
    """The view that submits workflows of the `exposed` tasks."""

    @tag(["workflows"])
    @document_request(WorkflowRequest)
    @document_headers(idempotency.IdempotencyHeaders)
    @document_response(WorkflowAccepted, 202)
    @document_errors(400, 409, 413, 422, 429, 503)
    @limits_submissions
    async def submit_workflow() -> Response:
        """Run a chain, group or chord of the exposed tasks, all of it or none; follow it at
        `url` or through `websocket`.

        `Idempotency-Key` works as for `POST /api/tasks`. A fault in the workflow is 422
        `invalid_workflow`, with where it is in the message (`group[2].kwargs.x: ...`), and
        nothing is sent.
        """
        try:
            key = idempotency.requested_key()
            body = await json_body()
            config = current_app.config
            limits = Limits(config["WORKFLOW_MAX_TASKS"], config["WORKFLOW_MAX_DEPTH"])
            workflow = read_workflow(body, exposed, limits)
        except (HTTPException, APIError):
            metrics.count_submission(metrics.WORKFLOW, "invalid")
            raise
        headers: dict[str, str] = {}
        if key is None:
            record = await workflows.submit_workflow(workflow)
            workflow_id, tasks = record.workflow_id, list(record.members)
        else:

            async def send(workflow_id: str) -> None:
                await workflows.submit_workflow(workflow, workflow_id)

            outcome = await idempotency.submit_once(key, metrics.WORKFLOW, {"workflow": body}, send)
            workflow_id = outcome.task_id
            snapshot = await workflows.look_up_workflow(workflow_id)
            tasks = [(task.id, task.name) for task in snapshot.tasks]
            if outcome.replayed:
                headers[idempotency.REPLAYED] = "true"
        url = request.root_path + PREFIX + WORKFLOW.format(workflow_id)
        accepted = {  # a WorkflowAccepted, as documented
            "id": workflow_id,
            "url": url,
            "websocket": f"/ws/workflows/{workflow_id}",
            "tasks": [{"id": task_id, "name": name} for task_id, name in tasks],
        }
        return Response(
            orjson.dumps(accepted),
            status=202,
            headers={"Location": url, **headers},
            mimetype=JSON,
        )

    view: Callable[..., Any] = submit_workflow
    return view


async def json_request_body() -> bytes:
    """The request's body, which must say it is JSON (400), within the body timeout (408)."""
    require_json()
    try:
        # Quart's `get_data` waits with `asyncio.wait_for`, a task of its own for each request;
        # its `Body` is awaitable, and answers 413 beyond MAX_CONTENT_LENGTH itself.
        async with asyncio.timeout(request.body_timeout):
            body: bytes = await request.body
    except TimeoutError:
        raise RequestTimeout() from None
    return body


async def json_body() -> Any:
    """The request's body, parsed as JSON: 400 if it is not."""
    body = await json_request_body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise APIError(
            400, "invalid_json", f"The request body is not valid JSON: {error}."
        ) from None


@tag(["workflows"])
@validate_response(WorkflowSnapshot, 200)
@document_errors(404, 503)
async def get_workflow(workflow_id: UUID) -> WorkflowSnapshot:
    """The workflow's state, how many of its tasks have ended, its result once it has ended,
    and each task's state."""
    return await workflows.look_up_workflow(str(workflow_id))


@tag(["workflows"])
@validate_response(WorkflowSnapshot, 202)
@document_errors(404, 409, 503)
async def cancel_workflow(workflow_id: UUID) -> tuple[WorkflowSnapshot, int]:
    """Revoke every task of the workflow not yet ended, stopping the running ones; it ends
    REVOKED. 409 if it already ended."""
    return await workflows.cancel_workflow(str(workflow_id)), 202
