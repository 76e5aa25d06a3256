"""The JSON the API gives, declared once for validation and for the OpenAPI document.

What it takes, the runs of the exposed tasks, is derived from the tasks themselves
(`quart_celery._client.exposure`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from quart_celery.states import STATE_DESCRIPTION, TaskState


class Strict(BaseModel):
    """Types as declared (no "5" for 5), no field that is not declared, and no NaN or infinity
    for a number (JSON has neither)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TaskAccepted(BaseModel):
    """A task accepted to run: where to follow it."""

    id: str
    name: str
    state: TaskState
    url: str
    websocket: str


class Progress(BaseModel):
    """How far a task is: `current` steps done of `total`."""

    current: int
    total: int


class TaskFailure(BaseModel):
    """Why a task failed: the type and message of the exception it raised."""

    type: str
    message: str


class DebugTaskFailure(TaskFailure):
    """A failure with its traceback: only in debug mode."""

    traceback: str | None


class TaskSnapshot(BaseModel):
    """A task as it stands: its state, and its progress, result, error or meta where it has one.

    Frozen: a snapshot made of a published state is given to every follower of the task in
    the process (`quart_celery._client.following`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    state: Annotated[TaskState | str, Field(description=STATE_DESCRIPTION)]
    progress: Annotated[
        Progress | None,
        Field(description="While the task records PROGRESS with a `current` and a `total`."),
    ]
    result: Annotated[Any, Field(description="The task's result, on SUCCESS.")]
    error: Annotated[
        SerializeAsAny[TaskFailure] | None, Field(description="Why it failed, on FAILURE.")
    ]
    meta: Annotated[
        Any,
        Field(
            description="The JSON the task recorded with its current state (`update_state`'s "
            "`meta`): null for Celery's own states and where it recorded none."
        ),
    ]


class WorkflowMember(BaseModel):
    """A task of a workflow."""

    id: str
    name: str


class WorkflowAccepted(BaseModel):
    """A workflow accepted to run: where to follow it, and its tasks in the order they run."""

    id: str
    url: str
    websocket: str
    tasks: list[WorkflowMember]


class WorkflowTask(WorkflowMember):
    """A task of a workflow, and its state."""

    state: Annotated[TaskState | str, Field(description=STATE_DESCRIPTION)]


class WorkflowSnapshot(BaseModel):
    """A workflow as it stands: its own state, how many of its tasks have ended, its result
    once it has ended, and each task's state."""

    id: str
    state: Annotated[
        TaskState,
        Field(
            description="PENDING until a task of it changes, then STARTED; once it has "
            "ended, REVOKED if a task of it was revoked, FAILURE if one failed, else SUCCESS."
        ),
    ]
    total: Annotated[int, Field(description="How many tasks the workflow has.")]
    done: Annotated[int, Field(description="How many of them have ended, in any final state.")]
    failed: Annotated[int, Field(description="How many of them have ended in FAILURE.")]
    result: Annotated[
        Any,
        Field(
            description="Once it has ended: a chain's last result, a group's list of results "
            "in order, a chord body's result (null for a task that did not succeed)."
        ),
    ]
    tasks: list[WorkflowTask]


class WorkflowChange(BaseModel):
    """A task of a workflow changed: the workflow's state and counts after it, and the task.
    The change that ends the workflow carries its `result`."""

    id: str
    state: TaskState
    total: int
    done: int
    failed: int
    task: WorkflowTask
    result: Annotated[Any, Field(description="The workflow's result, once it has ended.")] = None


class ErrorDetail(BaseModel):
    """A stable code for programs, and a sentence for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Healthy(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class Ready(BaseModel):
    """Everything the app needs answers; `checks` says how each part answered."""

    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(ErrorBody):
    """Something the app needs does not answer; `checks` says which."""

    checks: dict[str, str]
